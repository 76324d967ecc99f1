"""Preference pairs from important states (view preference_pairs, eef_tasks/preferences.py, `eef
export-dpo`) on METHOD.md's worked example, rows and records checked by hand.

Failed expert e of task t, T = 12, M = 5: checkpoints s2 … s10. Iteration 1: the rollout from s0
fails; simulations succeed from s2 and s4, fail from s6, succeed from s8, fail from s10. eef's
examples: s0 -> the simulation from s2, s6 -> the simulation from s8 (s10: none).
- pair for s0: chosen it1-s2, rejected the failed rollout from s0, it1-s0;
- pair for s6: chosen it1-s8, rejected the failed simulation from s6, it1-s6;
- s10 has no example, so no pair.
Iteration 2: the rollout from s0 succeeds (it becomes s0's example), s6 fails again: s0's rejected is
still it1-s0 (the only failure from s0), s6's the latest failure from s6, it2-s6.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from store_builders import RUN, StoreBuilder, select_checked

from eef_tasks import preferences, store
from eef_tasks.chat import system_prompt
from eef_tasks.store import StoreError


def worked_example(b: StoreBuilder, iterations: int = 1) -> None:
    b.task("t")
    b.expert("e", "t", n_steps=12, success=False)
    b.rollout("it1-s0", "t", iteration=1, success=False, n_steps=5)
    for step, ok in {2: True, 4: True, 6: False, 8: True, 10: False}.items():
        b.simulation(f"it1-s{step}", "e", step, iteration=1, success=ok, extra=3)
    if iterations >= 2:
        b.rollout("it2-s0", "t", iteration=2, success=True, n_steps=9)
        for step, ok in {2: True, 4: True, 6: False, 8: False, 10: False}.items():
            b.simulation(f"it2-s{step}", "e", step, iteration=2, success=ok, extra=3)


def pairs(con, iteration: int) -> list[tuple]:
    return con.execute(
        """SELECT state_kind, state_traj_id, state_step, chosen_traj_id, rejected_traj_id FROM preference_pairs
           WHERE run_id = $r AND iteration = $i AND method = 'eef' ORDER BY ALL""", {"r": RUN, "i": iteration},
    ).fetchall()


def test_worked_example_pairs(con, build):
    worked_example(build, iterations=2)
    select_checked(con, RUN, 1, "eef", n_sims=5)
    select_checked(con, RUN, 2, "eef")
    assert pairs(con, 1) == [("initial", None, 0, "it1-s2", "it1-s0"), ("need_recover", "e", 6, "it1-s8", "it1-s6")]
    assert pairs(con, 2) == [("initial", None, 0, "it2-s0", "it1-s0"), ("need_recover", "e", 6, "it1-s8", "it2-s6")]


def test_records_are_the_training_chat_split_at_the_state(con, build):
    worked_example(build)
    select_checked(con, RUN, 1, "eef", n_sims=5)
    s0, s6 = list(preferences.pair_records(con, RUN, 1))
    system = {"role": "system", "content": system_prompt("toy")}
    instruction = {"role": "user", "content": "solve t"}
    assert s0["prompt"] == [system, instruction]
    assert [m["content"] for m in s0["chosen"] if m["role"] == "assistant"] == [
        "Action: e:a0", "Action: e:a1", "Action: it1-s2:p0", "Action: it1-s2:p1", "Action: it1-s2:p2"]
    assert [m["content"] for m in s0["rejected"] if m["role"] == "assistant"] == [
        f"Action: it1-s0:p{k}" for k in range(5)]
    assert s0["chosen"][1] == {"role": "user", "content": "Observation: after e:a0"}
    assert s0["chosen"][-1]["role"] == "assistant" and s0["rejected"][-1]["role"] == "assistant"
    # s6: the prompt replays a0 … a5 (turns of the chosen simulation) and ends with s6's observation
    assert s6["prompt"][:2] == [system, instruction] and len(s6["prompt"]) == 2 + 2 * 6
    assert s6["prompt"][-2:] == [{"role": "assistant", "content": "Action: e:a5"},
                                 {"role": "user", "content": "Observation: after e:a5"}]
    assert [m["content"] for m in s6["chosen"] if m["role"] == "assistant"] == [
        "Action: e:a6", "Action: e:a7", "Action: it1-s8:p0", "Action: it1-s8:p1", "Action: it1-s8:p2"]
    assert [m["content"] for m in s6["rejected"] if m["role"] == "assistant"] == [
        f"Action: it1-s6:p{k}" for k in range(3)]


def test_no_pairs_from_bc_sets_and_no_rejected_means_no_pair(con, build):
    worked_example(build)
    select_checked(con, RUN, 0, "bc")
    select_checked(con, RUN, 1, "rft", n_sims=5)  # rft: s0 only, and no rollout from s0 succeeded
    assert con.execute("SELECT count(*) FROM preference_pairs").fetchone() == (0,)
    with pytest.raises(StoreError, match="eef or rft training sets"):
        list(preferences.pair_records(con, RUN, 0, "bc"))


def test_export_dpo_writes_trl_jsonl(db_path, tmp_path):
    with store.writer(db_path) as con:
        worked_example(StoreBuilder(con))
        select_checked(con, RUN, 1, "eef", n_sims=5)
    out = tmp_path / "pairs.jsonl"
    eef = Path(sys.executable).with_name("eef")
    proc = subprocess.run([str(eef), "export-dpo", str(out), "--db", str(db_path), "--run", RUN, "--iteration", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "exported 2 preference pairs" in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(r) for r in records] == [["chosen", "prompt", "rejected"]] * 2
    with store.reader(db_path) as con:
        assert records == list(preferences.pair_records(con, RUN, 1))

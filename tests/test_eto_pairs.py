"""ETO's preference pairs (view eto_pairs, sql/views/46_eto_pairs.sql; eef_tasks/preferences.py with
method 'eto'): a worked example with rows checked by hand, the TRL records, and a property test on
the random stores of tests/test_selection_properties.py.

Worked example (run-1 unless said otherwise):
- t1 (train): expert successes x1 (5 steps), x2 (3), x3 (3), expert failure x4 (2);
  iteration 1 explores r1a (failed, 3 steps), r1b (failed, 2), r1c (succeeded); a failed simulation
  and a failed evaluation on t1 are no explorations.
- t2 (train): expert success y1 (4); iteration 1: r2 failed, r2z failed without an action;
  iteration 2: r2b failed.
- t3 (train): only a failed expert z1; iteration 1: r3 failed -> no chosen, no pair.
- d1 (dev): expert success dx; a failed explore rollout rd there is not on a training task.
- run-2, iteration 1: q1 failed on t1.
Expected pairs, chosen = the task's expert success with the fewest steps, ties to the smaller id:
  (run-1, 1): t1: x2 vs r1a, x2 vs r1b; t2: y1 vs r2.  (run-1, 2): t2: y1 vs r2b.  (run-2, 1): t1: x2 vs q1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from store_builders import RUN, insert_tasks, insert_trajectories, open_store
from test_selection_properties import Spec, stores

from eef_tasks import preferences
from eef_tasks.chat import system_prompt
from eef_tasks.store import StoreError


def worked_example(b) -> None:
    for task in ("t1", "t2", "t3"):
        b.task(task)
    b.task("d1", split="dev")
    b.expert("x1", "t1", n_steps=5, success=True)
    b.expert("x3", "t1", n_steps=3, success=True)
    b.expert("x2", "t1", n_steps=3, success=True)
    b.expert("x4", "t1", n_steps=2, success=False)
    b.expert("y1", "t2", n_steps=4, success=True)
    b.expert("z1", "t3", n_steps=6, success=False)
    b.expert("dx", "d1", n_steps=2, success=True)
    b.rollout("r1a", "t1", iteration=1, success=False, n_steps=3)
    b.rollout("r1b", "t1", iteration=1, success=False, n_steps=2)
    b.rollout("r1c", "t1", iteration=1, success=True, n_steps=4)
    b.simulation("s1", "x4", 1, iteration=1, success=False)
    b.rollout("ev1", "t1", iteration=1, success=False, purpose="eval")
    b.rollout("r2", "t2", iteration=1, success=False, n_steps=2)
    b.rollout("r2z", "t2", iteration=1, success=False, n_steps=0)
    b.rollout("r2b", "t2", iteration=2, success=False, n_steps=5)
    b.rollout("r3", "t3", iteration=1, success=False)
    b.rollout("rd", "d1", iteration=1, success=False)
    b.rollout("q1", "t1", iteration=1, success=False, run_id="run-2")


def eto_pairs(con, run: str, iteration: int) -> list[tuple]:
    return [(p["task_id"], p["chosen_traj_id"], p["rejected_traj_id"])
            for p in preferences.pair_rows(con, run, iteration, "eto")]


def test_worked_example_pairs(con, build):
    worked_example(build)
    assert eto_pairs(con, RUN, 1) == [("t1", "x2", "r1a"), ("t1", "x2", "r1b"), ("t2", "y1", "r2")]
    assert eto_pairs(con, RUN, 2) == [("t2", "y1", "r2b")]
    assert eto_pairs(con, "run-2", 1) == [("t1", "x2", "q1")]
    assert eto_pairs(con, RUN, 3) == []
    # every pair is from s0: the columns of preference_pairs, state 'initial', step 0
    assert con.execute("SELECT DISTINCT method, state_kind, state_traj_id, state_step FROM eto_pairs").fetchall() == [
        ("eto", "initial", None, 0)]


def test_records_are_the_two_chats_from_s0(con, build):
    worked_example(build)
    record = next(preferences.pair_records(con, RUN, 2, "eto"))
    assert record["prompt"] == [{"role": "system", "content": system_prompt("toy")},
                                {"role": "user", "content": "solve t2"}]
    assert [m["content"] for m in record["chosen"] if m["role"] == "assistant"] == [
        f"Action: y1:a{k}" for k in range(4)]
    assert [m["content"] for m in record["rejected"] if m["role"] == "assistant"] == [
        f"Action: r2b:p{k}" for k in range(5)]
    assert record["chosen"][-1]["role"] == "assistant" and record["rejected"][-1]["role"] == "assistant"


def test_bad_requests_are_one_line_errors(con, build):
    worked_example(build)
    with pytest.raises(StoreError, match="eto pairs come from explore rollouts: iterations start at 1"):
        preferences.pair_rows(con, RUN, 0, "eto")
    with pytest.raises(StoreError, match="not 'bc'"):
        preferences.pair_rows(con, RUN, 1, "bc")


# --- property: the rule, written out again, on random stores -----------------------------------------


def expected_pairs(spec: Spec) -> set[tuple]:
    chosen: dict[str, str] = {}
    for t in sorted((t for t in spec.trajs if t.source == "expert" and t.success and t.n_steps > 0
                     and spec.splits[t.task_id] == "train"), key=lambda t: (t.n_steps, t.traj_id)):
        chosen.setdefault(t.task_id, t.traj_id)
    return {(t.run_id, t.iteration, t.task_id, chosen[t.task_id], t.traj_id) for t in spec.trajs
            if t.purpose == "explore" and not t.success and t.n_steps > 0 and t.task_id in chosen}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=stores())
def test_pairs_follow_the_rule_on_random_stores(spec: Spec):
    with tempfile.TemporaryDirectory() as tmp:
        con = open_store(Path(tmp) / "eef.duckdb")
        try:
            insert_tasks(con, spec.splits)
            insert_trajectories(con, spec.trajs)
            rows = con.execute("SELECT run_id, iteration, task_id, chosen_traj_id, rejected_traj_id "
                               "FROM eto_pairs").fetchall()
            lengths = dict(con.execute("SELECT traj_id, n_steps FROM trajectories").fetchall())
        finally:
            con.close()
    assert len(rows) == len(set(rows))  # one row per failed exploration
    assert len({(r[0], r[4]) for r in rows}) == len(rows)
    assert set(rows) == expected_pairs(spec)
    for _, _, _, chosen, rejected in rows:
        assert lengths[chosen] > 0 and lengths[rejected] > 0

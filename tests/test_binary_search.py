"""Binary search, the EEF option `search = 'binary'` (README, "Binary search"): worked examples of the
bisection (sql/views/15_binary_search_points.sql, 16_binary_search_probes.sql), of its need-recover
states (sql/views/20_need_recover_states.sql) and of the selection over them, and a property test
against the pure-Python rule (`selection_reference.bisection_probes`).

Each round is what the simulate phase does: read `binary_search_probes`, simulate from those states
(here: store a simulation with the outcome the test's policy has there), repeat until no row is left.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_builders import RUN, StoreBuilder, TrajSpec, by_state, initial, insert_tasks, insert_trajectories, \
    need_recover, open_store, select_checked

from eef_tasks import selection
from eef_tasks.rollout import binary_search_episodes
from eef_tasks.store import StoreError
from eef_tasks.testing import selection_reference


def probes(con, iteration: int, run_id: str = RUN) -> list[tuple[str, int, str]]:
    return con.execute(
        """SELECT expert_traj_id, step, reason FROM binary_search_probes
           WHERE run_id = $r AND iteration = $i ORDER BY ALL""", {"r": run_id, "i": iteration},
    ).fetchall()


def search(b: StoreBuilder, expert: str, iteration: int, succeeds: set[int]) -> list[list[int]]:
    """Run the bisection of `expert` in `iteration` to its end; the policy succeeds from exactly the
    states in `succeeds`. Returns the states simulated, round by round."""
    rounds = []
    while todo := [step for e, step, _ in probes(b.con, iteration) if e == expert]:
        rounds.append(todo)
        for step in todo:
            b.simulation(f"it{iteration}-{expert}-s{step}", expert, step, iteration=iteration,
                         success=step in succeeds, extra=2)
        assert len(rounds) <= 20, "the bisection did not end"
    return rounds


def need_recover_rows(con, run_id: str = RUN) -> list[tuple]:
    return con.execute(
        """SELECT iteration, expert_traj_id, checkpoint, step, prev_step FROM need_recover_states
           WHERE run_id = $r ORDER BY ALL""", {"r": run_id},
    ).fetchall()


# --- worked example: T = 12 ------------------------------------------------------------------------
# Iteration 1: the rollout from s0 fails; the policy succeeds from s3 … s8 and fails from the rest.
#   round 1: nothing succeeded yet: seek the widest gap (0, 12) -> s6 (success)
#   round 2: bisect the differing gaps (0 F, 6 S) -> s3 and (6 S, 12 F) -> s9:   s3 S, s9 F
#   round 3: (0 F, 3 S) -> s1 and (6 S, 9 F) -> s7:                              s1 F, s7 S
#   round 4: (1 F, 3 S) -> s2 and (7 S, 9 F) -> s8:                              s2 F, s8 S
#   end: every differing pair is one step apart: 7 simulations (<= 3 * ceil(log2 12) = 12).
#   Need-recover: s9 (after the success from s8; harmful span a8, one action). Earliest success: s3.
# Iteration 2: s0 fails again; the policy succeeds from s9, s10, s11 only.
#   s6 F; seek (0, 6) (of the two widest gaps, the earliest) -> s3 F; seek (6, 12) -> s9 S;
#   bisect (6 F, 9 S) -> s7 and (9 S, 12 F) -> s10: s7 F, s10 S; then s8 F and s11 S: 7 simulations,
#   no new need-recover state (nothing fails after a success but the expert's own end).

ITERATION_1 = set(range(3, 9))
ITERATION_2 = {9, 10, 11}


def worked_store(b: StoreBuilder) -> None:
    selection.ensure_run(b.con, RUN, search="binary")
    b.task("t")
    b.expert("e", "t", n_steps=12, success=False)
    b.expert("short", "t", n_steps=1, success=False)  # no state strictly inside: never searched


def test_worked_example_iteration_1_rounds_and_need_recover_state(con, build):
    worked_store(build)
    assert probes(con, 1) == []  # no rollout of iteration 1 yet: the iteration has not started
    build.rollout("it1-s0", "t", iteration=1, success=False)
    assert probes(con, 1) == [("e", 6, "seek")]
    assert search(build, "e", 1, ITERATION_1) == [[6], [3, 9], [1, 7], [2, 8]]
    assert need_recover_rows(con) == [(1, "e", None, 9, 8)]
    # the checkpoints of uniform search do not apply to a binary-search run
    assert con.execute("SELECT count(*) FROM expert_checkpoints WHERE run_id = $r", {"r": RUN}).fetchone() == (0,)
    examples = by_state(select_checked(con, RUN, 1, "eef"))
    # s0's example: the simulation from the earliest success, s3 (3 expert actions after s0);
    # s9 is important but nothing succeeded through it yet
    assert {state: (ex.traj_id, ex.loss_from_step) for state, ex in examples.items()} == {
        initial("t"): ("it1-e-s3", 0)}


def test_worked_example_iteration_2_gets_the_need_recover_example(con, build):
    worked_store(build)
    build.rollout("it1-s0", "t", iteration=1, success=False)
    search(build, "e", 1, ITERATION_1)
    build.rollout("it2-s0", "t", iteration=2, success=False)
    assert search(build, "e", 2, ITERATION_2) == [[6], [3], [9], [7, 10], [8, 11]]
    assert need_recover_rows(con) == [(1, "e", None, 9, 8)]  # iteration 2 found none
    examples = by_state(select_checked(con, RUN, 2, "eef"))
    assert {state: (ex.traj_id, ex.loss_from_step) for state, ex in examples.items()} == {
        initial("t"): ("it1-e-s3", 0),  # still the fewest expert actions after s0
        need_recover("t", "e", 9): ("it2-e-s9", 9),  # loss from s9 on: a8 (harmful) is context
    }


def test_success_from_s0_bisects_at_once(con, build):
    worked_store(build)
    build.rollout("it1-s0", "t", iteration=1, success=True)
    # (0 S, 12 F) -> s6 F; (0, 6) -> s3 S; (3, 6) -> s4 F; (3, 4) is one step: done
    assert search(build, "e", 1, {1, 2, 3}) == [[6], [3], [4]]
    assert need_recover_rows(con) == [(1, "e", None, 4, 3)]


def test_no_success_anywhere_gives_up_after_ceil_log2_T_simulations(con, build):
    worked_store(build)
    build.rollout("it1-s0", "t", iteration=1, success=False)
    # widest gap each time, the earliest of equally wide ones: 6, then (0, 6) -> 3, (6, 12) -> 9,
    # then the four gaps of 3 -> the earliest, (0, 3) -> 1; ceil(log2 12) = 4 simulations
    assert search(build, "e", 1, set()) == [[6], [3], [9], [1]]
    assert need_recover_rows(con) == []
    assert select_checked(con, RUN, 1, "eef") == []


def test_stochastic_outcomes_any_success_counts_and_a_state_is_never_simulated_twice(con, build):
    worked_store(build)
    build.rollout("it1-s0-a", "t", iteration=1, success=False)
    build.rollout("it1-s0-b", "t", iteration=1, success=True)  # RFT x 2: one success is a success
    build.simulation("it1-e-s6-a", "e", 6, iteration=1, success=False)
    build.simulation("it1-e-s6-b", "e", 6, iteration=1, success=False)
    assert probes(con, 1) == [("e", 3, "bisect")]  # s6 is known (failed twice): never asked again
    build.simulation("it1-e-s3-a", "e", 3, iteration=1, success=True)
    build.simulation("it1-e-s3-b", "e", 3, iteration=1, success=False)
    assert probes(con, 1) == [("e", 4, "bisect")]  # s3 counts as a success


def test_the_simulate_phase_reads_its_rounds_from_the_view(db_path):
    from eef_tasks import store

    with store.writer(db_path) as con:
        b = StoreBuilder(con)
        worked_store(b)
        b.rollout("it1-s0", "t", iteration=1, success=False)
        b.simulation("it1-e-s6", "e", 6, iteration=1, success=True)
    episodes = binary_search_episodes(db_path, RUN, 1)
    assert [(e.task_id, e.branch_traj_id, e.branch_step, e.sample) for e in episodes] == [
        ("t", "e", 3, 0), ("t", "e", 9, 0)]
    assert binary_search_episodes(db_path, RUN, 2) == []


def test_binary_runs_have_no_m_and_keep_their_search(con, build):
    with pytest.raises(StoreError, match="M \\(--sims\\) does not apply"):
        selection.ensure_run(con, "b", 3, search="binary")
    with pytest.raises(StoreError, match="unknown search"):
        selection.ensure_run(con, "b", search="ternary")
    selection.ensure_run(con, "b", search="binary")
    assert con.execute("SELECT n_sims, search FROM runs WHERE run_id = 'b'").fetchone() == (0, "binary")
    with pytest.raises(StoreError, match="created with search = 'binary', not 'uniform'"):
        selection.ensure_run(con, "b", search="uniform")


# --- property: the SQL bisection is the rule, on any outcomes ----------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_steps=st.integers(2, 40), s0=st.booleans(), data=st.data())
def test_bisection_follows_the_rule_and_ends_in_o_log_t(n_steps, s0, data):
    succeeds = data.draw(st.lists(st.booleans(), min_size=n_steps, max_size=n_steps))
    succeeds[0] = s0
    budget = 3 * math.ceil(math.log2(n_steps))
    with tempfile.TemporaryDirectory(prefix="eef-bisect-") as tmp:
        con = open_store(Path(tmp) / "eef.duckdb")
        try:
            insert_tasks(con, {"t": "train"})
            selection.ensure_run(con, RUN, search="binary")
            insert_trajectories(con, [
                TrajSpec("e", "t", None, "expert", 0, "expert", None, 0, False, n_steps),
                TrajSpec("s0", "t", RUN, "policy", 1, "explore", None, 0, s0, 3),
            ])
            known = {0: s0}
            while True:
                expected = selection_reference.bisection_probes(known, n_steps)
                got = [step for _, step, _ in probes(con, 1)]
                assert got == sorted(expected)
                if not got:
                    break
                assert not set(got) & set(known), "a state is simulated twice"
                insert_trajectories(con, [
                    TrajSpec(f"sim{k}", "t", RUN, "policy", 1, "simulate", "e", k, succeeds[k], k + 1) for k in got])
                known.update({k: succeeds[k] for k in got})
                assert len(known) - 1 <= budget
            found = [row[3:] for row in need_recover_rows(con)]
            assert len(found) <= 1  # F* S* F* in step order: one success-to-failure step at most
            assert found == selection_reference.binary_need_recover(known, n_steps)
            if any(known.values()):
                # one-step resolution: every need-recover state directly follows a success, and the
                # earliest known success is s0 or directly follows a failure
                assert all(prev == step - 1 for step, prev in found)
                first = min(k for k, ok in known.items() if ok)
                assert first == 0 or known.get(first - 1) is False
            else:
                assert len(known) - 1 == min(math.ceil(math.log2(n_steps)), n_steps - 1)
        finally:
            con.close()

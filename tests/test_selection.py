"""Worked examples and edge cases of METHOD.md's selection rules (`eef select`).

Every test that selects goes through `select_checked`, which also asserts that the SQL path and
the pure-Python reference (`eef_tasks.testing.selection_reference`) return identical rows.
"""

from __future__ import annotations

import pytest
from store_builders import (
    RUN,
    StoreBuilder,
    by_state,
    initial,
    need_recover,
    select_checked,
)

from eef_tasks import selection
from eef_tasks.testing import selection_reference
from eef_tasks.store import StoreError

# --- helpers ------------------------------------------------------------------------------------


def checkpoint_view(con, run_id: str = RUN) -> dict[str, list[tuple[int, int, int]]]:
    """expert_checkpoints as {expert_traj_id: [(checkpoint, step, prev_step), ...]}."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for expert, checkpoint, step, prev in con.execute(
        """SELECT expert_traj_id, checkpoint, step, prev_step FROM expert_checkpoints
           WHERE run_id = $r ORDER BY expert_traj_id, checkpoint""",
        {"r": run_id},
    ).fetchall():
        out.setdefault(expert, []).append((checkpoint, step, prev))
    return out


def need_recover_view(con, run_id: str = RUN) -> list[tuple]:
    """need_recover_states as sorted (iteration, expert_traj_id, step, prev_step)."""
    return con.execute(
        """SELECT iteration, expert_traj_id, step, prev_step FROM need_recover_states
           WHERE run_id = $r ORDER BY ALL""",
        {"r": run_id},
    ).fetchall()


def reference_need_recover(con, run_id: str, iteration: int, n_sims: int) -> set[tuple]:
    splits, trajs = selection_reference.load(con)
    return selection_reference.need_recover_states(splits, trajs, run_id, iteration, n_sims)


def all_examples(con) -> list[tuple]:
    return con.execute("SELECT * EXCLUDE (created_at) FROM training_examples ORDER BY ALL").fetchall()


# --- METHOD.md's worked example -----------------------------------------------------------------
# Failed expert e of task t, T = 12, M = 5 -> l = 2, checkpoints s2 s4 s6 s8 s10. Iteration 1: the
# rollout from s0 fails; simulations succeed from s2 and s4, fail from s6, succeed from s8, fail
# from s10.

WORKED_ITERATION_1 = {2: True, 4: True, 6: False, 8: True, 10: False}


def build_worked_example(b: StoreBuilder) -> None:
    b.task("t")
    b.expert("e", "t", n_steps=12, success=False)
    b.rollout("it1-s0", "t", iteration=1, success=False, n_steps=5)
    for step, ok in WORKED_ITERATION_1.items():
        b.simulation(f"it1-s{step}", "e", step, iteration=1, success=ok, extra=3)


def add_worked_iteration_2(b: StoreBuilder) -> None:
    """Iteration 2: the policy succeeds from s0 itself; from s2/s4 too, fails from s6, s8, s10."""
    b.rollout("it2-s0", "t", iteration=2, success=True, n_steps=9)
    for step, ok in {2: True, 4: True, 6: False, 8: False, 10: False}.items():
        b.simulation(f"it2-s{step}", "e", step, iteration=2, success=ok, extra=3)


def test_worked_example_checkpoints_are_s2_s4_s6_s8_s10(con, build):
    build_worked_example(build)
    selection.ensure_run(con, RUN, 5)
    assert checkpoint_view(con) == {"e": [(1, 2, 0), (2, 4, 2), (3, 6, 4), (4, 8, 6), (5, 10, 8)]}
    assert selection_reference.checkpoints(12, 5) == [2, 4, 6, 8, 10]


def test_worked_example_need_recover_states_are_s6_and_s10(con, build):
    build_worked_example(build)
    selection.ensure_run(con, RUN, 5)
    assert need_recover_view(con) == [(1, "e", 6, 4), (1, "e", 10, 8)]
    assert reference_need_recover(con, RUN, 1, 5) == {("t", "e", 6), ("t", "e", 10)}


def test_worked_example_iteration_1_examples_for_s0_and_s6_none_for_s10(con, build):
    build_worked_example(build)
    examples = by_state(select_checked(con, RUN, 1, "eef", 5))
    assert set(examples) == {initial("t"), need_recover("t", "e", 6)}
    # s0: the simulation from s2 (2 expert actions after s0), loss on every step
    assert examples[initial("t")].traj_id == "it1-s2"
    assert examples[initial("t")].loss_from_step == 0
    # s6: the simulation from s8 (2 expert actions after s6), loss from step 6 on
    s6 = examples[need_recover("t", "e", 6)]
    assert (s6.traj_id, s6.loss_from_step, s6.state_step) == ("it1-s8", 6, 6)
    # s10: nothing succeeded through it, so no example
    assert need_recover("t", "e", 10) not in examples


def test_worked_example_harmful_actions_a4_a5_are_context_of_the_s6_example(con, build):
    build_worked_example(build)
    examples = by_state(select_checked(con, RUN, 1, "eef", 5))
    s6 = examples[need_recover("t", "e", 6)]
    actions = dict(
        con.execute("SELECT step, action FROM steps WHERE traj_id = $t", {"t": s6.traj_id}).fetchall()
    )
    supervised = {k for k in actions if k >= s6.loss_from_step}
    # a4, a5 (between c_2 = s4 and the need-recover s6) are the expert's and are not supervised
    assert actions[4] == "e:a4" and actions[5] == "e:a5"
    assert not {4, 5} & supervised
    # a6, a7 (beneficial expert actions up to the branch point s8) and the continuation are learned
    assert actions[6] == "e:a6" and actions[7] == "e:a7"
    assert {6, 7, 8, 9, 10} <= supervised


def test_worked_example_iteration_2_s0_rollout_replaces_s0_example_s6_stays_s10_important(con, build):
    build_worked_example(build)
    first = select_checked(con, RUN, 1, "eef", 5)
    add_worked_iteration_2(build)
    examples = by_state(select_checked(con, RUN, 2, "eef", 5))
    # the rollout from s0 (0 expert actions) replaces the simulation from s2
    assert examples[initial("t")].traj_id == "it2-s0"
    assert examples[initial("t")].loss_from_step == 0
    # s6 keeps iteration 1's simulation from s8 (iteration 2's runs from s6 and s8 failed)
    assert examples[need_recover("t", "e", 6)].traj_id == "it1-s8"
    # s10 was found in iteration 1 and is still important, but nothing succeeded through it
    assert set(examples) == {initial("t"), need_recover("t", "e", 6)}
    assert (1, "e", 10, 8) in need_recover_view(con)
    assert reference_need_recover(con, RUN, 2, 5) == {("t", "e", 6), ("t", "e", 10)}
    # iteration 1's set is untouched, and reselecting it ignores iteration 2's trajectories
    assert select_checked(con, RUN, 1, "eef", 5) == first


def test_need_recover_state_found_earlier_gets_example_when_a_later_success_passes_through(con, build):
    build_worked_example(build)
    add_worked_iteration_2(build)
    # iteration 3: s8 fails again (s10 is not need-recover *in* iteration 3) but s10 succeeds
    build.simulation("it3-s8", "e", 8, iteration=3, success=False)
    build.simulation("it3-s10", "e", 10, iteration=3, success=True, extra=1)
    assert not any(it == 3 and step == 10 for it, _, step, _ in need_recover_view(con))
    examples = by_state(select_checked(con, RUN, 3, "eef", 5))
    s10 = examples[need_recover("t", "e", 10)]
    assert (s10.traj_id, s10.loss_from_step) == ("it3-s10", 10)
    # and as of iteration 2 the state still has no example
    assert need_recover("t", "e", 10) not in by_state(select_checked(con, RUN, 2, "eef", 5))


# --- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_steps", "n_sims", "expected"),
    [
        (12, 5, [2, 4, 6, 8, 10]),
        (17, 5, [2, 4, 6, 8, 10]),
        (18, 5, [3, 6, 9, 12, 15]),
        (13, 2, [4, 8]),
        (6, 5, [1, 2, 3, 4, 5]),  # T // (M+1) = 1
        (5, 5, [1, 2, 3, 4]),  # T // (M+1) = 0 -> l = 1, only indices < T
        (4, 5, [1, 2, 3]),
        (2, 1, [1]),
        (1, 5, []),  # T = 1: s1 is the final state, not a checkpoint
        (0, 5, []),  # an expert that failed without acting
        (12, 0, []),  # M = 0: no simulations at all
        (1, 0, []),
    ],
)
def test_checkpoints_spacing_is_max_1_T_div_M_plus_1_and_index_below_T(con, build, n_steps, n_sims, expected):
    build.task("t")
    build.expert("e", "t", n_steps=n_steps, success=False)
    selection.ensure_run(con, RUN, n_sims)
    rows = checkpoint_view(con).get("e", [])
    assert [step for _, step, _ in rows] == expected
    assert [m for m, _, _ in rows] == list(range(1, len(expected) + 1))
    assert [prev for _, _, prev in rows] == [0, *expected[:-1]][: len(expected)]
    assert selection_reference.checkpoints(n_steps, n_sims) == expected


def test_checkpoints_only_for_failed_experts_of_training_tasks(con, build):
    build.task("t")
    build.task("d", split="dev")
    build.task("x", split="test")
    build.expert("failed", "t", n_steps=6, success=False)
    build.expert("won", "t", n_steps=6, success=True)
    build.expert("dev-failed", "d", n_steps=6, success=False)
    build.expert("test-failed", "x", n_steps=6, success=False)
    selection.ensure_run(con, RUN, 2)
    assert checkpoint_view(con) == {"failed": [(1, 2, 0), (2, 4, 2)]}


def test_checkpoints_follow_each_runs_own_M(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=12, success=False)
    selection.ensure_run(con, "m5", 5)
    selection.ensure_run(con, "m2", 2)
    selection.ensure_run(con, "m0", 0)
    assert [s for _, s, _ in checkpoint_view(con, "m5")["e"]] == [2, 4, 6, 8, 10]
    assert [s for _, s, _ in checkpoint_view(con, "m2")["e"]] == [4, 8]
    assert checkpoint_view(con, "m0") == {}


def test_simulation_from_final_state_is_not_a_checkpoint_so_never_need_recover(con, build):
    # T = 1: l = 1 and s1 is not < T; a failing "simulation" from s1 after a successful s0 rollout
    # must not make s1 need-recover.
    build.task("t")
    build.expert("e", "t", n_steps=1, success=False)
    build.rollout("s0", "t", iteration=1, success=True)
    build.simulation("s1", "e", 1, iteration=1, success=False)
    examples = select_checked(con, RUN, 1, "eef", 5)
    assert need_recover_view(con) == []
    assert [(ex.state_kind, ex.traj_id) for ex in examples] == [("initial", "s0")]


def test_M_0_has_no_checkpoints_and_no_need_recover_states(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=12, success=False)
    build.rollout("s0", "t", iteration=1, success=True)
    build.simulation("sim2", "e", 2, iteration=1, success=False)
    build.simulation("sim4", "e", 4, iteration=1, success=True)
    examples = select_checked(con, RUN, 1, "eef", 0)
    assert checkpoint_view(con) == {} and need_recover_view(con) == []
    assert [ex.state_kind for ex in examples] == ["initial"]
    # with M = 5 in another run the same outcomes make s2 need-recover
    for traj, step, ok in [("o-s0", 0, True), ("o-sim2", 2, False), ("o-sim4", 4, True)]:
        if step == 0:
            build.rollout(traj, "t", iteration=1, success=ok, run_id="other")
        else:
            build.simulation(traj, "e", step, iteration=1, success=ok, run_id="other")
    other = by_state(select_checked(con, "other", 1, "eef", 5))
    assert other[need_recover("t", "e", 2)].traj_id == "o-sim4"


# --- several expert trajectories for one task ------------------------------------------------------


def build_two_experts(b: StoreBuilder) -> None:
    # e1: T = 12, M = 5 -> s2 s4 s6 s8 s10; e2: T = 6 -> l = 1 -> s1 .. s5
    b.task("t")
    b.expert("e1", "t", n_steps=12, success=False)
    b.expert("e2", "t", n_steps=6, success=False)
    b.rollout("s0-fail", "t", iteration=1, success=False)
    b.rollout("s0-ok", "t", iteration=1, success=True, n_steps=7)  # the shared run from s0
    for step, ok in {2: False, 4: True, 6: True, 8: True, 10: True}.items():
        b.simulation(f"e1-s{step}", "e1", step, iteration=1, success=ok)
    for step, ok in {1: True, 2: False, 3: False, 4: False, 5: True}.items():
        b.simulation(f"e2-s{step}", "e2", step, iteration=1, success=ok)


def test_several_experts_each_have_their_own_checkpoints(con, build):
    build_two_experts(build)
    selection.ensure_run(con, RUN, 5)
    view = checkpoint_view(con)
    assert [s for _, s, _ in view["e1"]] == [2, 4, 6, 8, 10]
    assert [s for _, s, _ in view["e2"]] == [1, 2, 3, 4, 5]


def test_several_experts_need_recover_is_per_expert_and_s0_run_is_shared(con, build):
    build_two_experts(build)
    selection.ensure_run(con, RUN, 5)
    # the successful s0 rollout precedes both experts' first checkpoints: e1's s2 failed -> NR,
    # e2's s1 succeeded -> not NR; e2's s2 failed after its s1 succeeded -> NR. e1's s2 failing
    # does not make e2's s2 (same index, other expert) anything.
    assert need_recover_view(con) == [(1, "e1", 2, 0), (1, "e2", 2, 1)]
    assert reference_need_recover(con, RUN, 1, 5) == {("t", "e1", 2), ("t", "e2", 2)}


def test_several_experts_only_own_simulations_pass_through_a_need_recover_state(con, build):
    build_two_experts(build)
    examples = by_state(select_checked(con, RUN, 1, "eef", 5))
    assert set(examples) == {initial("t"), need_recover("t", "e1", 2), need_recover("t", "e2", 2)}
    assert examples[initial("t")].traj_id == "s0-ok"
    assert examples[need_recover("t", "e1", 2)].traj_id == "e1-s4"  # 2 expert actions after s2
    # e1-s4 would cost 2 too, but it is not a trajectory through e2's s2: e2-s5 costs 3
    assert examples[need_recover("t", "e2", 2)].traj_id == "e2-s5"


def test_first_checkpoint_is_not_need_recover_without_a_success_from_s0(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    build.rollout("s0", "t", iteration=1, success=False)
    build.simulation("s2", "e", 2, iteration=1, success=False)
    build.simulation("s4", "e", 4, iteration=1, success=True)
    select_checked(con, RUN, 1, "eef", 2)
    assert need_recover_view(con) == []


def test_checkpoint_not_simulated_in_an_iteration_is_not_judged_there(con, build):
    # iteration 1: s0 succeeds, s2 never simulated, s4 fails -> s4's predecessor has no outcome
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    build.rollout("s0", "t", iteration=1, success=True)
    build.simulation("s4", "e", 4, iteration=1, success=False)
    # iteration 2: s2 succeeds but no run from s4 in iteration 2 -> nothing either
    build.simulation("s2", "e", 2, iteration=2, success=True)
    select_checked(con, RUN, 2, "eef", 2)
    assert need_recover_view(con) == []


def test_need_recover_needs_both_runs_in_the_same_iteration(con, build):
    # s0 succeeds in iteration 1, s2 fails in iteration 2: not need-recover in either iteration
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    build.rollout("it1-s0", "t", iteration=1, success=True)
    build.rollout("it2-s0", "t", iteration=2, success=False)
    build.simulation("it1-s2", "e", 2, iteration=1, success=True)
    build.simulation("it2-s2", "e", 2, iteration=2, success=False)
    select_checked(con, RUN, 2, "eef", 2)
    assert need_recover_view(con) == []


# --- RFT x k and repeated simulations ---------------------------------------------------------------


def test_rft_x_k_any_successful_s0_rollout_makes_s0_succeeded(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    build.rollout("k1", "t", iteration=1, success=False)
    build.rollout("k2", "t", iteration=1, success=True, n_steps=4)
    build.rollout("k3", "t", iteration=1, success=False)
    build.simulation("s2", "e", 2, iteration=1, success=False)
    build.simulation("s4", "e", 4, iteration=1, success=True)
    examples = by_state(select_checked(con, RUN, 1, "eef", 2))
    assert need_recover_view(con) == [(1, "e", 2, 0)]
    assert examples[initial("t")].traj_id == "k2"
    assert examples[need_recover("t", "e", 2)].traj_id == "s4"


def test_rft_x_k_all_failed_s0_rollouts_make_no_need_recover(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    for k in range(3):
        build.rollout(f"k{k}", "t", iteration=1, success=False)
    build.simulation("s2", "e", 2, iteration=1, success=False)
    select_checked(con, RUN, 1, "eef", 2)
    assert need_recover_view(con) == []


def test_several_simulations_from_one_checkpoint_any_success_counts(con, build):
    # two runs from s2: one succeeds -> s2 succeeded, so s2 is not NR and s4 (failed) is
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    build.rollout("s0", "t", iteration=1, success=True)
    build.simulation("s2-a", "e", 2, iteration=1, success=False)
    build.simulation("s2-b", "e", 2, iteration=1, success=True)
    build.simulation("s4", "e", 4, iteration=1, success=False)
    select_checked(con, RUN, 1, "eef", 2)
    assert need_recover_view(con) == [(1, "e", 4, 2)]


# --- tie-breaks -----------------------------------------------------------------------------------


def test_tie_break_fewest_expert_actions_after_the_state_first(con, build):
    build.task("t")
    build.expert("won", "t", n_steps=2, success=True)  # 2 expert actions after s0
    build.expert("e", "t", n_steps=8, success=False)
    build.simulation("sim1", "e", 1, iteration=1, success=True, extra=0)  # 1 expert action, 1 step
    build.rollout("long", "t", iteration=1, success=True, n_steps=30)  # 0 expert actions
    examples = by_state(select_checked(con, RUN, 1, "eef", 5))
    assert examples[initial("t")].traj_id == "long"


def test_tie_break_expert_success_versus_simulation_counts_all_expert_actions(con, build):
    build.task("t")
    build.expert("won", "t", n_steps=2, success=True)
    build.expert("e", "t", n_steps=8, success=False)
    build.simulation("sim3", "e", 3, iteration=1, success=True, extra=0)
    build.simulation("sim1", "e", 1, iteration=1, success=True, extra=20)
    examples = by_state(select_checked(con, RUN, 1, "eef", 5))
    assert examples[initial("t")].traj_id == "sim1"  # 1 < 2 (expert) < 3
    assert by_state(select_checked(con, RUN, 1, "rft", 5))[initial("t")].traj_id == "won"


def test_tie_break_then_fewer_steps(con, build):
    build.task("t")
    build.rollout("a-long", "t", iteration=1, success=True, n_steps=7)
    build.rollout("z-short", "t", iteration=2, success=True, n_steps=5)
    examples = by_state(select_checked(con, RUN, 2, "eef", 5))
    assert examples[initial("t")].traj_id == "z-short"


def test_tie_break_then_earlier_iteration(con, build):
    build.task("t")
    build.rollout("z-first", "t", iteration=1, success=True, n_steps=5)
    build.rollout("a-second", "t", iteration=2, success=True, n_steps=5)
    examples = by_state(select_checked(con, RUN, 2, "eef", 5))
    assert examples[initial("t")].traj_id == "z-first"


def test_tie_break_then_smaller_traj_id(con, build):
    build.task("t")
    build.rollout("b", "t", iteration=1, success=True, n_steps=5)
    build.rollout("a", "t", iteration=1, success=True, n_steps=5)
    build.rollout("c", "t", iteration=1, success=True, n_steps=5)
    assert by_state(select_checked(con, RUN, 1, "eef", 5))[initial("t")].traj_id == "a"
    assert by_state(select_checked(con, RUN, 1, "rft", 5))[initial("t")].traj_id == "a"


def test_tie_break_at_need_recover_state_fewer_expert_actions_then_steps_then_iteration_then_id(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=12, success=False)  # M = 5: s2 .. s10
    build.rollout("s0", "t", iteration=1, success=True)
    build.simulation("it1-s2", "e", 2, iteration=1, success=False)
    # candidates through s2 (NR from iteration 1)
    build.simulation("it1-s4", "e", 4, iteration=1, success=True, extra=1)  # 2 after, 5 steps
    build.simulation("it2-s4-b", "e", 4, iteration=2, success=True, extra=0)  # 2 after, 4 steps
    build.simulation("it3-s4-a", "e", 4, iteration=3, success=True, extra=0)  # later iteration
    build.simulation("it2-s4-a", "e", 4, iteration=2, success=True, extra=0)  # smaller id
    build.simulation("it3-s6", "e", 6, iteration=3, success=True, extra=0)  # 4 after, 6 steps
    nr = need_recover("t", "e", 2)
    assert by_state(select_checked(con, RUN, 1, "eef", 5))[nr].traj_id == "it1-s4"
    assert by_state(select_checked(con, RUN, 2, "eef", 5))[nr].traj_id == "it2-s4-a"
    assert by_state(select_checked(con, RUN, 3, "eef", 5))[nr].traj_id == "it2-s4-a"


# --- what the pool holds -----------------------------------------------------------------------------


def test_pool_excludes_successes_of_another_run(con, build):
    build.task("t")
    build.expert("won", "t", n_steps=4, success=True)
    build.rollout("mine-failed", "t", iteration=1, success=False)
    build.rollout("theirs", "t", iteration=1, success=True, n_steps=1, run_id="other")
    examples = select_checked(con, RUN, 1, "eef", 5)
    assert [ex.traj_id for ex in examples] == ["won"]
    assert [ex.traj_id for ex in select_checked(con, RUN, 1, "rft", 5)] == ["won"]
    assert [ex.traj_id for ex in select_checked(con, "other", 1, "eef", 5)] == ["theirs"]


def test_pool_excludes_another_runs_simulations_and_need_recover_states(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    # run "other" finds s2 need-recover and has a success through it
    build.rollout("o-s0", "t", iteration=1, success=True, run_id="other")
    build.simulation("o-s2", "e", 2, iteration=1, success=False, run_id="other")
    build.simulation("o-s4", "e", 4, iteration=1, success=True, run_id="other")
    # this run only has a failed rollout and a failed simulation
    build.rollout("m-s0", "t", iteration=1, success=False)
    build.simulation("m-s2", "e", 2, iteration=1, success=False)
    assert select_checked(con, RUN, 1, "eef", 2) == []
    assert need_recover_view(con, RUN) == []
    other = by_state(select_checked(con, "other", 1, "eef", 2))
    assert other[need_recover("t", "e", 2)].traj_id == "o-s4"


def test_pool_excludes_eval_trajectories(con, build):
    build.task("t")
    build.task("d", split="dev")
    build.rollout("eval-train", "t", iteration=1, success=True, purpose="eval")
    build.rollout("eval-dev", "d", iteration=1, success=True, purpose="eval")
    build.rollout("eval-0", "t", iteration=0, success=True, purpose="eval")
    assert select_checked(con, RUN, 1, "eef", 5) == []
    assert select_checked(con, RUN, 1, "rft", 5) == []


def test_eval_rollouts_do_not_count_as_runs_from_s0_for_need_recover(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)
    build.rollout("eval", "t", iteration=1, success=True, purpose="eval")
    build.simulation("s2", "e", 2, iteration=1, success=False)
    select_checked(con, RUN, 1, "eef", 2)
    assert need_recover_view(con) == []


def test_pool_excludes_dev_and_test_tasks(con, build):
    build.task("d", split="dev")
    build.task("x", split="test")
    build.expert("dev-won", "d", n_steps=3, success=True)
    build.expert("dev-failed", "d", n_steps=6, success=False)
    build.rollout("dev-s0", "d", iteration=1, success=True)
    build.simulation("dev-s2", "dev-failed", 2, iteration=1, success=False)
    build.simulation("dev-s4", "dev-failed", 4, iteration=1, success=True)
    build.rollout("test-s0", "x", iteration=1, success=True)
    assert select_checked(con, RUN, 0, "bc", 2) == []
    assert select_checked(con, RUN, 1, "eef", 2) == []
    assert select_checked(con, RUN, 1, "rft", 2) == []
    assert need_recover_view(con) == []


def test_pool_ignores_policy_trajectories_of_later_iterations(con, build):
    build.task("t")
    build.expert("won", "t", n_steps=4, success=True)
    build.rollout("later", "t", iteration=2, success=True, n_steps=1)
    assert [ex.traj_id for ex in select_checked(con, RUN, 1, "eef", 5)] == ["won"]
    assert [ex.traj_id for ex in select_checked(con, RUN, 1, "rft", 5)] == ["won"]
    assert [ex.traj_id for ex in select_checked(con, RUN, 2, "eef", 5)] == ["later"]


def test_pool_accumulates_successes_of_earlier_iterations(con, build):
    build.task("t")
    build.rollout("it1", "t", iteration=1, success=True, n_steps=3)
    build.rollout("it2", "t", iteration=2, success=False)
    build.rollout("it3", "t", iteration=3, success=False)
    assert [ex.traj_id for ex in select_checked(con, RUN, 3, "eef", 5)] == ["it1"]


def test_need_recover_state_found_in_a_later_iteration_is_not_important_earlier(con, build):
    build.task("t")
    build.expert("e", "t", n_steps=6, success=False)  # M = 2: s2 s4
    # iteration 1: s0 fails, s2 and s4 succeed -> no need-recover state
    build.rollout("it1-s0", "t", iteration=1, success=False)
    build.simulation("it1-s2", "e", 2, iteration=1, success=True, extra=4)
    build.simulation("it1-s4", "e", 4, iteration=1, success=True)
    # iteration 2: s0 succeeds, s2 fails -> s2 is need-recover from iteration 2 on
    build.rollout("it2-s0", "t", iteration=2, success=True)
    build.simulation("it2-s2", "e", 2, iteration=2, success=False)
    first = by_state(select_checked(con, RUN, 1, "eef", 2))
    assert set(first) == {initial("t")}  # it1-s2 passes through s2, but s2 is not important yet
    second = by_state(select_checked(con, RUN, 2, "eef", 2))
    assert second[need_recover("t", "e", 2)].traj_id == "it1-s2"  # an iteration-1 success


# --- RFT --------------------------------------------------------------------------------------------


def test_rft_only_initial_states_and_only_trajectories_from_s0(con, build):
    build_worked_example(build)
    build.task("u")
    build.expert("u-won", "u", n_steps=3, success=True)
    build.expert("t-won", "t", n_steps=5, success=True)
    eef = by_state(select_checked(con, RUN, 1, "eef", 5))
    assert eef[initial("t")].traj_id == "it1-s2" and need_recover("t", "e", 6) in eef
    rft = select_checked(con, RUN, 1, "rft", 5)
    assert {ex.state_kind for ex in rft} == {"initial"}
    # the simulations are ignored: t's example is the expert success (branch_step 0)
    assert {ex.task_id: ex.traj_id for ex in rft} == {"t": "t-won", "u": "u-won"}
    branch_steps = dict(con.execute("SELECT traj_id, branch_step FROM trajectories").fetchall())
    assert all(branch_steps[ex.traj_id] == 0 and ex.loss_from_step == 0 for ex in rft)


def test_rft_on_a_store_with_only_simulation_successes_selects_nothing(con, build):
    build_worked_example(build)
    assert select_checked(con, RUN, 1, "rft", 5) == []
    add_worked_iteration_2(build)
    assert [ex.traj_id for ex in select_checked(con, RUN, 2, "rft", 5)] == ["it2-s0"]


# --- behaviour cloning --------------------------------------------------------------------------------


def test_bc_every_expert_success_of_a_training_task(con, build):
    build.task("t")
    build.task("u")
    build.task("d", split="dev")
    build.expert("t-1", "t", n_steps=3, success=True)
    build.expert("t-2", "t", n_steps=5, success=True)  # both successes of t, not only the shortest
    build.expert("t-failed", "t", n_steps=6, success=False)
    build.expert("u-1", "u", n_steps=0, success=True)
    build.expert("d-1", "d", n_steps=2, success=True)
    build.rollout("policy-won", "t", iteration=1, success=True)
    examples = select_checked(con, RUN, 0, "bc", 5)
    assert [(ex.traj_id, ex.task_id) for ex in examples] == [("t-1", "t"), ("t-2", "t"), ("u-1", "u")]
    for ex in examples:
        assert (ex.iteration, ex.method, ex.state_kind) == (0, "bc", "expert_success")
        assert (ex.loss_from_step, ex.state_step, ex.state_traj_id) == (0, 0, None)


@pytest.mark.parametrize("iteration", [1, 2, -1])
def test_bc_must_be_iteration_0(con, build, iteration):
    build.task("t")
    build.expert("won", "t", n_steps=3, success=True)
    with pytest.raises(StoreError, match="iteration 0"):
        selection.select_examples(con, RUN, iteration, "bc", 5)
    assert con.execute("SELECT count(*) FROM training_examples").fetchone()[0] == 0


@pytest.mark.parametrize("method", ["eef", "rft"])
@pytest.mark.parametrize("iteration", [0, -1])
def test_eef_and_rft_start_at_iteration_1(con, build, method, iteration):
    build.task("t")
    build.expert("won", "t", n_steps=3, success=True)
    with pytest.raises(StoreError, match="start at 1"):
        selection.select_examples(con, RUN, iteration, method, 5)
    assert con.execute("SELECT count(*) FROM training_examples").fetchone()[0] == 0


def test_unknown_method_is_an_error(con):
    with pytest.raises(StoreError, match="unknown method"):
        selection.select_examples(con, RUN, 1, "sft", 5)


# --- idempotence ------------------------------------------------------------------------------------


def test_idempotent_selecting_twice_gives_identical_rows(con, build):
    build_worked_example(build)
    build.expert("t-won", "t", n_steps=5, success=True)
    for method, iteration in [("bc", 0), ("eef", 1), ("rft", 1)]:
        select_checked(con, RUN, iteration, method, 5)
    before = all_examples(con)
    assert len(before) == 4  # bc: t-won; eef: s0 and s6; rft: t-won
    for method, iteration in [("bc", 0), ("eef", 1), ("rft", 1)]:
        select_checked(con, RUN, iteration, method, 5)
    assert all_examples(con) == before


def test_idempotent_rerun_after_a_new_success_replaces_the_set_without_duplicates(con, build):
    build_worked_example(build)
    build.expert("t-won", "t", n_steps=5, success=True)
    rft = select_checked(con, RUN, 1, "rft", 5)
    assert [ex.traj_id for ex in rft] == ["t-won"]
    first = select_checked(con, RUN, 1, "eef", 5)
    # late-arriving iteration-1 successes from s0 and through s10 (a run from s11, which is not a
    # checkpoint, so s10 stays need-recover)
    build.simulation("it1-s11-late", "e", 11, iteration=1, success=True)
    build.rollout("it1-s0-late", "t", iteration=1, success=True)
    second = by_state(select_checked(con, RUN, 1, "eef", 5))
    assert set(second) == {initial("t"), need_recover("t", "e", 6), need_recover("t", "e", 10)}
    assert second[initial("t")].traj_id == "it1-s0-late"
    assert second[need_recover("t", "e", 10)].traj_id == "it1-s11-late"
    rows = con.execute(
        "SELECT traj_id, state_step FROM training_examples WHERE method = 'eef' ORDER BY ALL"
    ).fetchall()
    assert rows == [("it1-s0-late", 0), ("it1-s11-late", 10), ("it1-s8", 6)]
    assert "it1-s2" not in {ex.traj_id for ex in second.values()}
    assert first != list(second.values())
    # the rft set of the same run and iteration was not touched by the eef rerun
    assert selection.fetch_examples(con, RUN, 1, "rft") == [tuple(ex) for ex in rft]


def test_idempotent_selection_of_one_iteration_keeps_other_iterations(con, build):
    build_worked_example(build)
    add_worked_iteration_2(build)
    one = select_checked(con, RUN, 1, "eef", 5)
    two = select_checked(con, RUN, 2, "eef", 5)
    select_checked(con, RUN, 1, "eef", 5)
    assert selection.fetch_examples(con, RUN, 2, "eef") == [tuple(ex) for ex in two]
    assert selection.fetch_examples(con, RUN, 1, "eef") == [tuple(ex) for ex in one]


# --- a run's M is fixed -----------------------------------------------------------------------------


def test_run_M_is_fixed_ensure_run_with_other_n_sims_raises(con):
    assert selection.ensure_run(con, RUN, 3) == 3
    assert selection.ensure_run(con, RUN, 3) == 3
    assert selection.ensure_run(con, RUN) == 3  # None keeps the stored M
    with pytest.raises(StoreError, match="M = 3"):
        selection.ensure_run(con, RUN, 5)
    assert con.execute("SELECT n_sims FROM runs WHERE run_id = $r", {"r": RUN}).fetchone() == (3,)


def test_run_M_defaults_to_5_and_must_not_be_negative(con):
    assert selection.ensure_run(con, "default") == selection.DEFAULT_N_SIMS == 5
    with pytest.raises(StoreError, match=">= 0"):
        selection.ensure_run(con, "negative", -1)
    assert con.execute("SELECT count(*) FROM runs WHERE run_id = 'negative'").fetchone()[0] == 0


def test_run_M_is_fixed_select_with_other_n_sims_raises_and_keeps_the_old_set(con, build):
    build_worked_example(build)
    before = select_checked(con, RUN, 1, "eef", 5)
    with pytest.raises(StoreError, match="start a new run"):
        selection.select_examples(con, RUN, 1, "eef", 2)
    # the failed request rolled back: neither the run's M nor its examples changed
    assert select_checked(con, RUN, 1, "eef", None) == before
    assert con.execute("SELECT n_sims FROM runs WHERE run_id = $r", {"r": RUN}).fetchone() == (5,)

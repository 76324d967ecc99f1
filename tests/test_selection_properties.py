"""Property tests of `eef select` on random stores (hypothesis).

Each example builds a fresh DuckDB file: a few tasks (train, dev, test), 1-3 expert trajectories
per task of random length and outcome, two runs with random M, iterations of explore rollouts
(sometimes RFT x k) and simulations from the checkpoints of failed experts with random outcomes,
plus evaluation rollouts. It then selects bc, sft-all and nat, and eef and rft at every iteration of both runs, and
checks METHOD.md's rules against an independent brute-force reading of them written here.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from store_builders import (
    Example,
    TrajSpec,
    insert_tasks,
    insert_trajectories,
    open_store,
    reference_rows,
)

from eef_tasks import selection
from eef_tasks.testing import selection_reference

RUNS = ("runA", "runB")
MAX_ITERATION = 3


class Spec(NamedTuple):
    splits: dict[str, str]
    trajs: list[TrajSpec]
    n_sims: dict[str, int]


def checkpoints(n_steps: int, n_sims: int) -> list[int]:
    """METHOD.md 2.2, written out again: s_l, …, s_Ml, l = max(1, T // (M+1)), index < T."""
    spacing = max(1, n_steps // (n_sims + 1))
    return [m * spacing for m in range(1, n_sims + 1) if m * spacing < n_steps]


# --- random stores ----------------------------------------------------------------------------------

outcome = st.booleans()
expert_outcome = st.sampled_from([True, False, False])  # experts fail more often than not
copies = st.sampled_from([0, 1, 1, 1, 1, 2])  # a state not run at all, once, or RFT x 2


@st.composite
def stores(draw) -> Spec:
    splits = {f"train{i}": "train" for i in range(draw(st.integers(1, 3)))}
    for i in range(draw(st.integers(0, 2))):
        splits[f"held{i}"] = draw(st.sampled_from(["dev", "test"]))
    trajs: list[TrajSpec] = []
    experts: list[TrajSpec] = []
    for task in splits:
        for j in range(draw(st.integers(1, 3))):
            e = TrajSpec(
                f"{task}.e{j}", task, None, "expert", 0, "expert", None, 0,
                draw(expert_outcome), draw(st.integers(0, 15)),
            )
            experts.append(e)
    trajs += experts
    failed = [e for e in experts if not e.success]
    n_sims = {run: draw(st.integers(0, 5)) for run in RUNS}
    for run in RUNS:
        for it in range(1, draw(st.integers(0, MAX_ITERATION)) + 1):
            for task in splits:
                for c in range(draw(copies)):
                    trajs.append(TrajSpec(
                        f"{run}.i{it}.{task}.s0.{c}", task, run, "policy", it, "explore", None, 0,
                        draw(outcome), draw(st.integers(0, 6)),
                    ))
            for e in failed:
                for step in checkpoints(e.n_steps, n_sims[run]):
                    for c in range(draw(copies)):
                        trajs.append(TrajSpec(
                            f"{run}.i{it}.{e.traj_id}.s{step}.{c}", e.task_id, run, "policy", it,
                            "simulate", e.traj_id, step, draw(outcome), step + draw(st.integers(0, 4)),
                        ))
            # now and then a run from a state that is not one of this run's checkpoints
            if failed and draw(st.integers(0, 3)) == 0:
                e = draw(st.sampled_from(failed))
                if e.n_steps >= 1:
                    step = draw(st.integers(1, e.n_steps))
                    trajs.append(TrajSpec(
                        f"{run}.i{it}.{e.traj_id}.stray{step}", e.task_id, run, "policy", it,
                        "simulate", e.traj_id, step, draw(outcome), step + draw(st.integers(0, 3)),
                    ))
        # evaluation rollouts (of any iteration, BC's included): never in the pool
        for c in range(draw(st.integers(0, 2))):
            task = draw(st.sampled_from(sorted(splits)))
            trajs.append(TrajSpec(
                f"{run}.eval{c}.{task}", task, run, "policy", draw(st.integers(0, MAX_ITERATION)),
                "eval", None, 0, draw(outcome), draw(st.integers(0, 6)),
            ))
    return Spec(splits, trajs, n_sims)


# --- METHOD.md's rules, brute force ----------------------------------------------------------------


def need_recover_found(spec: Spec, run: str, iteration: int) -> dict[tuple[str, int], int]:
    """{(expert_traj_id, step): first iteration <= N that found it} (METHOD.md 2.4)."""
    ran: dict[tuple, list[bool]] = defaultdict(list)
    for t in spec.trajs:
        if t.run_id == run and t.purpose in ("explore", "simulate") and t.iteration <= iteration:
            ran[(t.iteration, t.task_id, t.branch_traj_id, t.branch_step)].append(t.success)
    found: dict[tuple[str, int], int] = {}
    for e in spec.trajs:
        if e.source != "expert" or e.success or spec.splits[e.task_id] != "train":
            continue
        steps = checkpoints(e.n_steps, spec.n_sims[run])
        for it in range(iteration, -1, -1):  # downwards, so the earliest iteration wins
            for prev, step in zip([0, *steps], steps, strict=False):
                before = ran.get((it, e.task_id, None if prev == 0 else e.traj_id, prev))
                here = ran.get((it, e.task_id, e.traj_id, step))
                if before and any(before) and here and not any(here):
                    found[(e.traj_id, step)] = it
    return found


def pool(spec: Spec, run: str, iteration: int, method: str) -> list[TrajSpec]:
    out = [
        t for t in spec.trajs
        if t.success and spec.splits[t.task_id] == "train"
        and (t.source == "expert" or (t.run_id == run and t.purpose != "eval" and t.iteration <= iteration))
    ]
    return [t for t in out if t.branch_step == 0] if method == "rft" else out


def passes_through(state: tuple, t: TrajSpec) -> bool:
    kind, task, expert, step = state
    if kind == "initial":
        return t.task_id == task
    return t.branch_traj_id == expert and t.branch_step >= step


def expert_actions_after(state: tuple, t: TrajSpec) -> int:
    return (t.n_steps if t.source == "expert" else t.branch_step) - state[3]


def preference(state: tuple, t: TrajSpec) -> tuple:
    return (expert_actions_after(state, t), t.n_steps, t.iteration, t.traj_id)


# --- the property ----------------------------------------------------------------------------------


def build(path: Path, spec: Spec):
    con = open_store(path)
    insert_tasks(con, spec.splits)
    insert_trajectories(con, spec.trajs)
    for run in RUNS:
        selection.ensure_run(con, run, spec.n_sims[run])
    return con


def requests():
    for run in RUNS:
        yield run, 0, "bc"
        if run == RUNS[0]:  # the offline baselines read no run's own data: one run covers them
            yield run, 0, "sft-all"
            yield run, 0, "nat"
        for it in range(1, MAX_ITERATION + 1):
            yield run, it, "eef"
            yield run, it, "rft"


def check_views(con, spec: Spec) -> None:
    expected = {
        (run, e.traj_id, step)
        for run in RUNS
        for e in spec.trajs
        if e.source == "expert" and not e.success and spec.splits[e.task_id] == "train"
        for step in checkpoints(e.n_steps, spec.n_sims[run])
    }
    got = con.execute("SELECT run_id, expert_traj_id, step FROM expert_checkpoints").fetchall()
    assert len(got) == len(set(got)) and set(got) == expected
    for run in RUNS:
        for it in range(1, MAX_ITERATION + 1):
            found = need_recover_found(spec, run, it)
            view = con.execute(
                """SELECT expert_traj_id, step, min(iteration) FROM need_recover_states
                   WHERE run_id = $r AND iteration <= $i GROUP BY ALL""",
                {"r": run, "i": it},
            ).fetchall()
            assert {(e, k): i for e, k, i in view} == found
            splits, trajs = selection_reference.load(con)
            ref = selection_reference.need_recover_states(splits, trajs, run, it, spec.n_sims[run])
            assert {(e, k) for _, e, k in ref} == set(found)


def check_bc(spec: Spec, run: str, rows: list[Example]) -> None:
    expected = sorted(
        t.traj_id for t in spec.trajs
        if t.source == "expert" and t.success and spec.splits[t.task_id] == "train"
    )
    assert sorted(r.traj_id for r in rows) == expected
    for r in rows:
        assert (r.run_id, r.iteration, r.method, r.state_kind) == (run, 0, "bc", "expert_success")
        assert (r.loss_from_step, r.state_traj_id, r.state_step) == (0, None, 0)


def check_expert_data(con, spec: Spec, run: str, method: str, rows: list[Example]) -> None:
    """sft-all and nat: every expert trajectory of a train task once, its outcome as the state kind;
    nat's prompt tag is its outcome, sft-all has none."""
    experts = {t.traj_id: t for t in spec.trajs if t.source == "expert" and spec.splits[t.task_id] == "train"}
    assert sorted(r.traj_id for r in rows) == sorted(experts)
    for r in rows:
        kind = "expert_success" if experts[r.traj_id].success else "expert_failure"
        assert (r.run_id, r.iteration, r.method, r.state_kind) == (run, 0, method, kind)
        assert (r.loss_from_step, r.state_traj_id, r.state_step, r.task_id) == (0, None, 0, experts[r.traj_id].task_id)
    tags = dict(con.execute(
        "SELECT traj_id, prompt_tag FROM training_examples WHERE run_id = $r AND method = $m",
        {"r": run, "m": method}).fetchall())
    expected = {t: (None if method == "sft-all" else "positive" if e.success else "negative") for t, e in experts.items()}
    assert tags == expected


def check_selection(spec: Spec, run: str, iteration: int, method: str, rows: list[Example]) -> None:
    by_id = {t.traj_id: t for t in spec.trajs}
    candidates = pool(spec, run, iteration, method)
    pool_ids = {t.traj_id for t in candidates}
    found = need_recover_found(spec, run, iteration)
    experts = {t.traj_id: t for t in spec.trajs if t.source == "expert"}
    important = {("initial", task, None, 0) for task, split in spec.splits.items() if split == "train"}
    if method == "eef":
        important |= {("need_recover", experts[e].task_id, e, k) for e, k in found}

    chosen: dict[tuple, Example] = {}
    for r in rows:
        assert (r.run_id, r.iteration, r.method) == (run, iteration, method)
        state = (r.state_kind, r.task_id, r.state_traj_id, r.state_step)
        assert state not in chosen, f"two examples for {state}"
        chosen[state] = r
        assert state in important, f"{state} is not an important state"
        t = by_id[r.traj_id]
        # a success of a training task, in this run's pool as of this iteration
        assert t.success and spec.splits[t.task_id] == "train" and t.traj_id in pool_ids
        assert t.task_id == r.task_id
        assert t.source == "expert" or (t.run_id == run and t.purpose != "eval" and t.iteration <= iteration)
        # it passes through its state, and loss starts at the state
        assert passes_through(state, t)
        if r.state_kind == "need_recover":
            assert t.purpose == "simulate" and t.branch_traj_id == r.state_traj_id
            assert t.branch_step >= r.state_step
        assert r.loss_from_step == r.state_step
        # no expert action before a need-recover state it passes is ever supervised
        for (e, k) in found:
            if t.branch_traj_id == e and t.branch_step >= k:
                assert r.loss_from_step >= k, (
                    f"{t.traj_id} passes need-recover s{k} of {e} but is supervised from "
                    f"s{r.loss_from_step}: harmful actions before s{k} are learned"
                )
        if method == "rft":
            assert t.branch_step == 0 and r.state_kind == "initial"

    # every important state with a positive trajectory through it has exactly the best one
    for state in important:
        through = [t for t in candidates if passes_through(state, t)]
        if not through:
            assert state not in chosen, f"{state} has an example but no positive trajectory"
            continue
        assert state in chosen, f"{state} has positive trajectories but no example"
        best = min(through, key=lambda t: preference(state, t))
        got = by_id[chosen[state].traj_id]
        assert expert_actions_after(state, got) == min(expert_actions_after(state, t) for t in through)
        assert got.traj_id == best.traj_id


def all_examples(con) -> list[tuple]:
    return con.execute("SELECT * EXCLUDE (created_at) FROM training_examples ORDER BY ALL").fetchall()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=stores())
def test_selection_properties_on_random_stores(spec: Spec) -> None:
    with tempfile.TemporaryDirectory(prefix="eef-prop-") as tmp:
        con = build(Path(tmp) / "eef.duckdb", spec)
        try:
            check_views(con, spec)
            n_found = sum(len(need_recover_found(spec, run, MAX_ITERATION)) for run in RUNS)
            event(f"need-recover states: {min(n_found, 5)}{'+' if n_found >= 5 else ''}")
            first: dict[tuple, list[tuple]] = {}
            for run, it, method in requests():
                result = selection.select_examples(con, run, it, method, spec.n_sims[run])
                rows = selection.fetch_examples(con, run, it, method)
                assert result.n_examples == len(rows)
                # SQL rows == Python reference rows
                assert rows == reference_rows(con, run, it, method, spec.n_sims[run])
                examples = [Example(*row) for row in rows]
                if method == "bc":
                    check_bc(spec, run, examples)
                elif method in ("sft-all", "nat"):
                    check_expert_data(con, spec, run, method, examples)
                else:
                    check_selection(spec, run, it, method, examples)
                first[(run, it, method)] = rows
                if method == "eef":  # what the examples cover (see --hypothesis-show-statistics)
                    kinds = {ex.state_kind for ex in examples}
                    event(f"eef selects need-recover examples: {'need_recover' in kinds}")
            snapshot = all_examples(con)
            assert len(snapshot) == sum(len(rows) for rows in first.values())
            # rerunning select (in another order) changes nothing, row count included
            for run, it, method in reversed(list(requests())):
                selection.select_examples(con, run, it, method, spec.n_sims[run])
                assert selection.fetch_examples(con, run, it, method) == first[(run, it, method)]
            assert all_examples(con) == snapshot
        finally:
            con.close()

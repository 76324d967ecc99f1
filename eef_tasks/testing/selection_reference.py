"""A straightforward pure-Python implementation of METHOD.md's selection rules.

It shares no code with the SQL path on purpose: tests and the selection benchmark run both on the
same store and require identical rows, so each cross-checks the other. It is also the baseline
that `benchmarks/bench_select.py` measures the SQL path against.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Traj:
    traj_id: str
    task_id: str
    run_id: str | None
    source: str
    iteration: int
    purpose: str
    branch_traj_id: str | None
    branch_step: int
    success: bool
    n_steps: int


def load(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, str], list[Traj]]:
    """Task splits and all trajectories, as plain Python objects."""
    splits = dict(con.execute("SELECT task_id, split FROM tasks").fetchall())
    rows = con.execute(
        """SELECT traj_id, task_id, run_id, source, iteration, purpose, branch_traj_id,
                  branch_step, success, n_steps
           FROM trajectories"""
    ).fetchall()
    return splits, [Traj(*row) for row in rows]


def checkpoints(n_steps: int, n_sims: int) -> list[int]:
    """s_l, s_2l, …, s_Ml with l = max(1, T // (M+1)), only those with index < T."""
    spacing = max(1, n_steps // (n_sims + 1))
    return [m * spacing for m in range(1, n_sims + 1) if m * spacing < n_steps]


def bisection_probes(known: dict[int, bool], n_steps: int) -> list[int]:
    """The states a binary search simulates next (README, "Binary search"), given what it knows of
    one failed expert trajectory with `n_steps` actions in one iteration: {step: succeeded} for s0
    and the states simulated so far. s_T is known to fail."""
    points = {0: False, **{k: v for k, v in known.items() if 0 <= k < n_steps}, n_steps: False}
    steps = sorted(points)
    gaps = [(a, b) for a, b in zip(steps, steps[1:]) if b - a > 1]
    if any(points.values()):  # bisect every gap whose ends differ
        return [(a + b) // 2 for a, b in gaps if points[a] != points[b]]
    simulated = sum(1 for k in points if 0 < k < n_steps)
    if not gaps or simulated >= math.ceil(math.log2(n_steps)):
        return []
    a, b = max(gaps, key=lambda gap: (gap[1] - gap[0], -gap[0]))  # seek: the widest, earliest gap
    return [(a + b) // 2]


def binary_need_recover(known: dict[int, bool], n_steps: int) -> list[tuple[int, int]]:
    """(step, previous known step) of each simulated state that failed right after a success."""
    points = {0: False, **{k: v for k, v in known.items() if 0 <= k < n_steps}}
    steps = sorted(points)
    return [(b, a) for a, b in zip(steps, steps[1:]) if points[a] and not points[b]]


def need_recover_states(
    splits: dict[str, str], trajs: list[Traj], run_id: str, iteration: int, n_sims: int,
    search: str = "uniform",
) -> set[tuple[str, str, int]]:
    """(task_id, expert_traj_id, step) of every need-recover state found in iterations <= N."""
    # outcome[(iteration, task, branch_traj_id, branch_step)] = did any run from there succeed
    outcome: dict[tuple, bool] = {}
    for t in trajs:
        if (
            t.source == "policy"
            and t.run_id == run_id
            and t.purpose in ("explore", "simulate")
            and t.iteration <= iteration
        ):
            key = (t.iteration, t.task_id, t.branch_traj_id, t.branch_step)
            outcome[key] = outcome.get(key, False) or t.success
    iterations = sorted({key[0] for key in outcome})
    found = set()
    for e in trajs:
        if e.source != "expert" or e.success or splits.get(e.task_id) != "train":
            continue
        if search == "binary":
            for i in iterations:
                known = {k: ok for (it, task, branch, k), ok in outcome.items()
                         if it == i and ((k == 0 and task == e.task_id) or (k > 0 and branch == e.traj_id))}
                found |= {(e.task_id, e.traj_id, step) for step, _ in binary_need_recover(known, e.n_steps)}
            continue
        for i in iterations:
            previous = 0
            for step in checkpoints(e.n_steps, n_sims):
                if previous == 0:
                    before = outcome.get((i, e.task_id, None, 0))
                else:
                    before = outcome.get((i, e.task_id, e.traj_id, previous))
                here = outcome.get((i, e.task_id, e.traj_id, step))
                if before is True and here is False:
                    found.add((e.task_id, e.traj_id, step))
                previous = step
    return found


def select(
    splits: dict[str, str],
    trajs: list[Traj],
    run_id: str,
    iteration: int,
    method: str,
    n_sims: int,
    search: str = "uniform",
) -> list[tuple]:
    """Rows of training_examples (without created_at), sorted."""
    train = {task for task, split in splits.items() if split == "train"}
    if method == "bc":
        rows = [
            (run_id, 0, "bc", t.traj_id, 0, "expert_success", None, 0, t.task_id)
            for t in trajs
            if t.source == "expert" and t.success and t.task_id in train
        ]
        return sorted(rows, key=_sort_key)
    if method in ("sft-all", "nat"):
        rows = [
            (run_id, 0, method, t.traj_id, 0, "expert_success" if t.success else "expert_failure", None, 0,
             t.task_id)
            for t in trajs
            if t.source == "expert" and t.task_id in train
        ]
        return sorted(rows, key=_sort_key)

    pool = [
        t
        for t in trajs
        if t.success
        and t.task_id in train
        and (
            t.source == "expert"
            or (
                t.source == "policy"
                and t.run_id == run_id
                and t.purpose != "eval"
                and t.iteration <= iteration
            )
        )
    ]
    if method == "rft":
        pool = [t for t in pool if t.branch_step == 0]

    # best[state] = (preference key, trajectory); state = (kind, task, state_traj_id, step)
    best: dict[tuple, tuple] = {}

    def offer(state: tuple, expert_actions_after: int, t: Traj) -> None:
        key = (expert_actions_after, t.n_steps, t.iteration, t.traj_id)
        if state not in best or key < best[state][0]:
            best[state] = (key, t)

    for t in pool:
        offer(("initial", t.task_id, None, 0), t.n_steps if t.source == "expert" else t.branch_step, t)

    if method == "eef":
        by_branch: dict[str, list[Traj]] = defaultdict(list)
        for t in pool:
            if t.branch_traj_id is not None:
                by_branch[t.branch_traj_id].append(t)
        for task, expert_id, step in need_recover_states(splits, trajs, run_id, iteration, n_sims, search):
            for t in by_branch.get(expert_id, []):
                if t.branch_step >= step:
                    offer(("need_recover", task, expert_id, step), t.branch_step - step, t)

    rows = [
        (run_id, iteration, method, t.traj_id, step, kind, state_traj, step, task)
        for (kind, task, state_traj, step), (_, t) in best.items()
    ]
    return sorted(rows, key=_sort_key)


def _sort_key(row: tuple) -> tuple:
    # (state_kind, task_id, state_traj_id NULLS FIRST, state_step, traj_id)
    return (row[5], row[8], row[6] is not None, row[6] or "", row[7], row[3])


def sort_rows(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=_sort_key)

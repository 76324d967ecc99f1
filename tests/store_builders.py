"""Small helpers that build trajectory stores for the selection tests.

`StoreBuilder` writes through the project's own writer (`records.write_trajectories`) so that the
tests exercise the same path as importers and rollouts; `insert_trajectories` is the fast path
(one bulk INSERT, no steps) for the property tests, which build hundreds of stores.

`select_checked` is how every test selects: it runs the SQL path, reads the rows back, and
asserts that they equal the rows of the pure-Python reference on the same store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import duckdb
import polars as pl

from eef_tasks import selection, store
from eef_tasks.testing import selection_reference
from eef_tasks.testing.selection_reference import Traj
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord, write_trajectories

RUN = "run-1"


def open_store(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A write connection to a fresh (or existing) store, migrated to the current schema."""
    con = store.connect(path)
    store.migrate(con)
    return con


class Example(NamedTuple):
    """One row of `selection.fetch_examples`, with names."""

    run_id: str
    iteration: int
    method: str
    traj_id: str
    loss_from_step: int
    state_kind: str
    state_traj_id: str | None
    state_step: int
    task_id: str

    @property
    def state(self) -> tuple:
        return (self.state_kind, self.task_id, self.state_traj_id, self.state_step)


def run_n_sims(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    row = store.first_row(con, "SELECT n_sims FROM runs WHERE run_id = $r", {"r": run_id})
    assert row is not None, f"run {run_id!r} is not registered"
    return int(row[0])


def run_search(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    row = store.first_row(con, "SELECT search FROM runs WHERE run_id = $r", {"r": run_id})
    return (row[0] if row else None) or "uniform"


def reference_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str, n_sims: int
) -> list[tuple]:
    splits, trajs = selection_reference.load(con)
    row = store.first_row(con, "SELECT experts FROM runs WHERE run_id = $r", {"r": run_id})
    if row is not None and row[0] is not None:  # runs.experts: the run learns from these experts only
        names = dict(con.execute("SELECT traj_id, expert FROM trajectories WHERE source = 'expert'").fetchall())
        trajs = [t for t in trajs if t.source != "expert" or names[t.traj_id] in row[0]]
    return selection_reference.select(splits, trajs, run_id, iteration, method, n_sims, run_search(con, run_id))


def select_checked(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    iteration: int,
    method: str,
    n_sims: int | None = None,
    search: str | None = None,
) -> list[Example]:
    """Select with the SQL path; assert its rows equal the Python reference's; return them."""
    result = selection.select_examples(con, run_id, iteration, method, n_sims, search)
    rows = selection.fetch_examples(con, run_id, iteration, method)
    expected = reference_rows(con, run_id, iteration, method, run_n_sims(con, run_id))
    assert rows == expected, _diff(rows, expected)
    assert rows == selection_reference.sort_rows(rows), "fetch_examples is not in canonical order"
    assert result.n_examples == len(rows)
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row[5]] = kinds.get(row[5], 0) + 1
    assert result.by_kind == kinds
    return [Example(*row) for row in rows]


def _diff(sql_rows: list[tuple], ref_rows: list[tuple]) -> str:
    only_sql = sorted(set(sql_rows) - set(ref_rows), key=str)
    only_ref = sorted(set(ref_rows) - set(sql_rows), key=str)
    return f"SQL and reference disagree\n only SQL: {only_sql}\n only reference: {only_ref}"


def by_state(examples: Iterable[Example]) -> dict[tuple, Example]:
    """Examples keyed by their state; fails when a state has two examples."""
    out: dict[tuple, Example] = {}
    for ex in examples:
        assert ex.state not in out, f"two examples for state {ex.state}"
        out[ex.state] = ex
    return out


def initial(task_id: str) -> tuple:
    return ("initial", task_id, None, 0)


def need_recover(task_id: str, expert_traj_id: str, step: int) -> tuple:
    return ("need_recover", task_id, expert_traj_id, step)


class StoreBuilder:
    """Adds tasks and trajectories with explicit ids through `write_trajectories`.

    Simulations copy the replayed prefix from their expert trajectory's actions, as the pipeline
    stores them (CONTRACT.md: a simulation stores all its actions, the expert prefix included).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.tasks: dict[str, str] = {}
        self.actions: dict[str, list[str]] = {}

    def task(self, task_id: str, split: str = "train") -> str:
        write_trajectories(
            self.con,
            [],
            tasks=[TaskRecord(task_id=task_id, env="toy", split=split, instruction=f"solve {task_id}")],
        )
        self.tasks[task_id] = split
        return task_id

    def _write(self, traj_id: str, task_id: str, actions: list[str], success: bool, **fields) -> str:
        if task_id not in self.tasks:
            self.task(task_id)
        record = TrajectoryRecord(
            traj_id=traj_id,
            task_id=task_id,
            reward=1.0 if success else 0.25,
            steps=[StepRecord(action=a, observation=f"after {a}") for a in actions],
            **fields,
        )
        write_trajectories(self.con, [record])
        self.actions[traj_id] = actions
        return traj_id

    def expert(self, traj_id: str, task_id: str, n_steps: int, success: bool, expert: str = "gold",
               meta: dict | None = None) -> str:
        actions = [f"{traj_id}:a{k}" for k in range(n_steps)]
        return self._write(traj_id, task_id, actions, success, source="expert", expert=expert, meta=meta)

    def rollout(
        self,
        traj_id: str,
        task_id: str,
        iteration: int,
        success: bool,
        n_steps: int = 3,
        run_id: str = RUN,
        purpose: str = "explore",
    ) -> str:
        actions = [f"{traj_id}:p{k}" for k in range(n_steps)]
        return self._write(
            traj_id, task_id, actions, success, source="policy", model_id=f"{run_id}/it{iteration}",
            run_id=run_id, iteration=iteration, purpose=purpose,
        )

    def simulation(
        self,
        traj_id: str,
        expert_traj_id: str,
        step: int,
        iteration: int,
        success: bool,
        extra: int = 2,
        run_id: str = RUN,
    ) -> str:
        row = store.first_row(
            self.con, "SELECT task_id FROM trajectories WHERE traj_id = $e", {"e": expert_traj_id}
        )
        assert row is not None, f"unknown expert trajectory {expert_traj_id}"
        prefix = self.actions[expert_traj_id][:step]
        assert len(prefix) == step, "a simulation cannot replay more actions than the expert took"
        actions = prefix + [f"{traj_id}:p{k}" for k in range(extra)]
        return self._write(
            traj_id, row[0], actions, success, source="policy", model_id=f"{run_id}/it{iteration}",
            run_id=run_id, iteration=iteration, purpose="simulate",
            branch_traj_id=expert_traj_id, branch_step=step,
        )


# --- fast path for property tests -------------------------------------------------------------

# the reference implementation's own record of a trajectory serves as the test spec
TrajSpec = Traj


_SPEC_SCHEMA = {
    "traj_id": pl.String, "task_id": pl.String, "run_id": pl.String, "source": pl.String,
    "iteration": pl.Int32, "purpose": pl.String, "branch_traj_id": pl.String,
    "branch_step": pl.Int32, "success": pl.Boolean, "n_steps": pl.Int32,
}


def insert_tasks(con: duckdb.DuckDBPyConnection, splits: dict[str, str]) -> None:
    con.executemany(
        "INSERT INTO tasks (task_id, env, split, instruction) VALUES (?, 'toy', ?, 'goal')",
        [[task, split] for task, split in splits.items()],
    )


def insert_trajectories(con: duckdb.DuckDBPyConnection, trajs: list[TrajSpec]) -> None:
    """One bulk INSERT of trajectory rows (no steps: selection reads only `trajectories`)."""
    if not trajs:
        return
    frame = pl.DataFrame([dataclasses.asdict(t) for t in trajs], schema=_SPEC_SCHEMA)
    con.register("spec_frame", frame)
    try:
        con.execute(
            """INSERT INTO trajectories (traj_id, task_id, run_id, source, expert, model_id,
                   iteration, purpose, branch_traj_id, branch_step, reward, success, n_steps)
               SELECT traj_id, task_id, run_id, source,
                      CASE WHEN source = 'expert' THEN 'gold' END,
                      CASE WHEN source = 'policy' THEN run_id || '/it' || iteration END,
                      iteration, purpose, branch_traj_id, branch_step,
                      CASE WHEN success THEN 1.0 ELSE 0.0 END, success, n_steps
               FROM spec_frame"""
        ).fetchall()
    finally:
        con.unregister("spec_frame")

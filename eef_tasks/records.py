"""Trajectory records and the one transactional writer every producer uses.

Importers, expert collection and policy rollouts all build `TrajectoryRecord`s and hand them to
`write_trajectories`, which writes tasks, trajectories and steps in one transaction: a batch is
stored whole or not at all. A traj_id already in the store with the same content is skipped (so
reruns and resumed flows are idempotent); with different content it is an error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from eef_tasks.output import json_text
from eef_tasks.store import StoreError, first_row, transaction


# the store's INTEGER columns are 32-bit: larger values are refused here, not by a failing INSERT
INT32_MAX = 2**31 - 1


class StepRecord(BaseModel):
    """Action a_k taken in state s_k, and what the environment returned."""

    # NaN and ±inf are not rewards (nor valid JSON): refused for every producer
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    thought: str | None = None
    action: str
    observation: str
    reward: float | None = None


class TaskRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task_id: str = Field(min_length=1)
    env: str = Field(min_length=1)
    split: Literal["train", "dev", "test"]
    instruction: str
    max_steps: int | None = Field(default=None, gt=0, le=INT32_MAX)
    meta: dict[str, Any] | None = None


class TrajectoryRecord(BaseModel):
    """One trajectory with its steps: the unit of import, export and writing.

    `success` and `n_steps` are derived from `reward` and `steps`; when given they must agree.
    `env`, `split` and `instruction` (with the optional `task_max_steps` and `task_meta`) describe
    the task and are needed only when the task is not in the store yet. `run_n_sims` (a policy
    trajectory's run's M, as `eef export` writes it) registers the run when it is not in the store
    yet, with `run_search`, `run_method` and `run_experts` when given (runs.search, method, experts). Without a `traj_id` one is derived from the content, so that importing the same file
    twice stores each trajectory once.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    traj_id: str | None = Field(default=None, min_length=1)
    task_id: str = Field(min_length=1)
    env: str | None = None
    split: Literal["train", "dev", "test"] | None = None
    instruction: str | None = None
    task_max_steps: int | None = Field(default=None, gt=0, le=INT32_MAX)
    task_meta: dict[str, Any] | None = None
    run_id: str | None = None
    run_n_sims: int | None = Field(default=None, ge=0, le=INT32_MAX)
    run_search: Literal["uniform", "binary"] | None = None
    run_method: Literal["eef", "rft", "sft-all", "nat", "eto", "eef+dpo"] | None = None
    run_experts: list[str] | None = None
    source: Literal["expert", "policy"]
    expert: str | None = None
    model_id: str | None = None
    iteration: int = Field(default=0, ge=0, le=INT32_MAX)
    purpose: Literal["expert", "explore", "simulate", "eval"] | None = None
    branch_traj_id: str | None = None
    branch_step: int = Field(default=0, ge=0, le=INT32_MAX)
    reward: float = Field(ge=0.0, le=1.0)
    success: bool | None = None
    n_steps: int | None = None
    meta: dict[str, Any] | None = None
    steps: list[StepRecord]

    @model_validator(mode="after")
    def _consistent(self) -> TrajectoryRecord:
        if self.purpose is None:
            if self.source != "expert":
                raise ValueError("purpose is required for policy trajectories")
            self.purpose = "expert"
        if (self.source == "expert") != (self.purpose == "expert"):
            raise ValueError("source 'expert' goes with purpose 'expert' and only with it")
        if self.source == "expert" and (self.run_id is not None or self.iteration != 0):
            raise ValueError("expert trajectories have no run_id and iteration 0")
        if self.source == "policy" and not self.run_id:
            raise ValueError("policy trajectories belong to a run: run_id is required")
        if self.source != "policy" and any(v is not None for v in (self.run_n_sims, self.run_search,
                                                                   self.run_method, self.run_experts)):
            raise ValueError("run_n_sims, run_search, run_method and run_experts describe a policy trajectory's run: "
                             "expert trajectories have none")
        if self.success is None:
            self.success = self.reward == 1.0
        elif self.success != (self.reward == 1.0):
            raise ValueError(f"success={self.success} disagrees with reward={self.reward}")
        if self.n_steps is None:
            self.n_steps = len(self.steps)
        elif self.n_steps != len(self.steps):
            raise ValueError(f"n_steps={self.n_steps} but {len(self.steps)} steps are given")
        if (self.branch_step > 0) != (self.branch_traj_id is not None):
            raise ValueError("branch_traj_id and branch_step > 0 go together")
        if (self.purpose == "simulate") != (self.branch_step > 0):
            raise ValueError("simulations (and only they) have branch_step > 0")
        if self.branch_step > len(self.steps):
            raise ValueError(f"branch_step={self.branch_step} exceeds the {len(self.steps)} steps")
        if self.traj_id is None:
            self.traj_id = f"{self.source}-{self.content_hash()[:20]}"
        return self

    def content_hash(self) -> str:
        """Hash of what makes the trajectory itself (not its id or bookkeeping metadata)."""
        payload = {
            "task_id": self.task_id,
            "run_id": self.run_id,
            "source": self.source,
            "expert": self.expert,
            "model_id": self.model_id,
            "iteration": self.iteration,
            "purpose": self.purpose,
            "branch_traj_id": self.branch_traj_id,
            "branch_step": self.branch_step,
            "reward": self.reward,
            "steps": [s.model_dump() for s in self.steps],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def task(self) -> TaskRecord | None:
        if self.env is None or self.split is None or self.instruction is None:
            return None
        return TaskRecord(
            task_id=self.task_id, env=self.env, split=self.split, instruction=self.instruction,
            max_steps=self.task_max_steps, meta=self.task_meta,
        )


class RecordError(StoreError):
    """A record breaks a rule of the store; `traj_id` or `task_id` says which record, `field`
    which of its fields (importers turn that into the file's line)."""

    def __init__(self, message: str, *, field: str, traj_id: str | None = None, task_id: str | None = None):
        super().__init__(message)
        self.problem, self.field, self.traj_id, self.task_id = message, field, traj_id, task_id


@dataclass(frozen=True)
class WriteResult:
    tasks_added: int
    trajectories_added: int
    trajectories_skipped: int
    steps_added: int


def write_tasks(con: duckdb.DuckDBPyConnection, tasks: list[TaskRecord]) -> int:
    """Insert tasks not yet in the store (call inside a transaction); a clash is an error."""
    if not tasks:
        return 0
    unique: dict[str, TaskRecord] = {}
    for task in tasks:
        if task.task_id in unique and _task_key(unique[task.task_id]) != _task_key(task):
            raise RecordError(f"task {task.task_id!r} is given twice with different env/split/instruction",
                              field="task_id", task_id=task.task_id)
        unique[task.task_id] = task
    frame = pl.DataFrame(
        [
            {**t.model_dump(exclude={"meta"}), "meta": json_text(t.meta) if t.meta else None}
            for t in unique.values()
        ],
        schema={
            "task_id": pl.String, "env": pl.String, "split": pl.String, "instruction": pl.String,
            "max_steps": pl.Int32, "meta": pl.String,
        },
    )
    with registered(con, "new_tasks", frame):
        return _insert_new_tasks(con)


def _insert_new_tasks(con: duckdb.DuckDBPyConnection) -> int:
    clash = first_row(
        con,
        """SELECT k.task_id, k.env, k.split, n.env, n.split
           FROM tasks AS k JOIN new_tasks AS n ON n.task_id = k.task_id
           WHERE k.env <> n.env OR k.split <> n.split OR k.instruction <> n.instruction
           LIMIT 1""",
    )
    if clash:
        raise RecordError(
            f"task {clash[0]!r} is already stored as {clash[1]}/{clash[2]} with another "
            f"instruction or split than the new {clash[3]}/{clash[4]}", field="task_id", task_id=clash[0],
        )
    inserted = con.execute(
        """INSERT INTO tasks (task_id, env, split, instruction, max_steps, meta)
           SELECT task_id, env, split, instruction, max_steps, meta::JSON FROM new_tasks
           WHERE task_id NOT IN (SELECT task_id FROM tasks)"""
    ).fetchall()
    return int(inserted[0][0])


def _task_key(task: TaskRecord) -> tuple:
    return (task.env, task.split, task.instruction)


def write_trajectories(
    con: duckdb.DuckDBPyConnection,
    records: list[TrajectoryRecord],
    tasks: list[TaskRecord] | None = None,
    *,
    registered_runs: bool = False,
    n_sims: int | None = None,
) -> WriteResult:
    """Write tasks, trajectories and steps in one transaction (all or nothing).

    With `registered_runs` (the importer), every policy trajectory's run must be in `runs` or be
    registered here, in the same transaction, with its M: the record's `run_n_sims`, else
    `n_sims`. The pipeline registers its runs before it writes, so its writers need no check."""
    # tasks passed explicitly come last so that their max_steps/meta win over the bare task a
    # record describes (write_tasks keeps the last copy of equal tasks)
    tasks = [t for r in records if (t := r.task()) is not None] + list(tasks or [])
    seen: dict[str, str] = {}
    for r in records:
        digest = r.content_hash()
        if seen.get(r.traj_id, digest) != digest:
            raise RecordError(f"traj_id {r.traj_id!r} appears twice with different content",
                              field="traj_id", traj_id=r.traj_id)
        seen[r.traj_id] = digest
    unique = {r.traj_id: r for r in records}

    with transaction(con):
        tasks_added = write_tasks(con, tasks)
        stored = _stored_hashes(con, list(unique))
        for traj_id, digest in stored.items():
            if digest != seen[traj_id]:
                raise RecordError(
                    f"traj_id {traj_id!r} is already stored with different content; "
                    "give the new trajectory another id", field="traj_id", traj_id=traj_id,
                )
        new = [r for r in unique.values() if r.traj_id not in stored]
        missing = _missing_tasks(con, {r.task_id for r in new})
        if missing:
            raise RecordError(
                f"task {sorted(missing)[0]!r} is not in the store and the record does not describe "
                "it: give env, split and instruction (or import the tasks first)",
                field="task_id", task_id=sorted(missing)[0],
            )
        trajectories = pl.DataFrame(
            [_trajectory_row(r) for r in new], schema=_TRAJECTORY_SCHEMA
        )
        steps = pl.DataFrame(
            [
                {"traj_id": r.traj_id, "step": k, **s.model_dump()}
                for r in new
                for k, s in enumerate(r.steps)
            ],
            schema=_STEP_SCHEMA,
        )
        _insert_frame(con, "trajectories_frame", trajectories, _INSERT_TRAJECTORIES)
        _check_branches(con, [r.traj_id for r in new if r.purpose == "simulate"])
        if registered_runs:
            _register_runs(con, new, n_sims)
        _insert_frame(con, "steps_frame", steps, _INSERT_STEPS)
    return WriteResult(tasks_added, len(new), len(unique) - len(new), steps.height)


_BAD_BRANCH = """
SELECT sim.traj_id, sim.branch_traj_id,
    CASE
        WHEN expert.traj_id IS NULL THEN 'is not in the store (import the expert trajectory first)'
        WHEN expert.source <> 'expert' THEN 'is not an expert trajectory'
        WHEN expert.task_id <> sim.task_id THEN 'belongs to task ' || expert.task_id || ', not ' || sim.task_id
        WHEN expert.success THEN 'is a successful expert trajectory: simulations start from failed ones'
        WHEN sim.branch_step > expert.n_steps
            THEN 'has only ' || expert.n_steps || ' actions, fewer than branch_step ' || sim.branch_step
    END AS problem
FROM trajectories AS sim
LEFT JOIN trajectories AS expert ON expert.traj_id = sim.branch_traj_id
WHERE sim.traj_id IN (SELECT traj_id FROM new_simulations)
ORDER BY sim.traj_id
"""


def _check_branches(con: duckdb.DuckDBPyConnection, simulation_ids: list[str]) -> None:
    """A simulation replays a prefix of a failed expert trajectory of its own task (METHOD.md,
    step 2.2; the need-recover rule joins on it): checked once the batch is in, so a simulation may
    branch from an expert trajectory of the same batch."""
    if not simulation_ids:
        return
    frame = pl.DataFrame({"traj_id": simulation_ids}, schema={"traj_id": pl.String})
    with registered(con, "new_simulations", frame):
        bad = [row for row in con.execute(_BAD_BRANCH).fetchall() if row[2] is not None]
    if bad:
        traj_id, branch, problem = bad[0]
        raise RecordError(f"simulation {traj_id!r}: branch_traj_id {branch!r} {problem}",
                          field="branch_traj_id", traj_id=traj_id)


_TRAJECTORY_SCHEMA = {
    "traj_id": pl.String, "task_id": pl.String, "run_id": pl.String, "source": pl.String,
    "expert": pl.String, "model_id": pl.String, "iteration": pl.Int32, "purpose": pl.String,
    "branch_traj_id": pl.String, "branch_step": pl.Int32, "reward": pl.Float64,
    "success": pl.Boolean, "n_steps": pl.Int32, "meta": pl.String, "content_hash": pl.String,
}
_STEP_SCHEMA = {
    "traj_id": pl.String, "step": pl.Int32, "thought": pl.String, "action": pl.String,
    "observation": pl.String, "reward": pl.Float64,
}
_INSERT_TRAJECTORIES = """
INSERT INTO main.trajectories (traj_id, task_id, run_id, source, expert, model_id, iteration,
    purpose, branch_traj_id, branch_step, reward, success, n_steps, meta, content_hash)
SELECT traj_id, task_id, run_id, source, expert, model_id, iteration, purpose, branch_traj_id,
    branch_step, reward, success, n_steps, meta::JSON, content_hash
FROM trajectories_frame
"""
_INSERT_STEPS = """
INSERT INTO main.steps (traj_id, step, thought, action, observation, reward)
SELECT traj_id, step, thought, action, observation, reward FROM steps_frame
"""


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> Iterator[None]:
    """Make a polars frame queryable as `name` for the duration of the block."""
    con.register(name, frame)
    try:
        yield
    finally:
        con.unregister(name)


def _insert_frame(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame, sql: str) -> None:
    with registered(con, name, frame):
        con.execute(sql).fetchall()


def _register_runs(con: duckdb.DuckDBPyConnection, records: list[TrajectoryRecord], n_sims: int | None) -> None:
    """Register the runs of policy records, or refuse a record whose run cannot be registered:
    selection places a run's checkpoints by its M, so a run's rows never arrive without one."""
    declared: dict[str, tuple[int, TrajectoryRecord]] = {}
    for r in records:
        if r.run_id is None or r.run_n_sims is None:
            continue
        earlier = declared.setdefault(r.run_id, (r.run_n_sims, r))
        if earlier[0] != r.run_n_sims:
            raise RecordError(f"run {r.run_id!r} is given M = {earlier[0]} (trajectory {earlier[1].traj_id!r}) "
                              f"and M = {r.run_n_sims} here", field="run_n_sims", traj_id=r.traj_id)
    for r in records:
        if r.run_id is None:
            continue
        row = first_row(con, "SELECT n_sims, search FROM runs WHERE run_id = $r", {"r": r.run_id})
        if row is not None:
            if r.run_n_sims is not None and r.run_n_sims != row[0]:
                raise RecordError(f"run {r.run_id!r} is stored with M = {row[0]} simulations per failed "
                                  f"expert trajectory, not {r.run_n_sims}", field="run_n_sims", traj_id=r.traj_id)
            if r.run_search is not None and r.run_search != (row[1] or "uniform"):
                raise RecordError(f"run {r.run_id!r} is stored with search = {row[1]!r}, not {r.run_search!r}",
                                  field="run_search", traj_id=r.traj_id)
            continue
        m = declared[r.run_id][0] if r.run_id in declared else n_sims
        if m is None:
            raise RecordError(
                f"run {r.run_id!r} is not registered: give its M (simulations per failed expert "
                "trajectory) with `eef import --sims M`, or import a file written by `eef export`, "
                "which carries it as run_n_sims", field="run_id", traj_id=r.traj_id)
        first = declared[r.run_id][1] if r.run_id in declared else r  # the record that describes the run
        con.execute("INSERT INTO runs (run_id, n_sims, search, method, experts) VALUES ($r, $m, $s, $method, $e)",
                    {"r": r.run_id, "m": m, "s": first.run_search or "uniform", "method": first.run_method,
                     "e": first.run_experts})


def _trajectory_row(r: TrajectoryRecord) -> dict[str, Any]:
    row = r.model_dump(exclude={"steps", "env", "split", "instruction", "task_max_steps", "task_meta", "meta",
                                "run_n_sims", "run_search", "run_method", "run_experts"})
    row["meta"] = json_text(r.meta) if r.meta else None  # strict JSON (a NaN becomes null)
    row["content_hash"] = r.content_hash()
    return row


def _stored_hashes(con: duckdb.DuckDBPyConnection, traj_ids: list[str]) -> dict[str, str]:
    with registered(con, "new_ids", pl.DataFrame({"traj_id": traj_ids}, schema={"traj_id": pl.String})):
        return dict(con.execute(
            "SELECT traj_id, content_hash FROM trajectories WHERE traj_id IN (SELECT traj_id FROM new_ids)"
        ).fetchall())


def _missing_tasks(con: duckdb.DuckDBPyConnection, task_ids: set[str]) -> set[str]:
    if not task_ids:
        return set()
    frame = pl.DataFrame({"task_id": sorted(task_ids)}, schema={"task_id": pl.String})
    with registered(con, "new_task_ids", frame):
        present = {row[0] for row in con.execute(
            "SELECT task_id FROM tasks WHERE task_id IN (SELECT task_id FROM new_task_ids)"
        ).fetchall()}
    return task_ids - present

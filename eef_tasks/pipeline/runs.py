"""The run registry and phase bookkeeping: registering a run (its settings and task sets fixed from
then on, its method in `runs.method`), the order of an iteration's phases (`phases_of`, the one
home of that order), which phases finished (`run_phases`), and where each iteration's adapter is."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from eef_tasks import store
from eef_tasks.envs import registry
from eef_tasks.envs.base import EnvError
from eef_tasks.pipeline.errors import PipelineError
from eef_tasks.pipeline.settings import MUTABLE_SETTINGS, RunConfig
from eef_tasks.training import default_adapter_dir

PHASES = ("explore", "simulate", "select", "train", "dpo", "evaluate")
MODEL_PHASES = frozenset({"explore", "simulate", "train", "dpo", "evaluate"})  # hold the machine's model slot
BC_PHASES = ("select", "train", "evaluate")
# the phases of an iteration after BC, per method (phases_of)
_ITERATION_PHASES = {
    "eef": ("explore", "simulate", "select", "train", "evaluate"),
    "rft": ("explore", "select", "train", "evaluate"),
    "eef+dpo": ("explore", "simulate", "select", "train", "dpo", "evaluate"),
    "eto": ("explore", "dpo", "evaluate"),
}


# --- the run registry -----------------------------------------------------------------------------


def _as_registered(requested: dict, defaults: dict, key: str) -> Any:
    """Setting `key` of a registered run, with the defaults of fields it predates filled in."""
    value = requested.get(key, defaults.get(key))
    if isinstance(value, dict) and isinstance(defaults.get(key), dict):
        return {**defaults[key], **value}
    return value


def register_run(db: str | Path, config: RunConfig) -> RunConfig:
    """Create the run, or check that `config` matches the registered one (only MUTABLE_SETTINGS may
    change; they are updated). Task lists are resolved here once, so the run never changes task set.
    Returns the run's config as stored (task lists filled in)."""
    with store.writer(db) as con:
        row = store.first_row(con, "SELECT n_sims, config FROM runs WHERE run_id = $r", {"r": config.run_id})
        if row is not None and row[1] is not None:
            stored = RunConfig(**json.loads(row[1])["config"])
            requested = json.loads(row[1])["requested"]
            given = config.model_dump(mode="json")
            # a setting added to eef after the run was registered counts as its default there, in a
            # section too (a field added to train or dpo)
            defaults = RunConfig(run_id=config.run_id).model_dump(mode="json")
            changed = sorted(k for k in given if k not in MUTABLE_SETTINGS
                             and given[k] != _as_registered(requested, defaults, k))
            if changed:
                raise PipelineError(
                    f"run {config.run_id!r} exists with other settings ({', '.join(changed)}); "
                    "only " + ", ".join(sorted(MUTABLE_SETTINGS)) + " may change: start a new run instead"
                )
            updated = stored.model_copy(update={k: getattr(config, k) for k in MUTABLE_SETTINGS})
            _write_config(con, updated, requested)
            return updated
        if row is not None and row[0] != config.n_sims:
            raise PipelineError(
                f"run {config.run_id!r} was created (by `eef select`) with M = {row[0]}, not {config.n_sims}"
            )
        resolved = config.model_copy(update={
            "train_tasks": _train_tasks(con, config),
            "eval_tasks": _eval_tasks(config),
            "report_tasks": _report_tasks(config),
        })
        if not resolved.train_tasks:
            raise PipelineError(
                "no training tasks: the store has no expert trajectories on train-split tasks"
                + (f" named {', '.join(config.task_names)}" if config.task_names else "")
                + " — collect some first (`eef collect`)"
            )
        if not resolved.eval_tasks:
            raise PipelineError(f"no {config.eval_split} tasks to evaluate on"
                                + (f" named {', '.join(config.task_names)}" if config.task_names else ""))
        if row is None:
            con.execute("INSERT INTO runs (run_id, n_sims, method, search, experts) "
                        "VALUES ($r, $m, $method, $search, $experts)",
                        {"r": config.run_id, "m": config.n_sims, "method": config.method, "search": config.search,
                         "experts": config.experts or None})
        _write_config(con, resolved, config.model_dump(mode="json"))
        return resolved


def _write_config(con: Any, config: RunConfig, requested: dict) -> None:
    con.execute(
        "UPDATE runs SET config = $c, method = $method, search = $search, experts = $experts WHERE run_id = $r",
        {"r": config.run_id, "method": config.method, "search": config.search, "experts": config.experts or None,
         "c": json.dumps({"config": config.model_dump(mode="json"), "requested": requested})},
    )


def _train_tasks(con: Any, config: RunConfig) -> list[str]:
    """The given training tasks, else the store's train-split tasks of the run's task env that
    have expert data; narrowed by task name and limit (eef_tasks.envs.registry)."""
    ids = list(config.train_tasks) or [r[0] for r in con.execute(
        """SELECT DISTINCT task.task_id
           FROM tasks AS task
           JOIN trajectories AS traj USING (task_id)
           WHERE task.split = 'train' AND traj.source = 'expert' AND task.env = $env
             AND uses_expert($experts::VARCHAR[], traj.expert)
           ORDER BY task.task_id""",
        {"env": config.task_env, "experts": config.experts or None},
    ).fetchall()]
    try:
        return registry.narrow_tasks(config.env, ids, config.task_names, config.train_limit)
    except EnvError as exc:
        raise PipelineError(str(exc)) from None


def _eval_tasks(config: RunConfig) -> list[str]:
    """The given evaluation tasks (never training tasks), else the catalog's eval split."""
    try:
        if config.eval_tasks:
            return registry.check_eval_tasks(config.eval_tasks, config.eval_limit)
        return registry.eval_tasks(config.env, config.eval_split, config.task_names, config.eval_limit)
    except EnvError as exc:
        raise PipelineError(str(exc)) from None


def _report_tasks(config: RunConfig) -> list[str]:
    """The tasks of report_split (none without one): the given ones, else the catalog's, eval_limit of them."""
    if config.report_split is None:
        return []
    tasks = _eval_tasks(config.model_copy(update={"eval_split": config.report_split,
                                                  "eval_tasks": config.report_tasks}))
    if not tasks:
        raise PipelineError(f"no {config.report_split} tasks to report on"
                            + (f" named {', '.join(config.task_names)}" if config.task_names else ""))
    return tasks


def load_run(db: str | Path, run_id: str) -> RunConfig:
    with store.reader(db) as con:
        row = store.first_row(con, "SELECT config FROM runs WHERE run_id = $r", {"r": run_id})
    if row is None or row[0] is None:
        raise PipelineError(f"no pipeline run {run_id!r} in {db}: start it with `eef run` or the eef/rft flow")
    return RunConfig(**json.loads(row[0])["config"])


def store_id(db: str | Path) -> str:
    """The store file's random identity (part of Prefect cache keys)."""
    with store.writer(db) as con:
        return store.first_row(con, "SELECT value FROM store_info WHERE key = 'store_id'")[0]


# --- phase bookkeeping ------------------------------------------------------------------------------


def phases_of(iteration: int, config: RunConfig) -> tuple[str, ...]:
    """The phases of an iteration, in the order they run: the one home of that order."""
    if iteration == 0:
        return BC_PHASES
    if config.method not in _ITERATION_PHASES:  # sft-all, nat: iteration 0 only (RunConfig checks it)
        raise PipelineError(f"run {config.run_id!r} ({config.method}) has no iterations after iteration 0")
    return _ITERATION_PHASES[config.method]


def policy_phase(iteration: int, config: RunConfig) -> str:
    """The phase whose adapter is iteration `iteration`'s policy: dpo where the iteration has one, else train."""
    return "dpo" if "dpo" in phases_of(iteration, config) else "train"


def finished_phases(db: str | Path, run_id: str) -> dict[tuple[int, str], dict]:
    with store.reader(db) as con:
        rows = con.execute(
            "SELECT iteration, phase, summary FROM run_phases WHERE run_id = $r", {"r": run_id}
        ).fetchall()
    return {(int(i), p): (json.loads(s) if s else {}) for i, p, s in rows}


def next_iteration(db: str | Path, run_id: str) -> int | None:
    """The first iteration of the run with an unfinished phase, or None when all I are done."""
    config = load_run(db, run_id)
    done = finished_phases(db, run_id)
    for iteration in range(config.iterations + 1):
        if any((iteration, p) not in done for p in phases_of(iteration, config)):
            return iteration
    return None


def mark_phase(db: str | Path, run_id: str, iteration: int, phase: str, started: float, summary: dict) -> dict:
    """Record a finished phase (its summary and wall time) in `run_phases`."""
    summary = {**summary, "wall_s": round(time.time() - started, 2)}
    with store.writer(db) as con:
        con.execute(
            """INSERT OR REPLACE INTO run_phases (run_id, iteration, phase, started_at, summary)
               VALUES ($r, $i, $p, make_timestamp(($t * 1e6)::BIGINT), $s)""",
            {"r": run_id, "i": iteration, "p": phase, "t": started, "s": json.dumps(summary)},
        )
    return summary


def require_earlier_phases(db: str | Path, config: RunConfig, iteration: int, phase: str) -> None:
    """A PipelineError naming what must finish before `phase` of `iteration` may run."""
    done = finished_phases(db, config.run_id)
    order = phases_of(iteration, config)
    missing = [p for p in order[: order.index(phase)] if (iteration, p) not in done]
    if iteration > 0 and any((iteration - 1, p) not in done for p in phases_of(iteration - 1, config)):
        missing.insert(0, f"iteration {iteration - 1}")
    if missing:
        raise PipelineError(
            f"run {config.run_id!r} iteration {iteration}: {phase} needs {', '.join(missing)} first"
        )


def adapter_dir(config: RunConfig, iteration: int) -> Path:
    """Where iteration `iteration`'s adapter lives (iteration 0: the BC adapter)."""
    if iteration == 0 and config.bc_adapter:
        return Path(config.bc_adapter)
    return default_adapter_dir(config.run_id, iteration, config.train_method(iteration), config.adapters_dir)


def policy_adapter(db: str | Path, config: RunConfig, iteration: int) -> Path:
    """The adapter that iteration `iteration`'s train phase (dpo phase, where it has one) produced or
    carried over."""
    return phase_adapter(db, config, iteration, policy_phase(iteration, config))


def phase_adapter(db: str | Path, config: RunConfig, iteration: int, phase: str) -> Path:
    """The adapter that phase `phase` (train or dpo) of iteration `iteration` produced or carried over."""
    done = finished_phases(db, config.run_id).get((iteration, phase))
    if done is None:
        raise PipelineError(
            f"run {config.run_id!r}: iteration {iteration} has no trained adapter yet (its {phase} phase did not finish)"
        )
    return Path(done["adapter"])


def dpo_adapter_dir(config: RunConfig, iteration: int) -> Path:
    """Where iteration `iteration`'s dpo phase writes its adapter, e.g. data/adapters/RUN/dpo-it1."""
    return default_adapter_dir(config.run_id, iteration, "dpo", config.adapters_dir)

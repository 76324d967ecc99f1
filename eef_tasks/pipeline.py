"""The EEF and RFT pipelines as plain functions: one run, one iteration, one phase at a time.

A **run** is one experiment (METHOD.md): a method (`eef`, or `rft` = the same with M = 0), its
settings (`RunConfig`, kept in `runs.config` when the run is registered and fixed from then on),
and iterations 0..I. Iteration 0 is behaviour cloning; every later iteration `i` is

    explore   the policy of iteration i-1 from s0 of every training task (k samples: RFT×k)
    simulate  the same policy from the checkpoints of every failed expert trajectory (eef only)
    select    the iteration's training set (`eef select`: sql/select/*)
    train     a fresh LoRA adapter on it
    evaluate  the new adapter on the evaluation tasks (purpose 'eval')

Each phase function takes only references (store path, run id, iteration), reads what it needs
from the store, stores its output, and then records itself in `run_phases`. A phase recorded there
is never redone; a phase that was interrupted is simply run again, and because rollouts skip the
trajectories already stored, selection replaces its rows, and adapters are written atomically,
running it again never duplicates or loses anything. `next_iteration` reads the same table: a
scheduler can advance a run one iteration at a time from whatever the store holds.

`python -m eef_tasks.pipeline PHASE --db DB --run RUN --iteration N` runs one phase in its own
process (the Prefect flows do this for GPU work): it logs to stderr and reports progress and its
result as `@@progress {...}` / `@@result {...}` lines on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eef_tasks import store
from eef_tasks.errors import UserError
from eef_tasks.training import TrainConfig

logger = logging.getLogger(__name__)

PHASES = ("explore", "simulate", "select", "train", "evaluate")
MODEL_PHASES = frozenset({"explore", "simulate", "train", "evaluate"})  # hold the machine's model slot
BC_PHASES = ("select", "train", "evaluate")
# settings that may change between invocations of a registered run; every other setting is fixed
MUTABLE_SETTINGS = frozenset({"iterations", "workers", "engine", "vllm_url", "served_model", "max_failed_fraction"})


class PipelineError(UserError):
    """A phase cannot run or did not finish; the message says why and what to do."""


# --- settings -------------------------------------------------------------------------------------


class RunConfig(BaseModel):
    """Everything that defines a run. Defaults are METHOD.md's (I = 4, M = 5, 6 epochs, lr 5e-5,
    batch 64); presets (`PRESETS`) make small runs. Shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="name of the run (experiment)")
    method: Literal["eef", "rft"] = Field("eef", description="eef, or rft (the baseline: no simulations)")
    n_sims: int = Field(5, ge=0, le=50, description="M: simulations per failed expert trajectory (rft: 0)")
    samples: int = Field(1, ge=1, le=16, description="k: rollouts per training task and iteration (RFT×k)")
    iterations: int = Field(4, ge=0, le=50, description="I: iterations after behaviour cloning")
    env: Literal["scienceworld"] = "scienceworld"
    task_names: list[str] = Field(default_factory=list, description="restrict to these task names, e.g. find-plant; empty = all")
    train_tasks: list[str] = Field(default_factory=list, description="training task ids; empty = train tasks in the store with expert data")
    train_limit: int | None = Field(None, ge=1, description="at most this many training tasks")
    eval_split: Literal["dev", "test"] = Field("dev", description="split the adapters are evaluated on")
    eval_tasks: list[str] = Field(default_factory=list, description="evaluation task ids; empty = the catalog's eval_split")
    eval_limit: int | None = Field(None, ge=1, description="at most this many evaluation tasks")
    base_model: str | None = Field(None, description="local path or hub id; None = SmolLM2-135M-Instruct")
    bc_adapter: str | None = Field(None, description="use this behaviour-cloning adapter instead of training one")
    train: TrainConfig = Field(default_factory=TrainConfig)
    explore_temperature: float = Field(1.0, ge=0)
    eval_temperature: float = Field(0.0, ge=0, description="0 = greedy evaluation")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    max_steps: int | None = Field(None, ge=1, description="cap on each episode's step limit")
    seed: int = 0
    workers: int = Field(4, ge=1, le=64, description="concurrent episodes (one game process each)")
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: local transformers; vllm: a vLLM server")
    vllm_url: str | None = Field(None, description="vLLM server, e.g. http://vllm:8000/v1 (default $EEF_VLLM_URL)")
    served_model: str | None = Field(None, description="the base model's name on the vLLM server")
    adapters_dir: str = Field("data/adapters", description="adapters go to <adapters_dir>/<run>/<method>-it<i>")
    max_failed_fraction: float = Field(0.05, ge=0, le=1, description="episodes that may fail (crashed game) before a phase fails")

    @model_validator(mode="after")
    def _method_and_m(self) -> RunConfig:
        if self.method == "rft" and self.n_sims != 0:
            raise ValueError("rft runs have no simulations: n_sims must be 0")
        if self.method == "eef" and self.n_sims == 0:
            raise ValueError("eef needs n_sims >= 1 (n_sims = 0 is the rft baseline: method='rft')")
        return self


def _tiny_train() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=4, micro_batch=4, max_length=1024, learning_rate=5e-4)


# Presets: starting points for RunConfig (a run_id is added by the caller). `demo` is what the
# README's main command runs on a 2-core CPU in under 15 minutes; `paper` is METHOD.md's setting.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        iterations=1, n_sims=1, task_names=["lifespan-longest-lived"], train_limit=2, eval_limit=1,
        train=_tiny_train().model_dump(), max_new_tokens=24, max_steps=4, workers=2,
    ),
    "demo": dict(
        iterations=2, n_sims=2,
        task_names=["lifespan-longest-lived", "lifespan-shortest-lived", "lifespan-longest-lived-then-shortest-lived"],
        train_limit=5, eval_limit=3,
        train=TrainConfig(epochs=3, batch_size=4, micro_batch=4, max_length=1024, learning_rate=5e-4).model_dump(),
        max_new_tokens=24, max_steps=7, workers=4,
    ),
    "paper": dict(iterations=4, n_sims=5, samples=1, eval_split="test", workers=16),
}


def preset_config(preset: str, run_id: str, method: str = "eef", **overrides: Any) -> RunConfig:
    if preset not in PRESETS:
        raise PipelineError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], "run_id": run_id, "method": method, **overrides}
    if method == "rft":
        values["n_sims"] = 0
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise PipelineError(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "settings"
    return f"run settings, {where}: {problem['msg']}"


# --- the run registry -----------------------------------------------------------------------------


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
            changed = sorted(k for k in given if k not in MUTABLE_SETTINGS and given[k] != requested.get(k))
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
            "train_tasks": _resolve_train_tasks(con, config),
            "eval_tasks": _resolve_eval_tasks(config),
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
            con.execute("INSERT INTO runs (run_id, n_sims) VALUES ($r, $m)", {"r": config.run_id, "m": config.n_sims})
        _write_config(con, resolved, config.model_dump(mode="json"))
        return resolved


def _write_config(con: Any, config: RunConfig, requested: dict) -> None:
    con.execute(
        "UPDATE runs SET config = $c WHERE run_id = $r",
        {"r": config.run_id, "c": json.dumps({"config": config.model_dump(mode="json"), "requested": requested})},
    )


def _resolve_train_tasks(con: Any, config: RunConfig) -> list[str]:
    if config.train_tasks:
        ids = list(dict.fromkeys(config.train_tasks))
    else:
        ids = [r[0] for r in con.execute(
            """SELECT DISTINCT k.task_id FROM tasks AS k JOIN trajectories AS t USING (task_id)
               WHERE k.split = 'train' AND t.source = 'expert' AND k.env = $env ORDER BY k.task_id""",
            {"env": config.env},
        ).fetchall()]
    if config.task_names:
        from eef_tasks.envs.base import parse_task_id
        from eef_tasks.envs.scienceworld import task_filter

        wanted = task_filter(config.task_names)
        ids = [t for t in ids if parse_task_id(t)[1] in wanted]
    return ids[: config.train_limit] if config.train_limit else ids


def _resolve_eval_tasks(config: RunConfig) -> list[str]:
    """Evaluation tasks, never training tasks: ETO's ScienceWorld dev split shares 54 task/variation
    pairs with its train split; those count as train (a task has one split) and are left out."""
    from eef_tasks.envs.scienceworld import find_task
    from eef_tasks.evaluation import eval_tasks

    if not config.eval_tasks:
        return eval_tasks(config.eval_split, config.task_names or None, config.eval_limit)
    ids = list(dict.fromkeys(config.eval_tasks))
    leaked = [t for t in ids if find_task(t).split == "train"]
    if leaked:
        raise PipelineError(f"evaluation tasks must not be training tasks: {', '.join(leaked[:5])}")
    return ids[: config.eval_limit] if config.eval_limit else ids


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


# --- progress bookkeeping -------------------------------------------------------------------------


def phases_of(iteration: int, config: RunConfig) -> tuple[str, ...]:
    if iteration == 0:
        return BC_PHASES
    return PHASES if config.n_sims > 0 else tuple(p for p in PHASES if p != "simulate")


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


def _mark(db: str | Path, run_id: str, iteration: int, phase: str, started: float, summary: dict) -> dict:
    summary = {**summary, "wall_s": round(time.time() - started, 2)}
    with store.writer(db) as con:
        con.execute(
            """INSERT OR REPLACE INTO run_phases (run_id, iteration, phase, started_at, summary)
               VALUES ($r, $i, $p, make_timestamp(($t * 1e6)::BIGINT), $s)""",
            {"r": run_id, "i": iteration, "p": phase, "t": started, "s": json.dumps(summary)},
        )
    return summary


def adapter_dir(config: RunConfig, iteration: int) -> Path:
    """Where iteration `iteration`'s adapter lives (iteration 0: the BC adapter)."""
    if iteration == 0 and config.bc_adapter:
        return Path(config.bc_adapter)
    from eef_tasks.training import default_adapter_dir

    return default_adapter_dir(config.run_id, iteration, "bc" if iteration == 0 else config.method, config.adapters_dir)


def _policy_adapter(db: str | Path, config: RunConfig, iteration: int) -> Path:
    """The adapter that iteration `iteration`'s train phase produced (or carried over)."""
    done = finished_phases(db, config.run_id).get((iteration, "train"))
    if done is None:
        raise PipelineError(
            f"run {config.run_id!r}: iteration {iteration} has no trained adapter yet (its train phase did not finish)"
        )
    return Path(done["adapter"])


def _require(db: str | Path, config: RunConfig, iteration: int, phase: str) -> None:
    done = finished_phases(db, config.run_id)
    order = phases_of(iteration, config)
    missing = [p for p in order[: order.index(phase)] if (iteration, p) not in done]
    if iteration > 0 and any((iteration - 1, p) not in done for p in phases_of(iteration - 1, config)):
        missing.insert(0, f"iteration {iteration - 1}")
    if missing:
        raise PipelineError(
            f"run {config.run_id!r} iteration {iteration}: {phase} needs {', '.join(missing)} first"
        )


# --- the phases -----------------------------------------------------------------------------------

Progress = Callable[[int, int], None]


def run_phase(db: str | Path, run_id: str, iteration: int, phase: str, progress: Progress | None = None) -> dict:
    """Run one phase (skipped, with its stored summary, when it finished before)."""
    if phase not in PHASES:
        raise PipelineError(f"unknown phase {phase!r}: one of {', '.join(PHASES)}")
    config = load_run(db, run_id)
    if phase not in phases_of(iteration, config):
        raise PipelineError(f"run {run_id!r} has no {phase} phase in iteration {iteration}")
    if iteration > config.iterations:
        raise PipelineError(f"run {run_id!r} has {config.iterations} iterations, not {iteration}")
    done = finished_phases(db, run_id).get((iteration, phase))
    if done is not None:
        return {**done, "skipped": True}
    _require(db, config, iteration, phase)
    started = time.time()
    with gpu_slot() if phase in MODEL_PHASES else contextlib.nullcontext():
        summary = _PHASE_FUNCTIONS[phase](db, config, iteration, progress)
    return _mark(db, run_id, iteration, phase, started, summary)


@contextlib.contextmanager
def gpu_slot(path: str | Path | None = None, *, poll_s: float = 1.0):
    """Hold this machine's model slot: an exclusive lock on a file, so two model phases (from any
    flows or shells) never share a GPU — or, on CPU, the cores. The operating system releases the
    lock when the holder dies, even by SIGKILL, so a killed flow never leaves a stale slot behind.
    The file is $EEF_GPU_LOCK, else <cache>/locks/model-<CUDA_VISIBLE_DEVICES or 'all'>.lock."""
    import fcntl

    if path is None:
        from eef_tasks.models import cache_root

        devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_") or "none"
        path = os.environ.get("EEF_GPU_LOCK") or cache_root() / "locks" / f"model-{devices}.lock"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    logger.info("waiting for the model slot %s, held by %s", path, holder)
                    waited = True
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({' '.join(sys.argv[:6])})\n")
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rollouts(db, config: RunConfig, iteration: int, purpose: str, episodes, adapter: Path,
              temperature: float, progress: Progress | None) -> dict:
    from eef_tasks import rollout
    from eef_tasks.engines import SamplingConfig

    sampling = SamplingConfig(
        temperature=temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed,
    )
    total = len(episodes)
    on_progress = None
    if progress is not None:
        def on_progress(s):  # noqa: E306 - closure over progress
            progress(s.already_stored + s.ran + len(s.errors), total)
    summary = rollout.run_rollouts(
        db, config.run_id, iteration, episodes, purpose=purpose, engine_factory=lambda: _engine(config, adapter),
        model_id=f"{config.run_id}/{adapter.name}", sampling=sampling, n_workers=config.workers,
        max_steps=config.max_steps, on_progress=on_progress,
    )
    failed = len(summary.errors)
    if failed > config.max_failed_fraction * max(total, 1):
        raise PipelineError(
            f"{purpose} of run {config.run_id!r} iteration {iteration}: {failed} of {total} episodes failed "
            f"(first: {summary.errors[0][0]}: {summary.errors[0][1]}); the others are stored — rerun to retry them"
        )
    return {
        "requested": summary.requested, "already_stored": summary.already_stored, "written": summary.written,
        "successes": summary.successes, "errors": failed, "failed": [f"{k}: {w}" for k, w in summary.errors[:20]],
        "completion_tokens": summary.completion_tokens, "prefill_tokens": summary.prefill_tokens,
        "generate_s": round(summary.generate_s, 2), "adapter": str(adapter),
    }


def _engine(config: RunConfig, adapter: Path):
    if config.engine == "vllm":
        try:
            from eef_tasks.engines.vllm import VLLMEngine
        except ImportError as exc:  # pragma: no cover - until the vllm engine ships
            raise PipelineError(f"the vllm engine is not available: {exc}") from None
        url = config.vllm_url or os.environ.get("EEF_VLLM_URL")
        if not url:
            raise PipelineError("engine 'vllm' needs vllm_url (or $EEF_VLLM_URL)")
        return VLLMEngine(url, config.served_model or config.base_model, adapter_dir=adapter)
    from eef_tasks.engines.hf import HFEngine

    return HFEngine(config.base_model, adapter, max_batch_size=max(8, config.workers))


def _explore(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    from eef_tasks.rollout import explore_episodes

    episodes = explore_episodes(config.train_tasks, config.samples)
    return _rollouts(db, config, iteration, "explore", episodes, _policy_adapter(db, config, iteration - 1),
                     config.explore_temperature, progress)


def _simulate(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    from eef_tasks.rollout import simulation_episodes

    train = set(config.train_tasks)
    episodes = [e for e in simulation_episodes(db, config.run_id) if e.task_id in train]
    return _rollouts(db, config, iteration, "simulate", episodes, _policy_adapter(db, config, iteration - 1),
                     config.explore_temperature, progress)


def _select(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    from eef_tasks import selection

    method = "bc" if iteration == 0 else config.method
    with store.writer(db) as con:
        result = selection.select_examples(con, config.run_id, iteration, method)
        found = store.first_row(
            con, "SELECT count(DISTINCT (expert_traj_id, step)) FROM need_recover_states "
                 "WHERE run_id = $r AND iteration <= $i", {"r": config.run_id, "i": iteration},
        )[0]
    return {"method": method, "n_examples": result.n_examples, "by_kind": result.by_kind,
            "need_recover_states": int(found)}


def _example_keys(db, config: RunConfig, iteration: int, method: str) -> list[list]:
    with store.reader(db) as con:
        return [list(r) for r in con.execute(
            """SELECT traj_id, loss_from_step FROM training_examples
               WHERE run_id = $r AND iteration = $i AND method = $m ORDER BY traj_id, loss_from_step""",
            {"r": config.run_id, "i": iteration, "m": method},
        ).fetchall()]


def _train(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    from eef_tasks.training import read_train_record, train_adapter

    method = "bc" if iteration == 0 else config.method
    out = adapter_dir(config, iteration)
    if iteration == 0 and config.bc_adapter:
        if read_train_record(out) is None and not (out / "adapter_config.json").is_file():
            raise PipelineError(f"bc_adapter {out} is not an adapter folder")
        return {"adapter": str(out), "reused": True}
    keys = _example_keys(db, config, iteration, method)
    if not keys:  # nothing new to learn: keep the previous policy
        previous = _policy_adapter(db, config, iteration - 1) if iteration > 0 else None
        if previous is None:
            raise PipelineError(f"run {config.run_id!r}: the behaviour-cloning set is empty (no expert successes)")
        return {"adapter": str(previous), "carried_over": True, "n_examples": 0}
    record = read_train_record(out)
    if record is not None and sorted([e["traj_id"], e["loss_from_step"]] for e in record["examples"]) == keys:
        return {"adapter": str(out), "n_examples": record["n_examples"], "final_loss": record["final_loss"],
                "already_trained": True}
    info = train_adapter(db, config.run_id, iteration, method, out, config.train, base_model=config.base_model,
                         overwrite=True, progress=progress is None)
    return {"adapter": info.path, "n_examples": info.n_examples, "n_supervised_tokens": info.n_supervised_tokens,
            "n_optimizer_steps": info.n_optimizer_steps, "final_loss": info.final_loss, "train_s": info.wall_s}


def _evaluate(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    from eef_tasks.rollout import explore_episodes

    adapter = _policy_adapter(db, config, iteration)
    if iteration == 0 and config.bc_adapter:  # evaluated by the run that trained it
        return {"adapter": str(adapter), "reused": True}
    summary = _rollouts(db, config, iteration, "eval", explore_episodes(config.eval_tasks), adapter,
                        config.eval_temperature, progress)
    with store.reader(db) as con:
        row = store.first_row(
            con, """SELECT count(*), avg(success::INT), avg(reward) FROM trajectories
                    WHERE run_id = $r AND iteration = $i AND purpose = 'eval'""",
            {"r": config.run_id, "i": iteration},
        )
    return {**summary, "n_eval": int(row[0]), "win_rate": row[1], "mean_reward": row[2], "split": config.eval_split}


_PHASE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "explore": _explore, "simulate": _simulate, "select": _select, "train": _train, "evaluate": _evaluate,
}


def run_iteration(db: str | Path, run_id: str, runner: Callable[[str, int, str], dict] | None = None) -> dict | None:
    """Advance the run by one iteration (the next unfinished one); None when the run is complete.
    `runner(run_id, iteration, phase)` runs a phase (default: in this process)."""
    iteration = next_iteration(db, run_id)
    if iteration is None:
        return None
    runner = runner or (lambda r, i, p: run_phase(db, r, i, p))
    config = load_run(db, run_id)
    return {"iteration": iteration, **{p: runner(run_id, iteration, p) for p in phases_of(iteration, config)}}


# --- one phase in a child process -----------------------------------------------------------------

PROGRESS_PREFIX = "@@progress "
RESULT_PREFIX = "@@result "


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGKILL when the thread that started it dies (e.g. kill -9 of a flow)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_phase_process(
    db: str | Path, run_id: str, iteration: int, phase: str, *,
    on_log: Callable[[str], None] | None = None, on_progress: Callable[[int, int], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run one phase in a fresh Python process (`python -m eef_tasks.pipeline`), forwarding its log
    lines to `on_log` and its progress to `on_progress`; returns the phase summary. The child dies
    with its parent. A failing child raises PipelineError with the last lines of its log."""
    cmd = [sys.executable, "-m", "eef_tasks.pipeline", phase, "--db", str(db), "--run", run_id,
           "--iteration", str(iteration)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,
    )
    result: dict | None = None
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                if on_progress is not None:
                    done, total = json.loads(line[len(PROGRESS_PREFIX):])
                    on_progress(done, total)
                continue
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
                continue
            tail = (tail + [line])[-20:]
            if on_log is not None and line.strip():
                on_log(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0 or result is None:
        raise PipelineError(
            f"{phase} of run {run_id!r} iteration {iteration} failed (exit status {rc}):\n" + "\n".join(tail[-10:])
        )
    return result


def set_torch_threads(phase: str) -> None:
    """CPU threads for torch in a phase process: $EEF_TORCH_THREADS, else all cores for training and
    half of them for rollouts, whose game processes need the rest (on a 2-core machine, two torch
    threads beside the JVMs made generation ~5x slower than one)."""
    wanted = os.environ.get("EEF_TORCH_THREADS")
    n = int(wanted) if wanted else (os.cpu_count() or 1) if phase in ("train", "select") else max(1, (os.cpu_count() or 2) // 2)
    try:
        import torch

        torch.set_num_threads(max(1, n))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eef_tasks.pipeline", description="run one phase of a run")
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 1.0:
            last[0] = now
            print(PROGRESS_PREFIX + json.dumps([done, total]), flush=True)

    set_torch_threads(args.phase)
    try:
        summary = run_phase(args.db, args.run, args.iteration, args.phase, progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(RESULT_PREFIX + json.dumps(summary, default=str), flush=True)
    return 0


def config_hash(config: RunConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(main())

"""Rollouts on a Ray cluster: one phase's episodes fanned out in shards by Prefect's Ray task runner.

`run_rollouts_on_ray` is `rollout.run_rollouts` with the episodes spread over Ray workers:

1. **plan** (here, in the driver): the episodes not stored yet, with everything a worker needs to
   run them read from the store once (`rollout.plan_rollouts`): expert prefixes, step limits,
   task rows. The plan is split round-robin into shards (`RolloutPlan.split`).
2. **run** (on the workers): each shard is a Prefect task (`rollout shard`) that Prefect's
   `RayTaskRunner` places on a Ray worker; the worker makes its own engine (a vLLM client, or the
   local model on the GPU Ray gave it), its own game processes, runs its episodes with the same
   driver as a local phase (`rollout.execute_plan`) and returns the finished trajectories. Workers
   never open the store.
3. **write** (here): the one writer stores each shard's trajectories as the shard finishes, in
   one transaction per batch (DuckDB's single-writer rule holds).

A shard that dies (its worker killed, its machine gone) is run again, by Ray for a lost worker and
by Prefect's task retries for an error; a shard's trajectories reach the store only from the
attempt that finished, and ids are deterministic, so a retried or resumed phase neither loses nor
duplicates a row: stored ids are skipped at planning and again by the writer.

Selected by the run settings `runner=ray` (default `local`: `rollout.run_rollouts`, no Ray
needed), `ray_address` (`auto`: the cluster `ray start` made on this machine; `ray://host:10001`;
None: a Ray instance started for the phase), `ray_shards` and `ray_gpus_per_shard`.
Ray and prefect-ray are an optional extra: `pip install -e '.[ray]'`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eef_tasks.engines import Engine, SamplingConfig
from eef_tasks.errors import UserError
from eef_tasks.records import TrajectoryRecord
from eef_tasks.rollout import (
    PURPOSES, RolloutEpisode, RolloutPlan, RolloutSummary, TrajectoryWriter, execute_plan, plan_rollouts,
)

# counters a shard reports back and the driver adds up
_COUNTERS = ("ran", "successes", "failures", "generate_calls", "prompt_tokens", "prefill_tokens",
             "completion_tokens")
_SECONDS = ("generate_s",)


class DistributedError(UserError):
    """Ray is missing, the cluster cannot be reached, or a shard failed after its retries."""


@dataclass
class ShardOptions:
    """How a worker runs its shard (the same options as a local phase)."""

    engine_factory: Callable[[], Engine]
    sampling: SamplingConfig
    n_workers: int = 1
    env: str = "scienceworld"
    env_kwargs: dict[str, Any] | None = None
    max_steps: int | None = None
    max_invalid_in_a_row: int = 3
    batch_wait_s: float = 0.05
    retries: int = 2
    timeout_s: float = 600.0
    model_id: str | None = None
    prompt_tag: str | None = None


@dataclass
class ShardResult:
    """A finished shard: its trajectories (as plain dicts) and its counters."""

    shard: int
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    host: str = ""
    pid: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


class _Collector:
    """The worker's sink: keeps the finished trajectories to return them (never writes)."""

    def __init__(self) -> None:
        self.records: list[TrajectoryRecord] = []

    def add(self, record: TrajectoryRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass


def run_shard(index: int, plan: RolloutPlan, options: ShardOptions) -> ShardResult:
    """Run one shard's episodes in this process (on a Ray worker) and return their trajectories."""
    import socket

    summary = RolloutSummary(run_id=plan.run_id, iteration=plan.iteration, purpose=plan.purpose)
    engine = options.engine_factory()
    sink = _Collector()
    try:
        execute_plan(plan, sink, engine=engine, model_id=options.model_id, sampling=options.sampling,
                     n_workers=options.n_workers, pools=None, env=options.env, env_kwargs=options.env_kwargs,
                     max_steps=options.max_steps, max_invalid_in_a_row=options.max_invalid_in_a_row,
                     batch_wait_s=options.batch_wait_s, retries=options.retries, timeout_s=options.timeout_s,
                     on_progress=None, summary=summary, prompt_tag=options.prompt_tag)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    return ShardResult(index, [r.model_dump(mode="json") for r in sink.records], summary.as_dict(),
                       host=socket.gethostname(), pid=os.getpid(), errors=list(summary.errors))


def _require_ray() -> None:
    try:
        import prefect_ray  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise DistributedError(
            f"runner 'ray' needs Ray and prefect-ray ({exc.name} is not installed): "
            "pip install -e '.[ray]'") from None


def run_rollouts_on_ray(
    db: str | Path,
    run_id: str,
    iteration: int,
    episodes: Sequence[RolloutEpisode],
    *,
    purpose: str,
    options: ShardOptions,
    address: str | None = "auto",
    shards: int = 2,
    gpus_per_shard: float = 0.0,
    shard_retries: int = 2,
    batch_size: int = 50,
    on_progress: Callable[[RolloutSummary], None] | None = None,
) -> RolloutSummary:
    """`rollout.run_rollouts` with the episodes run in `shards` shards on a Ray cluster (see the
    module docstring); returns the summed summary. Resumable like a local phase."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    _require_ray()
    started = time.monotonic()
    summary = RolloutSummary(run_id=run_id, iteration=iteration, purpose=purpose)
    plan = plan_rollouts(db, run_id, iteration, purpose, episodes, summary)
    if on_progress is not None:
        on_progress(summary)
    batched = 0
    if plan.todo:
        out = TrajectoryWriter(db, plan.task_rows(), batch_size, summary)
        try:
            batched = _fan_out(plan.split(shards), options, out, summary, address=address, gpus_per_shard=gpus_per_shard,
                     shard_retries=shard_retries, on_progress=on_progress)
        finally:
            out.flush()
    summary.mean_batch_size = batched / summary.generate_calls if summary.generate_calls else 0.0
    summary.elapsed_s = time.monotonic() - started
    return summary


def ray_rollouts(address: str | None = "auto", shards: int = 2, gpus_per_shard: float = 0.0,
                 shard_retries: int = 2) -> Callable[..., RolloutSummary]:
    """A drop-in for `rollout.run_rollouts` that runs on a Ray cluster (`runner=ray`): the same
    arguments (an `engine_factory`, not an engine, since each worker makes its own), `n_workers`
    game processes in all, spread over the shards."""
    _require_ray()

    def run(db, run_id, iteration, episodes, *, purpose="explore", engine_factory=None, model_id=None,
            sampling=None, n_workers=1, max_steps=None, env="scienceworld", env_kwargs=None, on_progress=None,
            engine=None, model_path=None, adapter_dir=None, **local_only: Any) -> RolloutSummary:
        if engine is not None:
            raise DistributedError("runner 'ray': each worker makes its own engine; pass engine_factory")
        if engine_factory is None:
            from functools import partial

            from eef_tasks.engines.hf import HFEngine
            engine_factory = partial(HFEngine, model_path, adapter_dir)
        options = ShardOptions(engine_factory=engine_factory, sampling=sampling or SamplingConfig(),
                               n_workers=max(1, -(-n_workers // shards)), env=env, env_kwargs=env_kwargs,
                               max_steps=max_steps, model_id=model_id,
                               **{k: v for k, v in local_only.items() if k in ShardOptions.__dataclass_fields__})
        return run_rollouts_on_ray(db, run_id, iteration, episodes, purpose=purpose, options=options,
                                   address=address or None, shards=shards, gpus_per_shard=gpus_per_shard,
                                   shard_retries=shard_retries, on_progress=on_progress)

    return run


def _rotated(options: ShardOptions, shard: int) -> ShardOptions:
    """Shard i starts its slots on env server i mod n, so that the shards' slots cover the servers."""
    urls = (options.env_kwargs or {}).get("base_url")
    if not isinstance(urls, list | tuple) or len(urls) < 2:
        return options
    k = shard % len(urls)
    return dataclasses.replace(options, env_kwargs={**options.env_kwargs, "base_url": list(urls[k:]) + list(urls[:k])})


def _fan_out(parts: list[RolloutPlan], options: ShardOptions, out: TrajectoryWriter, summary: RolloutSummary, *,
             address: str | None, gpus_per_shard: float, shard_retries: int,
             on_progress: Callable[[RolloutSummary], None] | None) -> int:
    """Run the shards; write each one's trajectories as it finishes. Returns the model calls answered."""
    from prefect import flow, task
    from prefect.futures import as_completed
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    shard_task = task(run_shard, name="rollout shard", retries=shard_retries, retry_delay_seconds=1,
                      task_run_name=f"{summary.run_id} it{summary.iteration} {summary.purpose} shard {{index}}")
    init_kwargs = {"log_to_driver": False, "include_dashboard": False} if address is None else {"log_to_driver": False}
    runner = RayTaskRunner(address=address, init_kwargs=init_kwargs)

    @flow(name="rollout shards", flow_run_name=f"{summary.run_id} it{summary.iteration} {summary.purpose} on ray",
          task_runner=runner, log_prints=False, persist_result=False)
    def fan_out() -> int:
        batched = 0
        # Ray reruns a shard whose worker died (max_retries); Prefect reruns one that raised
        with remote_options(num_cpus=1, num_gpus=gpus_per_shard, max_retries=shard_retries):
            futures = [shard_task.submit(i, part, _rotated(options, i)) for i, part in enumerate(parts)]
        failed: list[str] = []
        for future in as_completed(futures):
            try:
                result: ShardResult = future.result()
            except Exception as exc:  # noqa: BLE001 - reported below, after the other shards are written
                failed.append(f"{type(exc).__name__}: {exc}")
                continue
            for row in result.records:
                out.add(TrajectoryRecord.model_validate(row))
            out.flush()
            batched += round(result.summary.get("mean_batch_size", 0.0)
                                           * result.summary.get("generate_calls", 0))
            for name in _COUNTERS:
                setattr(summary, name, getattr(summary, name) + int(result.summary.get(name, 0)))
            for name in _SECONDS:
                setattr(summary, name, getattr(summary, name) + float(result.summary.get(name, 0.0)))
            summary.errors.extend(tuple(e) for e in result.errors)
            if on_progress is not None:
                on_progress(summary)
        if failed:
            raise DistributedError(f"{len(failed)} of {len(parts)} rollout shards failed after their retries "
                                   f"(what finished is stored; rerun to resume): {failed[0]}")
        return batched

    return fan_out()

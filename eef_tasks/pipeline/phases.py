"""The phases of an iteration (METHOD.md step 2), each a function of references only (store path,
run id, iteration) that reads what it needs from the store, stores its output, and is recorded in
`run_phases` when it finished (`run_phase`); `run_iteration` runs the next unfinished iteration's
phases in the order `runs.phases_of` gives.

    explore   the policy of iteration i-1 from s0 of every training task (k samples: RFT×k)
    simulate  the same policy from the checkpoints of every failed expert trajectory (eef only; with
              search='binary', rounds of a bisection over each one's steps)
    select    the iteration's training set (`eef select`: sql/select/*)
    train     a fresh LoRA adapter on it
    dpo       (eef+dpo, eto) DPO with TRL on the iteration's preference pairs (eef_tasks.dpo): eef+dpo
              continues the train phase's adapter on the pairs of its important states, eto the
              previous iteration's policy on (expert success, failed exploration) pairs; its adapter
              is then the iteration's policy (`runs.policy_phase`)
    evaluate  the new adapter on the evaluation tasks (eef_tasks.evaluation, purpose 'eval')
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from eef_tasks import evaluation, interrupt, preferences, rollout, selection, store
from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.hf import HFEngine
from eef_tasks.envs import registry
from eef_tasks.pipeline.runs import (
    MODEL_PHASES,
    PHASES,
    adapter_dir,
    dpo_adapter_dir,
    finished_phases,
    load_run,
    mark_phase,
    next_iteration,
    phase_adapter,
    phases_of,
    policy_adapter,
    require_earlier_phases,
)
from eef_tasks.pipeline.errors import PipelineError
from eef_tasks.pipeline.settings import RunConfig
from eef_tasks.pipeline.slot import gpu_slot
from eef_tasks.training import read_train_record, train_adapter

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
    require_earlier_phases(db, config, iteration, phase)
    started = time.time()
    with interrupt.doing(f"{phase} of {run_id} iteration {iteration}"), \
            gpu_slot() if phase in MODEL_PHASES else contextlib.nullcontext():
        summary = PHASE_FUNCTIONS[phase](db, config, iteration, progress)
    return mark_phase(db, run_id, iteration, phase, started, summary)


def run_iteration(db: str | Path, run_id: str, runner: Callable[[str, int, str], dict] | None = None) -> dict | None:
    """Advance the run by one iteration (the next unfinished one); None when the run is complete.
    `runner(run_id, iteration, phase)` runs a phase (default: in this process)."""
    iteration = next_iteration(db, run_id)
    if iteration is None:
        return None
    runner = runner or (lambda r, i, p: run_phase(db, r, i, p))
    config = load_run(db, run_id)
    return {"iteration": iteration, **{p: runner(run_id, iteration, p) for p in phases_of(iteration, config)}}


# --- rollouts: explore, simulate (and evaluate, through eef_tasks.evaluation) --------------------------


def _sampling(config: RunConfig, temperature: float) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, top_p=config.top_p,
                                  max_new_tokens=config.max_new_tokens, seed=config.seed)


def _on_progress(progress: Progress | None, total: int):
    if progress is None:
        return None
    return lambda s: progress(s.already_stored + s.ran + len(s.errors), total)


def _rollout_summary(config: RunConfig, iteration: int, purpose: str, summary: rollout.RolloutSummary,
                     total: int, adapter: Path) -> dict:
    """The phase summary of a rollout phase; a PipelineError when too many episodes failed."""
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


def _rollouts(db, config: RunConfig, iteration: int, purpose: str, episodes, adapter: Path,
              progress: Progress | None) -> dict:
    with vllm_server(config, adapter) as server:
        summary = rollout_runner(config)(
            db, config.run_id, iteration, episodes, purpose=purpose, engine_factory=lambda: engine(config, adapter, server),
            model_id=f"{config.run_id}/{adapter.name}", sampling=_sampling(config, config.explore_temperature),
            n_workers=config.workers, max_steps=config.max_steps, on_progress=_on_progress(progress, len(episodes)),
            env=config.env, env_kwargs=registry.env_kwargs(config.env, config.env_url), prompt_tag=config.prompt_tag,
        )
    return {**_rollout_summary(config, iteration, purpose, summary, len(episodes), adapter), **server.summary}


def rollout_runner(config: RunConfig):
    """How the run's rollout phases run: `rollout.run_rollouts` here (runner=local), or in shards
    on a Ray cluster (runner=ray, `eef_tasks.distributed`)."""
    if config.runner == "ray":
        from eef_tasks.distributed import ray_rollouts  # Ray is an optional extra

        return ray_rollouts(config.ray_address, config.ray_shards, config.ray_gpus_per_shard)
    return rollout.run_rollouts


class PhaseServer(NamedTuple):
    """The vLLM server of a model phase: its URL and base model name (None: the run's settings), whether
    it serves the phase's adapter merged into its model (then no adapter is loaded at run time), and
    what the phase summary records about it."""

    url: str | None = None
    served_model: str | None = None
    summary: dict = {}
    merged: bool = False


def vllm_adapters(config: RunConfig) -> str:
    """How the phase's own vLLM server serves the adapter: the run's vllm_adapters, auto resolved by
    the venv's device (merged on CPU, where it measured faster; runtime LoRA on GPU)."""
    if config.vllm_adapters != "auto":
        return config.vllm_adapters
    from eef_tasks.engines.vllm_server import installed_device

    return "merged" if installed_device() == "cpu" else "runtime"


@contextlib.contextmanager
def vllm_server(config: RunConfig, adapter: Path | None = None) -> Iterator[PhaseServer]:
    """The vLLM server a model phase uses: the run's vllm_url (or $EEF_VLLM_URL), else, with engine
    'vllm', a server this phase process starts for the phase and stops after it (`make vllm`'s venv).
    One per phase, not per run: the train phase between needs the memory (on a GPU, vLLM holds most of
    it), and a server that is a child of the phase process dies with it, even by SIGKILL. It serves
    `adapter` as vllm_adapters says: runtime LoRA (rank = the run's), or merged into a checkpoint in a
    temporary folder (removed when the phase ends) served without LoRA, eager on CPU (a model served
    without LoRA is torch-compiled first otherwise: minutes). Nothing for engine 'hf'."""
    if config.engine != "vllm" or config.vllm_url or os.environ.get("EEF_VLLM_URL"):
        yield PhaseServer()
        return
    from eef_tasks.engines.vllm_server import (DEFAULT_SERVED_NAME, ServerSpec, installed_device, merge_adapter,
                                               serving)

    served_name = config.served_model or DEFAULT_SERVED_NAME
    if adapter is None or vllm_adapters(config) == "runtime":
        spec = ServerSpec.for_machine(config.base_model, lora_rank=config.train.lora_r, served_name=served_name)
        with serving(spec) as server:
            yield PhaseServer(server.url, spec.served_name, {"vllm_startup_s": round(server.startup_s or 0.0, 1),
                                                             "vllm_adapters": "runtime"})
        return
    with tempfile.TemporaryDirectory(prefix="eef-merged-") as work:
        merge_s = merge_adapter(config.base_model, adapter, Path(work) / "model")
        eager = ("--enforce-eager",) if installed_device() == "cpu" else ()
        spec = ServerSpec.for_machine(Path(work) / "model", lora_rank=None, served_name=served_name, extra_args=eager)
        with serving(spec) as server:
            yield PhaseServer(server.url, spec.served_name, {
                "vllm_startup_s": round(server.startup_s or 0.0, 1), "vllm_adapters": "merged",
                "vllm_merge_s": round(merge_s, 1)}, merged=True)


def engine(config: RunConfig, adapter: Path, server: PhaseServer = PhaseServer()):
    """The run's model engine for `adapter`: hf (in this process) or a vLLM server (the phase's
    own `server`, else the run's vllm_url or $EEF_VLLM_URL; a server that serves it merged loads no
    adapter)."""
    if config.engine == "vllm":
        from eef_tasks.engines.vllm import VLLMEngine  # the HTTP client; only runs on a vLLM server need it

        url = server.url or config.vllm_url or os.environ.get("EEF_VLLM_URL")
        if not url:
            raise PipelineError("engine 'vllm' needs vllm_url (or $EEF_VLLM_URL), or `make vllm` for a server of its own")
        return VLLMEngine(url, server.served_model or config.served_model or config.base_model,
                          adapter_dir=None if server.merged else adapter)
    return HFEngine(config.base_model, adapter, max_batch_size=max(8, config.workers))


def explore(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    episodes = rollout.explore_episodes(config.train_tasks, config.samples)
    return _rollouts(db, config, iteration, "explore", episodes, policy_adapter(db, config, iteration - 1), progress)


def simulate(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    train = set(config.train_tasks)
    adapter = policy_adapter(db, config, iteration - 1)
    if config.search == "binary":
        return _simulate_binary(db, config, iteration, adapter, train, progress)
    episodes = [e for e in rollout.simulation_episodes(db, config.run_id) if e.task_id in train]
    return _rollouts(db, config, iteration, "simulate", episodes, adapter, progress)


# a bisection of T steps simulates at most 3 * ceil(log2 T) states (sql/views/16_binary_search_probes.sql)
MAX_BINARY_ROUNDS = 64


def _simulate_binary(db, config: RunConfig, iteration: int, adapter: Path, train: set[str],
                     progress: Progress | None) -> dict:
    """Binary search (README, "Binary search"): rounds of simulations, each the states the bisection
    asks for next (`binary_search_probes`, computed from what is stored), until every search has
    ended. One engine serves every round. A rerun after a kill recomputes the next round from the
    stored simulations, so it resumes where the killed phase stopped."""
    with vllm_server(config, adapter) as server:
        return {**_binary_rounds(db, config, iteration, adapter, train, progress, server), **server.summary}


def _binary_rounds(db, config: RunConfig, iteration: int, adapter: Path, train: set[str],
                   progress: Progress | None, server: PhaseServer) -> dict:
    totals: dict[str, Any] = {"rounds": 0, "requested": 0, "already_stored": 0, "written": 0, "successes": 0,
                              "errors": 0, "failed": [], "completion_tokens": 0, "prefill_tokens": 0,
                              "generate_s": 0.0, "adapter": str(adapter)}
    model = None
    while episodes := [e for e in rollout.binary_search_episodes(db, config.run_id, iteration) if e.task_id in train]:
        if totals["rounds"] >= MAX_BINARY_ROUNDS:  # pragma: no cover - the rule ends far earlier
            raise PipelineError(f"binary search of run {config.run_id!r} iteration {iteration} did not end")
        model = model or engine(config, adapter, server)
        done = totals["written"]
        summary = rollout.run_rollouts(
            db, config.run_id, iteration, episodes, purpose="simulate", engine=model,
            model_id=f"{config.run_id}/{adapter.name}", sampling=_sampling(config, config.explore_temperature),
            n_workers=config.workers, max_steps=config.max_steps, env=config.env,
            env_kwargs=registry.env_kwargs(config.env, config.env_url), prompt_tag=config.prompt_tag,
            on_progress=None if progress is None else (lambda s: progress(done + s.ran, done + len(episodes))),
        )
        part = _rollout_summary(config, iteration, "simulate", summary, len(episodes), adapter)
        totals["rounds"] += 1
        for key in ("requested", "already_stored", "written", "successes", "errors", "completion_tokens",
                    "prefill_tokens", "generate_s"):
            totals[key] += part[key]
        totals["failed"] = (totals["failed"] + part["failed"])[:20]
        if summary.written == 0:  # only failed episodes this round: stop instead of asking again
            break
    totals["generate_s"] = round(totals["generate_s"], 2)
    return totals


def evaluate(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    """The adapter on eval_split's tasks (they choose the iteration), then, with a report_split, on
    that split's tasks too (they report it): every iteration is evaluated on both, by one server and
    one engine (the model loads once, and only if some episode is not stored yet)."""
    adapter = policy_adapter(db, config, iteration)
    if iteration == 0 and config.bc_adapter:  # evaluated by the run that trained it
        return {"adapter": str(adapter), "reused": True}
    with vllm_server(config, adapter) as server:
        shared_engine = functools.cache(lambda: engine(config, adapter, server))
        summary = _evaluate_split(db, config, iteration, adapter, config.eval_split, config.eval_tasks, progress,
                                  shared_engine)
        if config.report_split is not None:
            report = _evaluate_split(db, config, iteration, adapter, config.report_split, config.report_tasks,
                                     progress, shared_engine)
            summary.update({f"report_{key}": report[key] for key in ("n_eval", "win_rate", "mean_reward", "split")})
            for key in ("requested", "already_stored", "written", "successes", "errors", "completion_tokens",
                        "prefill_tokens"):
                summary[key] += report[key]
            summary["failed"] = (summary["failed"] + report["failed"])[:20]
        summary.update(server.summary)
    return summary


def _evaluate_split(db, config: RunConfig, iteration: int, adapter: Path, split: str, task_ids: list[str],
                    progress: Progress | None, engine_factory) -> dict:
    result = evaluation.evaluate_adapter(
        db, adapter, run_id=config.run_id, iteration=iteration, split=split, task_ids=task_ids,
        engine_factory=engine_factory, sampling=_sampling(config, config.eval_temperature),
        n_workers=config.workers, max_steps=config.max_steps, env=config.env,
        env_kwargs=registry.env_kwargs(config.env, config.env_url),
        on_progress=_on_progress(progress, len(task_ids)), prompt_tag=config.prompt_tag,
        rollouts=rollout_runner(config),
    )
    summary = _rollout_summary(config, iteration, "eval", result.rollouts, len(task_ids), adapter)
    return {**summary, "n_eval": result.n_tasks, "win_rate": result.win_rate, "mean_reward": result.mean_reward,
            "split": split}


# --- select, train --------------------------------------------------------------------------------


def select(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    method = config.train_method(iteration)
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


def train(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    method = config.train_method(iteration)
    out = adapter_dir(config, iteration)
    if iteration == 0 and config.bc_adapter:
        if read_train_record(out) is None and not (out / "adapter_config.json").is_file():
            raise PipelineError(f"bc_adapter {out} is not an adapter folder")
        return {"adapter": str(out), "reused": True}
    keys = _example_keys(db, config, iteration, method)
    if not keys:  # nothing new to learn: keep the previous policy
        previous = policy_adapter(db, config, iteration - 1) if iteration > 0 else None
        if previous is None:
            raise PipelineError(f"run {config.run_id!r}: the behaviour-cloning set is empty (no expert successes)")
        return {"adapter": str(previous), "carried_over": True, "n_examples": 0}
    record = read_train_record(out)
    if record is not None and sorted([e["traj_id"], e["loss_from_step"]]
                                     for e in record["examples"] + record.get("skipped", [])) == keys:
        return {"adapter": str(out), "n_examples": record["n_examples"], "final_loss": record["final_loss"],
                "n_skipped": record.get("n_skipped", 0), "already_trained": True}
    if config.train_processes > 1:
        from eef_tasks.data_parallel import train_in_processes

        info = train_in_processes(db, config.run_id, iteration, method, out, config.train,
                                  base_model=config.base_model, processes=config.train_processes)
    else:
        info = train_adapter(db, config.run_id, iteration, method, out, config.train, base_model=config.base_model,
                             overwrite=True, progress=progress is None)
    return {"adapter": info.path, "n_examples": info.n_examples, "n_supervised_tokens": info.n_supervised_tokens,
            "n_optimizer_steps": info.n_optimizer_steps, "final_loss": info.final_loss, "train_s": info.wall_s,
            "n_skipped": info.n_skipped}


def dpo(db, config: RunConfig, iteration: int, progress: Progress | None) -> dict:
    """DPO on the iteration's pairs (config.dpo_pairs), from the adapter it continues: the train phase's
    (eef+dpo) or the previous iteration's policy (eto). No pairs: that adapter stays the policy."""
    from eef_tasks.dpo import train_dpo  # TRL loads only in dpo phases

    method = config.dpo_pairs
    start = phase_adapter(db, config, iteration, "train") if "train" in phases_of(iteration, config) else \
        policy_adapter(db, config, iteration - 1)
    with store.reader(db) as con:
        keys = preferences.pair_rows(con, config.run_id, iteration, method)
    if not keys:
        return {"adapter": str(start), "carried_over": True, "n_pairs": 0, "pairs_from": method,
                "sft_adapter": str(start)}
    out = dpo_adapter_dir(config, iteration)
    record = read_train_record(out)
    if record is not None and record.get("pairs") == keys and record.get("sft_adapter") == str(start):
        return {"adapter": str(out), "n_pairs": record["n_pairs"], "final_loss": record["final_loss"],
                "pairs_from": method, "sft_adapter": str(start), "already_trained": True}
    info = train_dpo(db, config.run_id, iteration, out, sft_adapter=start, method=method,
                     base_model=config.base_model, config=config.dpo, overwrite=True)
    return {"adapter": info["path"], "n_pairs": info["n_pairs"], "pairs_from": method, "sft_adapter": str(start),
            "n_optimizer_steps": info["n_optimizer_steps"], "final_loss": info["final_loss"], "train_s": info["wall_s"]}


PHASE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "explore": explore, "simulate": simulate, "select": select, "train": train, "dpo": dpo, "evaluate": evaluate,
}

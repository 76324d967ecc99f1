"""Collect expert trajectories into the DuckDB store, resumably: the one collection driver.

    from eef_tasks.collect import collect_experts
    summary = collect_experts("data/eef.duckdb", expert="gold", split="train", n_workers=2)

Offline experts (gold or synthetic, `eef_tasks.experts`) run as pool jobs. An LLM expert (any
OpenAI-compatible endpoint, `eef_tasks.experts.llm`) is collected the same way with
`expert="llm", llm=LLMExpertConfig(name="gpt-4o", model="gpt-4o", ...)`: it is the pool's policy,
its trajectories are '<name>/<task_id>/<seed>' and carry token counts and cost in `meta`.

- Trajectory ids are deterministic ('gold/<task_id>', 'synthetic/<task_id>/<seed>'), and ids
  already in the store are skipped before anything runs, so a rerun or an interrupted run picks up
  where it stopped (replays are not byte-deterministic, so re-running a stored trajectory could
  give different content under the same id).
- Episodes run in a pool of environment workers (`n_workers`); gold paths come from the on-disk
  cache (`eef_tasks.experts.gold`) or are generated in the workers and cached as they arrive.
- Finished trajectories are written in batches through `records.write_trajectories`, with their
  tasks (env, split, instruction, max_steps); each batch is one transaction, on a write
  connection opened only for that batch (a DuckDB writer locks out every other process).
- An episode that fails for good (a JVM that keeps dying, a bad task id) is reported in the
  summary's `errors` and written nowhere.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eef_tasks.envs import registry
from eef_tasks.envs.base import EnvError, Split, TaskSpec
from eef_tasks.envs.pool import EnvPool
from eef_tasks.envs.scienceworld import DEFAULT_SIMPLIFICATIONS, SCIENCEWORLD_VERSION, package_catalog
from eef_tasks.experts import (
    EXPERTS,
    GOLD_EXPERT,
    ExpertRun,
    run_expert,
    task_record,
    to_record,
    traj_id_for,
)
from eef_tasks.experts.gold import GoldPath, generate_gold, load_gold, save_gold
from eef_tasks.experts.llm import (
    LLM_EXPERT,
    ChatClient,
    LLMExpert,
    LLMExpertConfig,
    LLMExpertError,
    cost_usd,
)
from eef_tasks.experts.synthetic import FAILURE_MODES, success_rate_of
from eef_tasks.records import TaskRecord, TrajectoryRecord, write_trajectories
from eef_tasks.store import StoreError, reader, writer

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50
# backends the offline experts (gold, synthetic) run on: eef's own ScienceWorld and WebShop
OFFLINE_TASK_ENVS = ("scienceworld", "webshop")


@dataclass
class CollectSummary:
    """What one `collect_experts` call did."""

    db_path: str
    env: str
    expert: str
    requested: int = 0  # trajectories asked for (tasks x seeds)
    already_stored: int = 0  # skipped because their traj_id was in the store before the run
    ran: int = 0  # episodes that finished in the environment
    written: int = 0  # trajectories inserted
    skipped_on_write: int = 0  # identical trajectory already stored (a concurrent collector)
    tasks_added: int = 0
    steps_added: int = 0
    successes: int = 0
    failures: int = 0
    gold_generated: int = 0
    batches: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (traj_id, why)
    elapsed_s: float = 0.0
    prompt_tokens: int = 0  # LLM expert: tokens sent and received (failed attempts included)
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.expert} expert on {self.env}: {self.requested} requested, "
            f"{self.already_stored} already stored, {self.ran} run "
            f"({self.successes} successes, {self.failures} failures), {self.written} written "
            f"in {self.batches} batches, {len(self.errors)} errors, "
            f"{self.gold_generated} gold paths generated, {self.elapsed_s:.1f} s"
        ) + (
            f", {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens "
            f"(${self.cost_usd:.4f})" if self.prompt_tokens or self.completion_tokens else ""
        )


def select_tasks(
    env: str = "scienceworld",
    *,
    task_ids: Iterable[str] | None = None,
    split: Split | Sequence[Split] | None = None,
    tasks: Iterable[str] | str | None = None,
    catalog: str = "eto",
    limit: int | None = None,
) -> list[TaskSpec]:
    """Catalog entries to collect: explicit `task_ids`, or a catalog ('eto' or 'package' for
    ScienceWorld, 'registry' for any env's: eef_tasks.envs.registry) filtered by split and task
    name; `limit` keeps the first N (after filtering)."""
    names = [tasks] if isinstance(tasks, str) else (list(tasks) if tasks is not None else None)
    if task_ids is not None:
        specs = [registry.find_task(t) for t in task_ids]
        wanted_splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        wanted_tasks = registry.task_name_filter(env, names)
        specs = [
            s for s in specs
            if (wanted_splits is None or s.split in wanted_splits)
            and (wanted_tasks is None or s.meta.get("task_name") in wanted_tasks)
        ]
    elif catalog == "registry" or (catalog == "eto" and registry.backend(env).task_env in OFFLINE_TASK_ENVS):
        # the env's registered catalog (ScienceWorld: ETO's split; WebShop: WebShop's own)
        specs = registry.catalog(env, split, names)
    elif catalog == "package" and registry.backend(env).task_env == "scienceworld":
        specs = package_catalog(split, tasks=tasks)
    else:
        raise EnvError(f"unknown catalog {catalog!r} for {env}: 'eto' (ETO's split) or 'package' for "
                       "ScienceWorld, 'registry' for any env's registered catalog")
    seen: set[str] = set()
    unique = [s for s in specs if not (s.task_id in seen or seen.add(s.task_id))]
    return unique[:limit] if limit is not None else unique


def stored_traj_ids(db_path: str | Path, expert: str) -> set[str]:
    """Trajectory ids of `expert` already in the store (none when there is no store yet)."""
    if not Path(db_path).exists():
        return set()
    try:
        with reader(db_path) as con:
            rows = con.execute(
                "SELECT traj_id FROM trajectories WHERE source = 'expert' AND expert = $expert",
                {"expert": expert},
            ).fetchall()
    except StoreError as exc:
        if "is not an eef store" in str(exc):
            return set()
        raise
    return {row[0] for row in rows}


def expert_job(env: Any, payload: dict[str, Any]) -> ExpertRun:
    """Pool job: run one offline expert trajectory (generating the gold path if not given)."""
    gold = GoldPath.from_json(payload["gold"]) if payload.get("gold") else None
    return run_expert(
        env, payload["task_id"], payload["expert"], seed=payload["seed"], gold=gold,
        max_steps=payload.get("max_steps"), success_rate=payload["success_rate"],
        failure_modes=tuple(payload["failure_modes"]) if payload.get("failure_modes") else None,
    )


def gold_job(env: Any, task_id: str) -> GoldPath:
    """Pool job: generate the gold path of a task."""
    return generate_gold(env, task_id)


def _keep_gold(gold: GoldPath, cache_dir: str | Path | None, summary: CollectSummary) -> GoldPath:
    """Cache a freshly generated gold path unless another one got there first (first one wins, so
    that every trajectory of a task derives from the cached path)."""
    summary.gold_generated += 1
    cached = load_gold(gold.task_id, gold.simplifications, cache_dir)
    if cached is not None:
        return cached
    save_gold(gold, cache_dir)
    return gold


def pending_episodes(
    db_path: str | Path, expert: str, specs: Sequence[TaskSpec], seeds: Sequence[int],
    summary: CollectSummary,
) -> list[tuple[TaskSpec, int]]:
    """The (task, seed) episodes whose trajectory is not stored yet; counts both in `summary`."""
    stored = stored_traj_ids(db_path, expert)
    todo = []
    for spec in specs:
        for seed in seeds:
            summary.requested += 1
            if traj_id_for(expert, spec.task_id, seed) in stored:
                summary.already_stored += 1
            else:
                todo.append((spec, seed))
    return todo


def write_batch(
    db_path: str | Path, records: list[TrajectoryRecord], task_rows: list[TaskRecord],
    summary: CollectSummary,
) -> None:
    """One batch of finished trajectories, in one transaction on a briefly opened writer."""
    with writer(db_path) as con:
        result = write_trajectories(con, records, task_rows)
    summary.batches += 1
    summary.written += result.trajectories_added
    summary.skipped_on_write += result.trajectories_skipped
    summary.tasks_added += result.tasks_added
    summary.steps_added += result.steps_added


def collect_experts(
    db_path: str | Path,
    env: str = "scienceworld",
    expert: str = GOLD_EXPERT,
    *,
    task_ids: Iterable[str] | None = None,
    split: Split | Sequence[Split] | None = None,
    tasks: Iterable[str] | str | None = None,
    catalog: str = "eto",
    limit: int | None = None,
    n_workers: int = 1,
    seed: int | Sequence[int] = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: str | Path | None = None,
    simplifications: str | None = None,
    success_rate: float | None = None,
    failure_modes: Sequence[str] | None = None,
    retries: int = 2,
    timeout_s: float = 600.0,
    progress: bool = True,
    pool: EnvPool | None = None,
    llm: Any = None,
) -> CollectSummary:
    """Run an offline expert ('gold' or 'synthetic') or, with `expert='llm'` and `llm` (an
    `LLMExpertConfig` or its dict), an LLM expert on tasks and store its trajectories.

    Tasks: `task_ids`, or the `catalog` ('eto': ETO's split; 'package': the game's own; for WebShop
    'eto' and 'registry' mean WebShop's split) filtered by `split` and `tasks` (task names), first
    `limit`. `seed` may be a list (the synthetic expert
    gives one trajectory per seed; the gold expert ignores it); `failure_modes` restricts the
    synthetic expert's failure modes (a different expert under the same trajectory ids: use a fresh
    store or other seeds). Resumable and idempotent: ids
    already stored are skipped. `pool` reuses running workers (its simplifications must match).
    """
    if expert == LLM_EXPERT:
        if llm is None:
            raise EnvError("expert='llm' needs llm=LLMExpertConfig(...) (model, base_url, name, ...)")
        return collect_llm(
            db_path, llm, env, task_ids=task_ids, split=split, tasks=tasks, catalog=catalog,
            limit=limit, n_workers=n_workers, seed=seed, batch_size=batch_size,
            simplifications=simplifications, retries=retries, timeout_s=timeout_s,
            progress=progress, pool=pool,
        )
    if expert not in EXPERTS:
        raise EnvError(
            f"unknown expert {expert!r}; offline experts: {', '.join(EXPERTS)}, or {LLM_EXPERT!r}"
        )
    if env not in OFFLINE_TASK_ENVS:
        raise EnvError(f"offline experts exist for {' and '.join(OFFLINE_TASK_ENVS)}, not {env!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    unknown = sorted(set(failure_modes or ()) - set(FAILURE_MODES))
    if unknown:
        raise EnvError(f"unknown synthetic failure modes {', '.join(unknown)}: one of {', '.join(FAILURE_MODES)}")
    if env == "webshop":  # its experts plan from the goal: no gold-path cache, no game settings
        simplifications = None
    else:
        simplifications = simplifications if simplifications is not None else DEFAULT_SIMPLIFICATIONS
    started = time.monotonic()
    summary = CollectSummary(db_path=str(db_path), env=env, expert=expert)
    specs = select_tasks(env, task_ids=task_ids, split=split, tasks=tasks, catalog=catalog, limit=limit)
    seeds = [0] if expert == GOLD_EXPERT else ([seed] if isinstance(seed, int) else list(seed))

    todo = pending_episodes(db_path, expert, specs, seeds, summary)
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        return summary

    out = _Batches(db_path, batch_size, summary)
    golds: dict[str, GoldPath | None] = {
        spec.task_id: load_gold(spec.task_id, simplifications, cache_dir) if simplifications is not None
        else None
        for spec, _ in todo
    }
    # A task with several trajectories to run and no cached gold path gets its path generated
    # first, so that all of them follow the same one (generation is not deterministic).
    runs_per_task = Counter(spec.task_id for spec, _ in todo)
    shared = [t for t, g in golds.items()
              if g is None and runs_per_task[t] > 1 and simplifications is not None]

    pool, own_pool = _pool_for(pool, min(n_workers, len(todo)), env, retries, timeout_s, simplifications)
    bar = _progress(progress and bool(shared), len(shared), "gold paths")
    try:
        for index, outcome in pool.map(gold_job, shared, timeout_s=timeout_s):
            if not isinstance(outcome, Exception):  # else its trajectories retry and report it
                golds[shared[index]] = _keep_gold(outcome, cache_dir, summary)
            bar.advance(f"generated {summary.gold_generated}")
        bar.close()
        bar = _progress(progress, len(todo), f"{expert} expert")

        payloads = [
            {
                "task_id": spec.task_id, "expert": expert, "seed": s,
                "gold": g.to_json() if (g := golds[spec.task_id]) else None,
                "max_steps": spec.max_steps, "success_rate": success_rate_of(expert, success_rate),
                "failure_modes": list(failure_modes) if failure_modes else None,
            }
            for spec, s in todo
        ]
        for index, outcome in pool.map(expert_job, payloads, timeout_s=timeout_s):
            spec, s = todo[index]
            if isinstance(outcome, Exception):
                summary.errors.append((traj_id_for(expert, spec.task_id, s), str(outcome)))
                logger.warning("%s on %s failed: %s", expert, spec.task_id, outcome)
            else:
                run: ExpertRun = outcome
                if run.new_gold is not None:
                    _keep_gold(run.new_gold, cache_dir, summary)
                summary.ran += 1
                # a synthetic expert's stated cost (eef_tasks/experts/synthetic.py); gold has none
                summary.prompt_tokens += int(run.meta.get("prompt_tokens") or 0)
                summary.completion_tokens += int(run.meta.get("completion_tokens") or 0)
                summary.cost_usd = round(summary.cost_usd + float(run.meta.get("cost_usd") or 0.0), 8)
                summary.successes += run.success
                summary.failures += not run.success
                out.add(to_record(run, spec, with_task=False), task_record(spec, run.instruction))
            bar.advance(
                f"ok {summary.successes} · failed {summary.failures} · errors {len(summary.errors)}"
            )
    finally:
        try:
            out.flush()  # finished trajectories are complete: keep them even when interrupted
        finally:
            bar.close()
            if own_pool:
                pool.close()
            summary.elapsed_s = time.monotonic() - started
    return summary


def collect_llm(
    db_path: str | Path,
    config: LLMExpertConfig | dict[str, Any],
    env: str = "scienceworld",
    *,
    task_ids: Iterable[str] | None = None,
    split: Split | Sequence[Split] | None = None,
    tasks: Iterable[str] | str | None = None,
    catalog: str = "eto",
    limit: int | None = None,
    n_workers: int = 1,
    seed: int | Sequence[int] = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    simplifications: str | None = None,
    retries: int = 2,
    timeout_s: float = 600.0,
    progress: bool = True,
    pool: EnvPool | None = None,
    client: ChatClient | None = None,
) -> CollectSummary:
    """Run the LLM expert on tasks and store every trajectory (`collect_experts(expert='llm')`
    calls this; `client`: a `ChatClient` to use). Resumable like the offline experts: traj_ids
    already stored are skipped before any request is made. Returns a `CollectSummary` with token
    and cost totals."""
    config = config if isinstance(config, LLMExpertConfig) else LLMExpertConfig.model_validate(config)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if env != "scienceworld":  # only eef's ScienceWorld driver takes game simplifications
        simplifications = None
    elif simplifications is None:
        simplifications = DEFAULT_SIMPLIFICATIONS
    started = time.monotonic()
    name = config.name
    assert name is not None
    summary = CollectSummary(db_path=str(db_path), env=env, expert=name)
    specs = select_tasks(env, task_ids=task_ids, split=split, tasks=tasks, catalog=catalog, limit=limit)
    seeds = [seed] if isinstance(seed, int) else list(seed)
    todo = pending_episodes(db_path, name, specs, seeds, summary)
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        return summary

    expert = LLMExpert(config, client=client)
    env_meta = {"simplifications": simplifications,
                "env_version": f"scienceworld=={SCIENCEWORLD_VERSION}" if env == "scienceworld" else None}
    out = _Batches(db_path, batch_size, summary)

    def cost() -> float:
        return cost_usd(summary.prompt_tokens, summary.completion_tokens, config.price_in, config.price_out)

    pool, own_pool = _pool_for(pool, min(n_workers, len(todo)), env, retries, timeout_s, simplifications)
    episodes = [expert.begin(traj_id_for(name, spec.task_id, s), spec, s) for spec, s in todo]
    by_key = {ep.key: spec for ep, (spec, _) in zip(episodes, todo, strict=True)}
    bar = _progress(progress, len(todo), f"{name} expert")
    results = pool.imap(episodes)
    try:
        for _, result in results:
            spec = by_key[result.key]
            episode = expert.episodes.get(result.key)
            if episode is not None:  # what it cost, the attempts lost to restarts included
                summary.prompt_tokens += episode.prompt_tokens + episode.discarded["prompt_tokens"]
                summary.completion_tokens += episode.completion_tokens + episode.discarded["completion_tokens"]
            if expert.fatal is not None:
                break
            if result.error is not None:
                why = expert.client.scrub(result.error)
                summary.errors.append((str(result.key), why))
                logger.warning("%s on %s failed: %s", name, spec.task_id, why)
                expert.episodes.pop(result.key, None)
            else:
                record = expert.record(result, spec, env_meta=env_meta)
                summary.ran += 1
                summary.successes += record.success
                summary.failures += not record.success
                out.add(record, task_record(spec, result.instruction))
            bar.advance(f"ok {summary.successes} · failed {summary.failures} · ${cost():.4f}")
    finally:
        results.close()
        try:
            out.flush()  # finished trajectories are complete: keep them even when interrupted
        finally:
            bar.close()
            expert.close()
            if own_pool:
                pool.close()
            summary.cost_usd = round(cost(), 8)
            summary.elapsed_s = time.monotonic() - started
    if expert.fatal is not None:
        raise LLMExpertError(
            f"{expert.fatal} — stopped after {summary.written} trajectories were stored; "
            "rerun to resume"
        ) from None
    return summary


def _pool_for(
    pool: EnvPool | None, n_workers: int, env: str, retries: int, timeout_s: float,
    simplifications: str | None,
) -> tuple[EnvPool, bool]:
    """The given pool (its simplifications must be the requested ones), or a new one; and whether
    it is ours to close. `simplifications=None`: an env without them (WebShop)."""
    if pool is None:
        kwargs = {} if simplifications is None else {"simplifications": simplifications}
        return EnvPool(n_workers, env, retries=retries, timeout_s=timeout_s, **kwargs), True
    if simplifications is not None and pool.env_kwargs.get("simplifications", DEFAULT_SIMPLIFICATIONS) != simplifications:
        raise EnvError("the given pool's simplifications differ from the requested ones")
    return pool, False


class _Batches:
    """Finished trajectories and their task rows, written `batch_size` at a time (`write_batch`)."""

    def __init__(self, db_path: str | Path, batch_size: int, summary: CollectSummary) -> None:
        self.db_path, self.batch_size, self.summary = db_path, batch_size, summary
        self.records: list[TrajectoryRecord] = []
        self.task_rows: list[TaskRecord] = []

    def add(self, record: TrajectoryRecord, task_row: TaskRecord) -> None:
        self.records.append(record)
        self.task_rows.append(task_row)
        if len(self.records) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.records:
            write_batch(self.db_path, self.records, self.task_rows, self.summary)
            self.records, self.task_rows = [], []


class _progress:
    """A rich progress bar (or nothing), with a status text."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._bar = None
        if not enabled:
            return
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:  # pragma: no cover
            return
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        )
        self._task = self._bar.add_task(label, total=total, status="")
        self._bar.start()

    def advance(self, status: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, status=status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


__all__ = [
    "CollectSummary", "collect_experts", "collect_llm", "expert_job", "gold_job", "pending_episodes",
    "select_tasks", "stored_traj_ids", "write_batch",
]

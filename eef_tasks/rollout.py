"""Policy rollouts: exploration, simulations and evaluation, through any engine.

Episodes are from `s0` ('explore' / 'eval') or simulations from `s_k` of an expert trajectory
('simulate': the expert's first `k` actions are replayed with the environment's own observations,
drift recorded in `meta.drift`). Each turn is the one agent loop (`eef_tasks.agent`); the model is
an engine (`eef_tasks.engines`: `hf` in this process, `vllm` on a server). Trajectories are stored
per CONTRACT.md with deterministic ids (`traj_id_for_rollout`) and resumably (stored ids are
skipped). Where simulations start is the `expert_checkpoints` view's rule (uniform search) or the
`binary_search_probes` view's (binary search, one round at a time), read, never restated.

`run_rollouts` reads top to bottom:

1. **plan** (`plan_rollouts` → a `RolloutPlan`; `_jobs`): the episodes' traj ids, the stored ones
   skipped; the expert prefixes and step limits of the others (read from the store once, so a plan
   runs anywhere: `eef_tasks.distributed` ships parts of it to Ray workers), then one engine
   session and one agent state each; steps 2–4 are `execute_plan`, which hands each finished
   trajectory to a sink (the writer here, a list on a Ray worker);
2. **keep N slots busy** (`_Slots`): one single-worker `EnvPool` per concurrent episode slot, each
   driven from its own thread; an episode's policy is its agent's turn, whose model calls wait in
   the `_Batcher`;
3. **batch the model calls** (`_drive`, `_answer`): the calling thread gathers the waiting calls
   (until every running episode waits, or a short wait passed) and answers them with one
   `engine.generate`;
4. **write** (`_record`, `TrajectoryWriter`): each finished episode becomes a trajectory record; records
   are written in batches, one transaction each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from eef_tasks.agent import AgentEpisode, step_limit, stop_reason
from eef_tasks.engines import Engine, Generation, SamplingConfig, Session, episode_seed
from eef_tasks.engines.hf import HFEngine
from eef_tasks.envs.base import EnvError
from eef_tasks.envs.pool import EnvPool, Episode, EpisodeResult, EpisodeView
from eef_tasks.envs.registry import find_task, task_env_of
from eef_tasks.experts import task_record
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord, write_trajectories
from eef_tasks.store import reader, writer

logger = logging.getLogger(__name__)

PURPOSES = ("explore", "simulate", "eval")


# --- episodes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutEpisode:
    """One episode to run: from s0 (`branch_traj_id=None`, `branch_step=0`) or a simulation from
    state `s_k` of expert trajectory `branch_traj_id` (`k = branch_step`). `sample` tells repeated
    episodes of the same start apart (RFT×k)."""

    task_id: str
    branch_traj_id: str | None = None
    branch_step: int = 0
    sample: int = 0

    def __post_init__(self) -> None:
        if (self.branch_traj_id is None) != (self.branch_step == 0):
            raise ValueError("branch_traj_id and branch_step > 0 go together")


def traj_id_for_rollout(run_id: str, iteration: int, purpose: str, episode: RolloutEpisode) -> str:
    """'<run>/it<i>/<purpose>/<task_id>/<branch_traj_id or s0>@<k>/<sample>'."""
    start = episode.branch_traj_id or "s0"
    return f"{run_id}/it{iteration}/{purpose}/{episode.task_id}/{start}@{episode.branch_step}/{episode.sample}"


def explore_episodes(task_ids: Iterable[str], n_samples: int = 1) -> list[RolloutEpisode]:
    """Episodes from the initial state of each task, `n_samples` each."""
    return [RolloutEpisode(t, sample=s) for t in task_ids for s in range(n_samples)]


def simulation_episodes(
    db: str | Path, run_id: str, n_sims: int | None = None, *, n_samples: int = 1
) -> list[RolloutEpisode]:
    """The simulation starts of a run: the `expert_checkpoints` view's rows for `run_id` (the
    run's own M), or, with `n_sims`, the view's rows for a run with M = `n_sims`. Read-only."""
    if n_sims is not None and n_sims <= 0:
        return []
    with reader(db) as con:
        if n_sims is not None:
            # The view reads M from `runs`; a temporary one-row `runs` (this connection only, it
            # shadows the stored table and writes nothing) applies the view's rule to M = n_sims.
            con.execute(
                "CREATE TEMP TABLE runs AS SELECT $run_id::VARCHAR AS run_id, $m::INTEGER AS n_sims, "
                "'uniform' AS search, NULL::VARCHAR[] AS experts",
                {"run_id": run_id, "m": int(n_sims)},
            )
        rows = con.execute(
            "SELECT task_id, expert_traj_id, step FROM expert_checkpoints WHERE run_id = $run_id "
            "ORDER BY task_id, expert_traj_id, step", {"run_id": run_id},
        ).fetchall()
    return [RolloutEpisode(t, e, int(k), s) for t, e, k in rows for s in range(n_samples)]


def binary_search_episodes(db: str | Path, run_id: str, iteration: int) -> list[RolloutEpisode]:
    """The next round of a binary-search run's simulations in `iteration`: the `binary_search_probes`
    view's rows (empty when every search of the iteration has ended). Read-only."""
    with reader(db) as con:
        rows = con.execute(
            "SELECT task_id, expert_traj_id, step FROM binary_search_probes WHERE run_id = $run_id "
            "AND iteration = $iteration ORDER BY task_id, expert_traj_id, step",
            {"run_id": run_id, "iteration": iteration},
        ).fetchall()
    return [RolloutEpisode(t, e, int(k)) for t, e, k in rows]


@dataclass
class RolloutSummary:
    run_id: str
    iteration: int
    purpose: str
    requested: int = 0
    already_stored: int = 0
    ran: int = 0
    written: int = 0
    skipped_on_write: int = 0
    successes: int = 0
    failures: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0
    generate_calls: int = 0
    mean_batch_size: float = 0.0
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    generate_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the driver -----------------------------------------------------------------------------------


def run_rollouts(
    db: str | Path,
    run_id: str,
    iteration: int,
    episodes: Sequence[RolloutEpisode],
    *,
    purpose: str = "explore",
    model_path: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    model_id: str | None = None,
    engine: Engine | None = None,
    sampling: SamplingConfig | None = None,
    n_workers: int = 1,
    pools: Sequence[EnvPool] | None = None,
    env: str = "scienceworld",
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    max_invalid_in_a_row: int = 3,
    batch_size: int = 50,
    batch_wait_s: float = 0.05,
    retries: int = 2,
    timeout_s: float = 600.0,
    on_progress: Callable[[RolloutSummary], None] | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    prompt_tag: str | None = None,
) -> RolloutSummary:
    """Run the policy on `episodes` and store every finished trajectory.

    `purpose`: 'explore' or 'eval' (episodes must start from s0), 'simulate' (episodes must have
    branch_step > 0: the expert trajectory's first k actions are replayed, with the observations
    the environment returns now). Concurrency: one environment slot per `EnvPool` in `pools`, or
    `n_workers` single-worker pools created here; all slots' model calls are batched together.
    `on_progress(summary)` is called once the stored episodes are counted and after each finished
    episode (progress bars, Prefect). Without `engine`, `engine_factory()` (default: an `HFEngine` of
    `model_path` + `adapter_dir`) makes one, only when some episode is left to run.
    `max_steps` caps the task's own step limit (model calls, invalid ones included, count against
    it, as for the LLM expert). Resumable: traj_ids already stored for `run_id` are skipped.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    for ep in episodes:
        if (purpose == "simulate") != (ep.branch_step > 0):
            raise ValueError(f"{ep}: purpose 'simulate' needs branch_step > 0, the others start from s0")
    sampling = sampling or SamplingConfig()
    started = time.monotonic()
    summary = RolloutSummary(run_id=run_id, iteration=iteration, purpose=purpose)

    # 1. plan
    plan = plan_rollouts(db, run_id, iteration, purpose, episodes, summary)
    if on_progress is not None:
        on_progress(summary)
    if not plan.todo:
        summary.elapsed_s = time.monotonic() - started
        return summary
    engine = engine or (engine_factory() if engine_factory else HFEngine(model_path, adapter_dir))
    # 2.-4. run them; write what finishes
    out = TrajectoryWriter(db, plan.task_rows(), batch_size, summary)
    try:
        execute_plan(plan, out, engine=engine, model_id=model_id, sampling=sampling, n_workers=n_workers,
                     pools=pools, env=env, env_kwargs=env_kwargs, max_steps=max_steps,
                     max_invalid_in_a_row=max_invalid_in_a_row, batch_wait_s=batch_wait_s, retries=retries,
                     timeout_s=timeout_s, on_progress=on_progress, summary=summary, prompt_tag=prompt_tag)
    finally:
        summary.elapsed_s = time.monotonic() - started
    return summary


@dataclass
class RolloutPlan:
    """What is left of a phase's episodes, with everything read from the store that running them
    needs (expert prefixes, step limits, task rows): a plan runs without opening the store, so a
    part of it can be shipped to another process or machine (`eef_tasks.distributed`)."""

    run_id: str
    iteration: int
    purpose: str
    todo: list[tuple[str, RolloutEpisode]]
    prefixes: dict[str, list[tuple[str | None, str, str]]]
    tasks: dict[str, tuple[int | None, TaskRecord | None]]

    def task_rows(self) -> list[TaskRecord]:
        return [row for _, row in self.tasks.values() if row is not None]

    def split(self, n: int) -> list[RolloutPlan]:
        """At most `n` non-empty plans sharing the episodes round-robin (each with what it needs)."""
        parts = [self.todo[i::n] for i in range(max(1, n))]
        return [RolloutPlan(
            self.run_id, self.iteration, self.purpose, part,
            {b: self.prefixes[b] for b in {ep.branch_traj_id for _, ep in part if ep.branch_traj_id}},
            {t: self.tasks[t] for t in {ep.task_id for _, ep in part}},
        ) for part in parts if part]


def plan_rollouts(
    db: str | Path, run_id: str, iteration: int, purpose: str, episodes: Sequence[RolloutEpisode],
    summary: RolloutSummary,
) -> RolloutPlan:
    """The episodes not stored yet (counted in `summary`) and what running them needs."""
    todo = _plan(db, run_id, iteration, purpose, episodes, summary)
    if not todo:
        return RolloutPlan(run_id, iteration, purpose, [], {}, {})
    prefixes = _load_prefixes(db, {ep.branch_traj_id for _, ep in todo if ep.branch_traj_id})
    tasks = _task_info(db, {ep.task_id for _, ep in todo})
    return RolloutPlan(run_id, iteration, purpose, todo, prefixes, tasks)


def execute_plan(
    plan: RolloutPlan, out: Any, *, engine: Engine, model_id: str | None, sampling: SamplingConfig,
    n_workers: int, pools: Sequence[EnvPool] | None, env: str, env_kwargs: dict[str, Any] | None,
    max_steps: int | None, max_invalid_in_a_row: int, batch_wait_s: float, retries: int, timeout_s: float,
    on_progress: Callable[[RolloutSummary], None] | None, summary: RolloutSummary, prompt_tag: str | None = None,
) -> None:
    """Run a plan's episodes: N slots kept busy, their model calls batched, each finished
    trajectory handed to `out.add` (and `out.flush()` at the end, whatever happens)."""
    model_id = model_id or (Path(engine.adapter_dir).name if engine.adapter_dir else Path(engine.model_path).name)
    jobs = _jobs(plan.todo, plan.prefixes, plan.tasks, engine, sampling, max_steps, max_invalid_in_a_row, summary,
                 prompt_tag)
    batcher = _Batcher()
    slots = _Slots(jobs, batcher, pools=pools, n_workers=n_workers, env=env, env_kwargs=env_kwargs,
                   retries=retries, timeout_s=timeout_s)
    make_record = partial(_record, run_id=plan.run_id, iteration=plan.iteration, purpose=plan.purpose,
                          model_id=model_id, engine=engine, sampling=sampling, summary=summary)
    batched = 0
    slots.start()
    try:
        batched = _drive(engine, sampling, slots, batcher, batch_wait_s, summary, make_record, out, on_progress)
    finally:
        batcher.close()
        slots.stop()
        try:
            out.flush()
        finally:
            slots.close()
            summary.mean_batch_size = batched / summary.generate_calls if summary.generate_calls else 0.0


@dataclass
class _Job:
    """One episode to run: its environment side (`episode`) and its agent and engine side."""

    traj_id: str
    start: RolloutEpisode
    session: Session
    agent: AgentEpisode
    episode: Episode


def _plan(
    db: str | Path, run_id: str, iteration: int, purpose: str, episodes: Sequence[RolloutEpisode],
    summary: RolloutSummary,
) -> list[tuple[str, RolloutEpisode]]:
    """The (traj_id, episode) pairs still to run: duplicates dropped, stored ones counted and skipped."""
    stored = _stored_ids(db, run_id)
    todo: list[tuple[str, RolloutEpisode]] = []
    seen: set[str] = set()
    for ep in episodes:
        traj_id = traj_id_for_rollout(run_id, iteration, purpose, ep)
        if traj_id in seen:
            continue
        seen.add(traj_id)
        summary.requested += 1
        if traj_id in stored:
            summary.already_stored += 1
        else:
            todo.append((traj_id, ep))
    return todo


def _jobs(
    todo: list[tuple[str, RolloutEpisode]],
    prefixes: dict[str, list[tuple[str | None, str, str]]],
    tasks: dict[str, tuple[int | None, TaskRecord | None]],
    engine: Engine, sampling: SamplingConfig, max_steps: int | None, max_invalid_in_a_row: int,
    summary: RolloutSummary, prompt_tag: str | None = None,
) -> list[_Job]:
    """A job per episode; an episode whose expert prefix is too short is an error, not a job."""
    jobs = []
    for traj_id, ep in todo:
        prefix = prefixes.get(ep.branch_traj_id, []) if ep.branch_traj_id else []
        if ep.branch_traj_id and len(prefix) < ep.branch_step:
            summary.errors.append((traj_id, f"{ep.branch_traj_id} has {len(prefix)} steps, fewer than {ep.branch_step}"))
            continue
        prefix = prefix[: ep.branch_step]
        limit = step_limit(tasks[ep.task_id][0], max_steps)
        if limit is not None and limit <= ep.branch_step:
            limit = ep.branch_step + 1  # a simulation always gets at least one policy step
        agent = AgentEpisode(task_env_of(ep.task_id), limit, max_invalid_in_a_row,
                             prefix_thoughts=[t for t, _, _ in prefix], prompt_tag=prompt_tag)
        jobs.append(_Job(
            traj_id=traj_id, start=ep, agent=agent,
            session=engine.session(traj_id, episode_seed(sampling.seed, traj_id)),
            episode=Episode(
                ep.task_id, actions=[a for _, a, _ in prefix],
                recorded_observations=[o for _, _, o in prefix] if prefix else None,
                max_steps=limit, key=traj_id,
            ),
        ))
    return jobs


class _Batcher:
    """Where the slots' model calls wait: an environment thread `ask`s and blocks; the calling
    thread `gather`s the waiting calls and answers each call's future."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[_Job, list[dict[str, str]], Future]] = queue.Queue()
        self.lock = threading.Lock()
        self.active = 0  # threads currently running an episode
        self.closed = False

    def ask(self, job: _Job, messages: list[dict[str, str]]) -> str:
        if self.closed:
            raise RuntimeError("the rollout driver stopped")
        future: Future = Future()
        self.requests.put((job, messages, future))
        return future.result().text

    def gather(
        self, wait_s: float, give_up: Callable[[], bool]
    ) -> list[tuple[_Job, list[dict[str, str]], Future]]:
        """The waiting calls, once every running episode waits or `wait_s` after the first came;
        [] as soon as `give_up()` while none waits."""
        pending: list[tuple[_Job, list[dict[str, str]], Future]] = []
        deadline = None
        while True:
            try:
                pending.append(self.requests.get(timeout=0.01))
                deadline = deadline or time.monotonic() + wait_s
            except queue.Empty:
                pass
            with self.lock:
                active = self.active
            if pending and (len(pending) >= active or time.monotonic() >= deadline):
                return pending
            if not pending and give_up():
                return pending

    def close(self) -> None:
        """No more answers: fail what is waiting, so that no environment thread hangs."""
        self.closed = True
        while True:
            try:
                _, _, future = self.requests.get_nowait()
            except queue.Empty:
                return
            if not future.done():
                future.set_exception(RuntimeError("the rollout driver stopped"))


def _turn(jobs: dict[str, _Job], batcher: _Batcher, view: EpisodeView) -> str | None:
    """An episode's policy: its agent's next turn, the model calls answered through the batcher."""
    job = jobs[view.key]
    if job.agent.restarted(view):  # the pool reran the episode from scratch
        job.agent.reset()
        job.session.reset()
    return job.agent.turn(view, partial(batcher.ask, job))


class _Slots:
    """N concurrent episode slots: threads taking jobs from one queue, each running them in its
    own single-worker `EnvPool` (given in `pools`, or made here and closed by `close`)."""

    def __init__(
        self, jobs: list[_Job], batcher: _Batcher, *, pools: Sequence[EnvPool] | None, n_workers: int,
        env: str, env_kwargs: dict[str, Any] | None, retries: int, timeout_s: float,
    ) -> None:
        self.batcher = batcher
        self.work: queue.Queue[_Job] = queue.Queue()
        policy = partial(_turn, {job.traj_id: job for job in jobs}, batcher)
        for job in jobs:
            job.episode.policy = policy
            self.work.put(job)
        self.results: queue.Queue[tuple[_Job, EpisodeResult]] = queue.Queue()
        self.failures: list[BaseException] = []
        self.own_pools = pools is None
        n = min(len(pools) if pools else n_workers, max(1, len(jobs)))
        self.pools: list[EnvPool] = list(pools[:n]) if pools else []
        kwargs = dict(env_kwargs or {})
        # several env servers (base_url a list): slot i plays on server i mod n
        self._urls = kwargs.pop("base_url", None)
        if self._urls is not None and not isinstance(self._urls, list | tuple):
            kwargs["base_url"], self._urls = self._urls, None
        self._make_pool = partial(EnvPool, 1, env, retries=retries, timeout_s=timeout_s, **kwargs)
        self.timeout_s = timeout_s
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True, name=f"eef-rollout-{i}")
                        for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def idle(self) -> bool:
        """Whether the driver should stop waiting for model calls: an episode finished, or no
        slot runs any more."""
        return not self.results.empty() or not self.alive()

    def _run(self, index: int) -> None:
        try:
            if self.own_pools:
                pool = self._make_pool(**({"base_url": self._urls[index % len(self._urls)]} if self._urls else {}))
                self.pools.append(pool)
            else:
                pool = self.pools[index]
            while True:
                try:
                    job = self.work.get_nowait()
                except queue.Empty:
                    return
                with self.batcher.lock:
                    self.batcher.active += 1
                try:
                    (result,) = pool.run([job.episode])
                finally:
                    with self.batcher.lock:
                        self.batcher.active -= 1
                self.results.put((job, result))
        except BaseException as exc:  # noqa: BLE001 - reported by the calling thread
            self.failures.append(exc)

    def stop(self) -> None:
        """The slots take no new episodes."""
        while True:
            try:
                self.work.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        if self.own_pools:
            for t in self.threads:
                t.join(timeout=self.timeout_s)
            for pool in self.pools:
                pool.close()


def _drive(
    engine: Engine, sampling: SamplingConfig, slots: _Slots, batcher: _Batcher, batch_wait_s: float,
    summary: RolloutSummary, make_record: Callable[[_Job, EpisodeResult], TrajectoryRecord | None],
    out: Any, on_progress: Callable[[RolloutSummary], None] | None,
) -> int:
    """Answer the slots' model calls in batches and write each finished episode, until every slot
    is done; the number of calls answered."""
    batched = 0
    while slots.alive() or not slots.results.empty() or not batcher.requests.empty():
        pending = batcher.gather(batch_wait_s, slots.idle)
        if pending:
            _answer(engine, sampling, pending, summary)
            batched += len(pending)
        while not slots.results.empty():
            record = make_record(*slots.results.get())
            if record is not None:
                out.add(record)
            if on_progress is not None:
                on_progress(summary)
    if slots.failures:
        raise slots.failures[0]
    return batched


def _answer(
    engine: Engine, sampling: SamplingConfig, pending: list[tuple[_Job, list[dict[str, str]], Future]],
    summary: RolloutSummary,
) -> None:
    """One `engine.generate` for the waiting calls; each call's future gets its reply (or the error)."""
    t0 = time.monotonic()
    try:
        gens: list[Generation] = engine.generate([(job.session, m) for job, m, _ in pending], sampling)
    except BaseException as exc:
        for _, _, fut in pending:
            fut.set_exception(exc)
        raise
    summary.generate_s += time.monotonic() - t0
    summary.generate_calls += 1
    for (_, _, fut), gen in zip(pending, gens, strict=True):
        fut.set_result(gen)


class TrajectoryWriter:
    """Finished trajectories, written `batch_size` at a time (one transaction on a brief writer)."""

    def __init__(self, db: str | Path, task_rows: list[TaskRecord], batch_size: int, summary: RolloutSummary) -> None:
        self.db, self.task_rows, self.batch_size, self.summary = db, task_rows, batch_size, summary
        self.buffer: list[TrajectoryRecord] = []

    def add(self, record: TrajectoryRecord) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        with writer(self.db) as con:
            res = write_trajectories(con, list(self.buffer), self.task_rows)
        self.summary.batches += 1
        self.summary.written += res.trajectories_added
        self.summary.skipped_on_write += res.trajectories_skipped
        self.buffer.clear()


def _record(
    job: _Job, result: EpisodeResult, *, run_id: str, iteration: int, purpose: str,
    model_id: str, engine: Engine, sampling: SamplingConfig, summary: RolloutSummary,
) -> TrajectoryRecord | None:
    """The finished episode as a policy trajectory (None, and an error counted, if it failed)."""
    session, agent, ep = job.session, job.agent, job.start
    summary.prompt_tokens += session.prompt_tokens
    summary.prefill_tokens += session.prefill_tokens
    summary.completion_tokens += session.completion_tokens
    if result.error is not None:
        summary.errors.append((job.traj_id, result.error))
        logger.warning("rollout %s failed: %s", job.traj_id, result.error)
        return None
    branch_step = min(ep.branch_step, result.n_prefix)
    if ep.branch_step and branch_step == 0:
        summary.errors.append((job.traj_id, "the expert prefix could not be replayed (episode ended)"))
        return None
    meta: dict[str, Any] = {
        "engine": engine.name,
        "model_path": engine.model_path,
        "adapter_dir": engine.adapter_dir,
        "sampling": {**asdict(sampling), "episode_seed": session.seed},
        "sample": ep.sample,
        "n_prefix": result.n_prefix,
        "drift": list(result.drift),
        "stop_reason": stop_reason(result, agent),
        "max_steps": agent.max_steps,
        "n_calls": agent.calls,
        "n_invalid": len(agent.invalid_replies),
        "invalid_replies": agent.invalid_replies,
        "invalid_steps": list(result.invalid),
        "prompt_tokens": session.prompt_tokens,
        "prefill_tokens": session.prefill_tokens,
        "completion_tokens": session.completion_tokens,
        "initial_observation": result.initial_observation,
        "attempts": result.attempts,
    }
    if agent.prompt_tag is not None:  # NAT's marker was in every prompt (chat.PROMPT_TAGS)
        meta["prompt_tag"] = agent.prompt_tag
    if getattr(engine, "served_model", None):  # the model name a server answered with (vllm)
        meta["served_model"] = engine.served_model
    if result.n_prefix < ep.branch_step:
        meta["prefix_incomplete"] = {"requested": ep.branch_step, "replayed": result.n_prefix}
    record = TrajectoryRecord(
        traj_id=job.traj_id, task_id=result.task_id, run_id=run_id, source="policy",
        model_id=model_id, iteration=iteration, purpose=purpose,
        branch_traj_id=ep.branch_traj_id if branch_step else None, branch_step=branch_step,
        reward=max(0.0, min(1.0, result.reward)), meta=meta,
        steps=[
            StepRecord(thought=t, action=a, observation=o, reward=r)
            for t, a, o, r in zip(agent.all_thoughts(result.n_prefix), result.actions, result.observations,
                                  result.rewards, strict=True)
        ],
    )
    summary.ran += 1
    summary.successes += bool(record.success)
    summary.failures += not record.success
    return record


# --- reading the store ----------------------------------------------------------------------------


def _load_prefixes(db: str | Path, traj_ids: set[str]) -> dict[str, list[tuple[str | None, str, str]]]:
    if not traj_ids:
        return {}
    out: dict[str, list[tuple[str | None, str, str]]] = {t: [] for t in traj_ids}
    with reader(db) as con:
        rows = con.execute(
            "SELECT traj_id, thought, action, observation FROM steps WHERE traj_id IN "
            "(SELECT unnest($ids)) ORDER BY traj_id, step", {"ids": sorted(traj_ids)},
        ).fetchall()
    for traj_id, thought, action, observation in rows:
        out[traj_id].append((thought, action, observation))
    return out


def _stored_ids(db: str | Path, run_id: str) -> set[str]:
    if not Path(db).exists():
        return set()
    with reader(db) as con:
        return {r[0] for r in con.execute(
            "SELECT traj_id FROM trajectories WHERE run_id = ?", [run_id]).fetchall()}


def _task_info(db: str | Path, task_ids: set[str]) -> dict[str, tuple[int | None, TaskRecord | None]]:
    """max_steps and (for tasks missing from the store) a task row, per task."""
    stored: dict[str, int | None] = {}
    if Path(db).exists():
        with reader(db) as con:
            stored = dict(con.execute(
                "SELECT task_id, max_steps FROM tasks WHERE task_id IN (SELECT unnest($ids))",
                {"ids": sorted(task_ids)},
            ).fetchall())
    out: dict[str, tuple[int | None, TaskRecord | None]] = {}
    for task_id in task_ids:
        try:  # the catalog of the task's env (eef_tasks.envs.registry)
            spec = find_task(task_id)
        except EnvError:
            spec = None
        limit = stored.get(task_id) if task_id in stored else None
        if limit is None and spec is not None:
            limit = spec.max_steps
        row = None
        if task_id not in stored and spec is not None and spec.instruction is not None:
            row = task_record(spec)
        out[task_id] = (limit, row)
    return out


__all__ = [
    "PURPOSES", "RolloutEpisode", "RolloutSummary", "explore_episodes", "run_rollouts",
    "simulation_episodes", "traj_id_for_rollout",
]

"""A pool of environment worker processes that run many episodes in parallel.

Each worker is a process holding one environment (for ScienceWorld: one JVM). The driver, in the
calling process, hands out work and never blocks on a single worker, so a worker that dies or hangs
is killed, replaced and its episode retried (or reported as failed) while the others go on.

    with EnvPool(n_workers=2) as pool:
        results = pool.run([
            Episode("scienceworld/find-plant/3", actions=gold_actions),          # an action list
            Episode("scienceworld/boil/12", policy=my_policy, max_steps=100),    # a policy
            Episode("scienceworld/boil/12", actions=expert[:8], policy=my_policy,
                    recorded_observations=expert_obs[:8]),                       # a simulation
        ])

An action list runs entirely inside the worker (one message per episode). A policy is called in
the driver process (so it may hold a model on the GPU and need not be picklable): it gets an
`EpisodeView` and returns the next action, or None to stop; each of its steps is one round trip to
the worker. `pool.map(fn, items)` runs any picklable `fn(env, item)` in the workers (gold-path
generation, expert collection).

Failures: a worker's call that overruns `timeout_s`, or a worker that dies, is killed (with its
JVM) and replaced; the episode is rerun from scratch up to `retries` more times. An episode that
still fails comes back as an `EpisodeResult` with `error` set (`pool.map` yields the exception),
never as a partial result presented as complete.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from eef_tasks import interrupt
from eef_tasks.envs.base import EnvCrashed, EnvError, find_drift

DEFAULT_TIMEOUT_S = 600.0
START_TIMEOUT_S = 120.0


# --- public types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeView:
    """What a policy sees: the task, and the episode so far (`observations[k]` follows
    `actions[k]`; the first `n_prefix` actions were replayed, not chosen by the policy)."""

    task_id: str
    instruction: str
    initial_observation: str
    actions: tuple[str, ...]
    observations: tuple[str, ...]
    rewards: tuple[float, ...]
    n_prefix: int
    key: Any = None


Policy = Callable[[EpisodeView], "str | None"]


@dataclass
class Episode:
    """One episode to run: replay `actions`, then (with a policy) continue until done, the policy
    returns None or `max_steps` actions in all were taken. `recorded_observations` (aligned with
    `actions`) turns on drift detection for the replayed part. `key` is returned untouched."""

    task_id: str
    actions: Sequence[str] = ()
    policy: Policy | None = None
    recorded_observations: Sequence[str] | None = None
    max_steps: int | None = None
    key: Any = None


@dataclass
class EpisodeResult:
    """A finished (or failed) episode. `rewards[k]`/`observations[k]` follow `actions[k]`;
    `reward` is the reward after the last action; `n_prefix` of the actions were replayed."""

    key: Any
    task_id: str
    instruction: str = ""
    initial_observation: str = ""
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    n_prefix: int = 0
    drift: list[int] = field(default_factory=list)
    attempts: int = 0
    elapsed_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def success(self) -> bool:
        return self.error is None and self.reward >= 1.0


class JobFailed(EnvError):
    """A pool job failed for good (after its retries); the message says why."""


# --- worker side -------------------------------------------------------------------------------


def make_env(env_name: str, env_kwargs: dict[str, Any]) -> Any:
    """Build an environment by name (the pool's workers call this): see eef_tasks.envs.make_env."""
    from eef_tasks.envs import make_env as make_named_env

    return make_named_env(env_name, **env_kwargs)


def _worker_main(conn: Connection, env_name: str, env_kwargs: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when workers stop
    # ... or its death does (its JVM follows: --die-on-broken-pipe). Polled, not a parent-death
    # signal: rollout slots start pools from threads that end before their pool does
    creator = mp.parent_process()
    interrupt.exit_with_parent(parent=creator.pid if creator is not None else None)
    try:
        env = make_env(env_name, env_kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc(), None))
        return
    conn.send(("ready", os.getpid(), getattr(env, "jvm_pid", None)))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message is None:
                return
            fn, arg = message
            try:
                result = fn(env, arg)
                conn.send(("ok", result, getattr(env, "jvm_pid", None)))
            except BaseException as exc:  # noqa: BLE001 - reported to the driver
                conn.send((
                    "error", type(exc).__name__, str(exc), traceback.format_exc(),
                    getattr(env, "jvm_pid", None),
                ))
    finally:
        try:
            env.close()
        except Exception:  # noqa: BLE001
            pass


# Worker-side functions (module level so that they pickle by reference).


def run_actions(env: Any, arg: tuple[str, list[str], list[str] | None, int | None]) -> dict[str, Any]:
    """Reset a task and replay an action list; the whole episode in one call."""
    task_id, actions, recorded, max_steps = arg
    replay = env.replay(actions, recorded, task_id=task_id, max_steps=max_steps)
    return {
        "instruction": replay.instruction,
        "initial_observation": replay.initial_observation,
        "observations": replay.observations,
        "rewards": replay.rewards,
        "invalid": [k for k, info in enumerate(replay.infos) if info.get("invalid")],
        "truncated": bool(replay.infos and replay.infos[-1].get("truncated")),
        "reward": replay.reward,
        "done": replay.done,
        "drift": replay.drift,
    }


def step_action(env: Any, action: str) -> dict[str, Any]:
    result = env.step(action)
    return {
        "observation": result.observation,
        "reward": result.reward,
        "done": result.done,
        "invalid": result.invalid,
        "truncated": bool(result.info.get("truncated")),
    }


def _kill_pid(pid: int | None) -> None:
    if not pid:
        return
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        cmdline = b"java"  # not on Linux, or already gone
    if b"java" not in cmdline and b"py4j" not in cmdline:
        return  # the pid was reused by something else
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class _Request:
    fn: Callable[[Any, Any], Any]
    arg: Any
    timeout_s: float


class _Worker:
    def __init__(self, ctx: Any, env_name: str, env_kwargs: dict[str, Any], index: int) -> None:
        self.index = index
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child, env_name, env_kwargs), daemon=True,
            name=f"eef-env-worker-{index}",
        )
        self.process.start()
        child.close()
        self.jvm_pid: int | None = None
        self.ready = False
        self.deadline = time.monotonic() + START_TIMEOUT_S
        self.job: _Job | None = None

    def send(self, request: _Request) -> None:
        self.conn.send((request.fn, request.arg))
        self.deadline = time.monotonic() + request.timeout_s

    def kill(self) -> None:
        _kill_pid(self.jvm_pid)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


# --- jobs: generators that yield requests and receive replies -----------------------------------

JobFactory = Callable[[], Generator[_Request, Any, Any]]


@dataclass
class _Job:
    index: int
    factory: JobFactory
    attempts: int = 0
    gen: Generator[_Request, Any, Any] | None = None
    started: float = 0.0
    errors: list[str] = field(default_factory=list)


class _RemoteError(Exception):
    def __init__(self, kind: str, message: str, tb: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.tb = kind, message, tb


# --- the pool ----------------------------------------------------------------------------------


class EnvPool:
    """N worker processes, each with its own environment (see the module docstring)."""

    def __init__(
        self,
        n_workers: int = 1,
        env: str = "scienceworld",
        *,
        retries: int = 2,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        start_method: str = "spawn",
        **env_kwargs: Any,
    ) -> None:
        if n_workers < 1:
            raise ValueError("n_workers must be at least 1")
        self.n_workers = n_workers
        self.env_name = env
        self.env_kwargs = env_kwargs
        self.retries = retries
        self.timeout_s = timeout_s
        self.restarts = 0
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._next_index = 0
        self._pending: deque[_Job] = deque()
        self._starting_failures = 0
        for _ in range(n_workers):
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self.env_name, self.env_kwargs, self._next_index)
        self._next_index += 1
        return worker

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            for worker in self._workers:
                worker.kill()
        except Exception:  # noqa: BLE001
            pass

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid]

    @property
    def jvm_pids(self) -> list[int]:
        return [w.jvm_pid for w in self._workers if w.jvm_pid]

    # -- public API --

    def run(
        self,
        episodes: Sequence[Episode],
        *,
        progress: Callable[[EpisodeResult], None] | None = None,
    ) -> list[EpisodeResult]:
        """Run episodes in parallel; results in the order of `episodes`."""
        results: list[EpisodeResult | None] = [None] * len(episodes)
        for index, result in self.imap(episodes):
            results[index] = result
            if progress is not None:
                progress(result)
        return results  # type: ignore[return-value]

    def imap(self, episodes: Sequence[Episode]) -> Iterator[tuple[int, EpisodeResult]]:
        """Run episodes in parallel, yielding (index, result) as each finishes."""
        factories = [_episode_factory(ep, self.timeout_s) for ep in episodes]
        for index, outcome in self._run_jobs(factories):
            if isinstance(outcome, Exception):
                ep = episodes[index]
                outcome = EpisodeResult(key=ep.key, task_id=ep.task_id, error=str(outcome),
                                        attempts=getattr(outcome, "attempts", 0))
            yield index, outcome

    def map(
        self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, timeout_s: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Run `fn(env, item)` in the workers, yielding (index, result) as each finishes; a job
        that failed for good yields a `JobFailed` as its result. `fn` must be picklable (a
        module-level function)."""
        timeout = timeout_s or self.timeout_s

        def factory(item: Any) -> JobFactory:
            def job() -> Generator[_Request, Any, Any]:
                result = yield _Request(fn, item, timeout)
                return result
            return job

        yield from self._run_jobs([factory(item) for item in items])

    # -- the driver --

    def _run_jobs(self, factories: list[JobFactory]) -> Iterator[tuple[int, Any]]:
        pending = self._pending = deque(_Job(i, f) for i, f in enumerate(factories))
        if not pending:
            return
        try:
            while pending or any(w.job for w in self._workers):
                for worker in self._workers:
                    if worker.ready and worker.job is None and pending:
                        job = pending.popleft()
                        finished = self._start(worker, job)
                        if finished is not None:
                            yield finished
                busy = [w for w in self._workers if w.job is not None or not w.ready]
                if not busy:
                    continue
                now = time.monotonic()
                wait_s = max(0.0, min(w.deadline for w in busy) - now)
                ready = wait([w.conn for w in busy], timeout=min(wait_s, 5.0))
                for worker in list(busy):
                    if worker.conn in ready:
                        try:
                            message = worker.conn.recv()
                        except (EOFError, OSError):
                            finished = self._worker_failed(worker, "the worker process died")
                        else:
                            finished = self._handle(worker, message)
                    elif time.monotonic() > worker.deadline:
                        what = "start" if not worker.ready else "answer"
                        finished = self._worker_failed(
                            worker, f"the worker did not {what} within its timeout"
                        )
                    elif not worker.process.is_alive():
                        finished = self._worker_failed(worker, "the worker process died")
                    else:
                        continue
                    if finished is not None:
                        yield finished
        finally:
            # an abandoned iteration (error, KeyboardInterrupt, break): workers still holding a job
            # are in an unknown state; replace them so the pool stays usable — unless this
            # process is stopping (Ctrl-C, SIGTERM), when new workers would only delay the exit
            for i, worker in enumerate(self._workers):
                if worker.job is not None:
                    worker.kill()
                    if not interrupt.stopping():
                        self._workers[i] = self._spawn()
            if interrupt.stopping():
                self._workers = [w for w in self._workers if w.job is None]

    def _start(self, worker: _Worker, job: _Job) -> tuple[int, Any] | None:
        job.attempts += 1
        job.started = time.monotonic()
        job.gen = job.factory()
        worker.job = job
        return self._advance(worker, job, None, first=True)

    def _advance(self, worker: _Worker, job: _Job, reply: Any, first: bool = False) -> tuple[int, Any] | None:
        assert job.gen is not None
        try:
            request = job.gen.send(None) if first else job.gen.send(reply)
        except StopIteration as stop:
            worker.job = None
            result = stop.value
            if isinstance(result, EpisodeResult):
                result.attempts = job.attempts
                result.elapsed_s = time.monotonic() - job.started
            return job.index, result
        except Exception as exc:  # noqa: BLE001 - a policy or result builder failed
            worker.job = None
            failure = JobFailed(f"job {job.index} failed in the driver: {type(exc).__name__}: {exc}")
            failure.attempts = job.attempts  # type: ignore[attr-defined]
            return job.index, failure
        try:
            worker.send(request)
        except OSError:  # BrokenPipeError: the worker died between two requests
            return self._retry(worker, job, "the worker process died", replace_worker=True)
        return None

    def _handle(self, worker: _Worker, message: tuple) -> tuple[int, Any] | None:
        status = message[0]
        if status == "ready":
            worker.ready = True
            worker.jvm_pid = message[2]
            worker.deadline = float("inf")
            return None
        if not worker.ready:  # the environment could not be built: no point in retrying
            kind, text, tb = message[1], message[2], message[3]
            raise EnvError(f"an environment worker failed to start: {kind}: {text}\n{tb}")
        worker.jvm_pid = message[-1] or worker.jvm_pid
        job = worker.job
        assert job is not None
        if status == "ok":
            return self._advance(worker, job, message[1])
        kind, text, tb = message[1], message[2], message[3]
        if kind == EnvCrashed.__name__:
            return self._retry(worker, job, f"{kind}: {text}", replace_worker=False)
        worker.job = None
        failure = JobFailed(f"{kind}: {text}")
        failure.attempts = job.attempts  # type: ignore[attr-defined]
        failure.remote_traceback = tb  # type: ignore[attr-defined]
        return job.index, failure

    def _worker_failed(self, worker: _Worker, why: str) -> tuple[int, Any] | None:
        job = worker.job
        if not worker.ready and job is None:
            # a starting worker that never became ready
            self._replace(worker)
            self._starting_failures += 1
            if self._starting_failures > 3 * self.n_workers:
                raise EnvError(f"environment workers keep failing to start: {why}")
            return None
        assert job is not None
        return self._retry(worker, job, why, replace_worker=True)

    def _retry(self, worker: _Worker, job: _Job, why: str, replace_worker: bool) -> tuple[int, Any] | None:
        job.errors.append(why)
        worker.job = None
        if replace_worker:
            self._replace(worker)
        if job.attempts <= self.retries:
            self._pending.appendleft(job)
            return None
        failure = JobFailed(f"failed {job.attempts} times: {'; '.join(job.errors)}")
        failure.attempts = job.attempts  # type: ignore[attr-defined]
        return job.index, failure

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.restarts += 1
        i = self._workers.index(worker)
        self._workers[i] = self._spawn()


def _episode_factory(ep: Episode, timeout_s: float) -> JobFactory:
    """A job running one Episode: replay its actions in one call, then step its policy."""

    def job() -> Generator[_Request, Any, EpisodeResult]:
        actions = list(ep.actions)
        recorded = list(ep.recorded_observations) if ep.recorded_observations is not None else None
        replay_timeout = timeout_s + 2.0 * len(actions)
        first = yield _Request(run_actions, (ep.task_id, actions, recorded, ep.max_steps), replay_timeout)
        result = EpisodeResult(
            key=ep.key, task_id=ep.task_id, instruction=first["instruction"],
            initial_observation=first["initial_observation"],
            actions=actions[: len(first["observations"])],
            observations=list(first["observations"]), rewards=list(first["rewards"]),
            invalid=list(first["invalid"]), reward=first["reward"], done=first["done"],
            truncated=first["truncated"], n_prefix=len(first["observations"]),
            drift=list(first["drift"]),
        )
        if ep.policy is None:
            return result
        while not result.done and (ep.max_steps is None or len(result.actions) < ep.max_steps):
            view = EpisodeView(
                task_id=ep.task_id, instruction=result.instruction,
                initial_observation=result.initial_observation, actions=tuple(result.actions),
                observations=tuple(result.observations), rewards=tuple(result.rewards),
                n_prefix=result.n_prefix, key=ep.key,
            )
            action = ep.policy(view)
            if action is None:
                break
            reply = yield _Request(step_action, str(action), timeout_s)
            result.actions.append(str(action))
            result.observations.append(reply["observation"])
            result.rewards.append(reply["reward"])
            if reply["invalid"]:
                result.invalid.append(len(result.actions) - 1)
            result.reward = reply["reward"]
            result.done = reply["done"]
            result.truncated = reply["truncated"]
        return result

    return job


__all__ = [
    "EnvPool", "Episode", "EpisodeResult", "EpisodeView", "JobFailed", "Policy", "find_drift",
    "make_env", "run_actions", "step_action",
]

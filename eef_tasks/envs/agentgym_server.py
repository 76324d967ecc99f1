"""eef's ScienceWorld and WebShop behind AgentGym's HTTP protocols (FastAPI + uvicorn).

    python -m eef_tasks.envs.agentgym_server --host 127.0.0.1 --port 8000            # SciWorld
    python -m eef_tasks.envs.agentgym_server --env webshop --port 36001              # WebShop

WebShop (`--env webshop`, `WebShopServer`): the endpoints and shapes of AgentGym's
`agentenv-webshop` server (agentenv_webshop/server.py, model.py, environment.py), so AgentGym's
`WebshopEnvClient` and eef's `AgentGymEnv("webshop")` both talk to it:

    GET  /                                -> "ok"
    GET  /list_envs                       -> [env ids]
    POST /create                          -> n  (the bare id)
    POST /reset  {env_idx, session_id}    -> [observation, null]   (session_id: the goal index;
                                             null picks a goal at random, as WebShop does)
    POST /step   {env_idx, action}        -> {state, reward, done, info: null}
    GET  /available_actions?env_idx=n     -> {has_search_bar, clickables}
    GET  /instruction_text?env_idx=n      -> "Instruction: <goal>"
    GET  /observation?env_idx=n           -> the current page (text mode)
    GET  /state?env_idx=n                 -> {url, html, instruction_text}
    POST /close  {env_idx}                -> {"closed": true}       (eef's addition)

Each env is one eef `WebShop`; all of them share the process's product table and search index,
so an env costs kilobytes (AgentGym's server loads the products, goals and a Lucene searcher per
env). `reward` is WebShop's reward at the purchase, 0 before. Differences, on purpose: unknown
or evicted env ids answer HTTP 200 `{"error": ...}` (AgentGym's raises, HTTP 500); `/state`'s
`html` is "" (eef renders text only); at most `--max-envs` envs (default 256), the least recently
used idle one evicted beyond that; env ids start at a random number.

SciWorld (the default, `SciWorldServer`):

The endpoints and their shapes are those of AgentGym's `agentenv-sciworld` server
(agentenv_sciworld/server.py and environment.py), so AgentGym's `SciworldEnvClient` and eef's
`AgentGymEnv("sciworld")` both talk to it:

    GET  /                      "This is environment ScienceWorld."
    POST /create                -> {"id": n}
    POST /reset  {id, data_idx} -> {task_name, var_num, task_description, observation, reward,
                                    score, deleted, done}
    POST /step   {id, action}   -> {observation, reward, score, done}
    GET  /observation?id=n      -> the current observation (a string)
    GET  /detail?id=n           -> the env's info dict
    POST /close  {id}           -> {"closed": true}          (eef's addition; WebShop's shape)

Like AgentGym's, a request about an unknown, deleted or finished env answers HTTP 200 with
`{"error": "The id n is not valid."}` (and so on); `reward` is the score change of the step and
`score` the game's score in points (0..100, negative after a wrong `focus on`). `data_idx`
indexes AgentGym's task list (`agentgym.sciworld_games()`: 23 tasks, every variation).

Differences from AgentGym's server, on purpose:
- Each created env is one eef `ScienceWorld` (its own JVM, heap-capped, with a watchdog and
  crash recovery). At most `--max-envs` exist; creating one more evicts the least recently used
  idle env (its id then answers "... has been deleted."; eef's client recreates it), or answers
  `{"error": ...}` if all are busy. `/close` and server shutdown close them.
- Env ids start at a random number, so ids of a previous server process are not valid on a
  restarted one (AgentGym's start at 0, and a client of a restarted server could silently
  drive another client's env).
- Simplifications default to eef's 'easy' (AgentGym's server loads tasks with none):
  `--simplifications ''` for AgentGym's setting.
- `/action_hint` and `/goals` are not served (they answer `{"error": ...}`).
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from eef_tasks.envs.agentgym import sciworld_games

logger = logging.getLogger(__name__)

DEFAULT_MAX_ENVS = 4
DEFAULT_MAX_WEBSHOP_ENVS = 256  # WebShop envs share one product index: an env is a few KB
WEBSHOP_GREETING = "ok"  # agentenv-webshop's GET /
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
GREETING = "This is environment ScienceWorld."


# Request bodies: AgentGym's agentenv_sciworld/model.py (+ /close's).
class StepRequestBody(BaseModel):
    id: int
    action: str


class ResetRequestBody(BaseModel):
    id: int
    data_idx: int


class CloseRequestBody(BaseModel):
    id: int


@dataclass
class _Slot:
    env: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    info: dict[str, Any] = field(default_factory=lambda: {"deleted": False, "done": False})
    last_used: float = field(default_factory=time.monotonic)
    last_score: int = 0


class SciWorldServer:
    """The envs behind the HTTP endpoints; every method answers what the endpoint returns."""

    def __init__(
        self,
        max_envs: int = DEFAULT_MAX_ENVS,
        env_factory: Callable[[], Any] | None = None,
        **env_kwargs: Any,
    ) -> None:
        if max_envs < 1:
            raise ValueError("max_envs must be at least 1")
        if env_factory is None:
            from eef_tasks.envs.scienceworld import ScienceWorld, find_java

            find_java(env_kwargs.get("java"))  # fail at startup, not at the first /create

            def env_factory() -> Any:
                return ScienceWorld(**env_kwargs)

        self.max_envs = max_envs
        self._factory = env_factory
        self._slots: dict[int, _Slot] = {}
        self._deleted: set[int] = set()
        self._pending = 0
        self._registry = threading.Lock()
        self._next_id = random.SystemRandom().randrange(1_000, 1_000_000_000)
        self.games = sciworld_games()

    # -- registry --

    def _slot(self, idx: int, *, is_reset: bool = False) -> _Slot:
        """The slot of an env id, or ValueError with AgentGym's messages."""
        with self._registry:
            slot = self._slots.get(idx)
            deleted = idx in self._deleted
        if slot is None:
            if deleted:
                raise ValueError(f"The task with environment {idx} has been deleted.")
            raise ValueError(f"The id {idx} is not valid.")
        if not is_reset and slot.info.get("done"):
            raise ValueError(f"The task with environment {idx} has finished.")
        return slot

    def _evict_lru(self) -> bool:
        """Close the least recently used idle env (registry lock held); False if all are busy."""
        for idx, slot in sorted(self._slots.items(), key=lambda item: item[1].last_used):
            if slot.lock.acquire(blocking=False):
                try:
                    del self._slots[idx]
                    self._deleted.add(idx)
                    slot.info["deleted"] = True
                    logger.info("evicting idle env %s (at most %d envs)", idx, self.max_envs)
                    _close_env(slot.env)
                finally:
                    slot.lock.release()
                return True
        return False

    # -- endpoints --

    def create(self) -> dict[str, Any]:
        with self._registry:
            if len(self._slots) + self._pending >= self.max_envs and not self._evict_lru():
                return {"error": f"all {self.max_envs} environments are busy; close one with "
                                 "POST /close or retry later"}
            self._pending += 1
        try:
            env = self._factory()
        except Exception as exc:  # noqa: BLE001 - answered to the client
            logger.exception("creating an env failed")
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            with self._registry:
                self._pending -= 1
        with self._registry:
            idx = self._next_id
            self._next_id += 1
            self._slots[idx] = _Slot(env)
        logger.info("-------Env %s created--------", idx)
        return {"id": idx}

    def reset(self, idx: int, data_idx: int) -> dict[str, Any]:
        try:
            slot = self._slot(idx, is_reset=True)
            if not 0 <= data_idx < len(self.games):
                raise ValueError(
                    f"data_idx {data_idx} is out of range: this server has {len(self.games)} "
                    f"SciWorld tasks (0..{len(self.games) - 1})"
                )
            name, variation = self.games[data_idx]
            with slot.lock:
                _check_alive(slot, idx)
                slot.last_used = time.monotonic()
                observation = slot.env.reset(f"scienceworld/{name}/{variation}")
                description = slot.env.instruction
                slot.last_score = 0
                payload = {
                    "task_name": name,
                    "var_num": variation,
                    "task_description": description,
                    "observation": observation,
                    "reward": 0,
                    "score": 0,
                    "deleted": False,
                    "done": False,
                }
                slot.info.update(payload)
            return payload
        except Exception as exc:  # noqa: BLE001 - AgentGym answers errors as payloads
            return {"error": str(exc)}

    def step(self, idx: int, action: str) -> dict[str, Any]:
        try:
            slot = self._slot(idx)
            with slot.lock:
                _check_alive(slot, idx)
                if slot.info.get("task_name") is None:
                    raise ValueError(f"The task with environment {idx} has not been reset.")
                slot.last_used = time.monotonic()
                result = slot.env.step(action)
                score = int(result.info.get("score", 0))
                payload = {
                    "observation": result.observation,
                    "reward": score - slot.last_score,
                    "score": score,
                    "done": bool(result.done),
                }
                slot.last_score = score
                slot.info.update(payload)
            return payload
        except Exception as exc:  # noqa: BLE001
            return {"error": str(exc)}

    def observation(self, idx: int) -> Any:
        try:
            return self._slot(idx).info["observation"]
        except Exception as exc:  # noqa: BLE001
            return {"error": str(exc)}

    def detail(self, idx: int) -> dict[str, Any]:
        try:
            return dict(self._slot(idx, is_reset=True).info)
        except Exception as exc:  # noqa: BLE001
            return {"error": str(exc)}

    def close(self, idx: int) -> dict[str, Any]:
        with self._registry:
            slot = self._slots.pop(idx, None)
            if slot is not None:
                self._deleted.add(idx)
        if slot is None:
            return {"closed": False}
        with slot.lock:
            slot.info["deleted"] = True
            _close_env(slot.env)
        logger.info("-------Env %s closed--------", idx)
        return {"closed": True}

    def close_all(self) -> None:
        with self._registry:
            slots = list(self._slots.items())
            self._slots.clear()
            self._deleted.update(idx for idx, _ in slots)
        for _, slot in slots:
            _close_env(slot.env)

    @property
    def n_envs(self) -> int:
        return len(self._slots)


def _check_alive(slot: _Slot, idx: int) -> None:
    """(Slot lock held) the env was not evicted or closed since it was looked up."""
    if slot.info.get("deleted"):
        raise ValueError(f"The task with environment {idx} has been deleted.")


def _close_env(env: Any) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001 - a dead JVM
        logger.warning("closing an env failed", exc_info=True)


# --- WebShop (agentenv-webshop's protocol) --------------------------------------------------------


class WebShopStepBody(BaseModel):  # agentenv_webshop/model.py StepQuery
    env_idx: int
    action: str


class WebShopResetBody(BaseModel):  # ResetQuery
    env_idx: int
    session_id: int | None = None


class WebShopCloseBody(BaseModel):
    env_idx: int


class WebShopServer:
    """eef WebShop envs behind agentenv-webshop's endpoints; every method answers what its
    endpoint returns (errors as `{"error": ...}`)."""

    def __init__(self, max_envs: int = DEFAULT_MAX_WEBSHOP_ENVS, **env_kwargs: Any) -> None:
        if max_envs < 1:
            raise ValueError("max_envs must be at least 1")
        from eef_tasks.envs.webshop import WebShop
        from eef_tasks.envs.webshop.products import load_webshop
        from eef_tasks.envs.webshop.search import product_search

        load_webshop()
        product_search()  # built once, before the first request, shared by every env
        self.max_envs = max_envs
        self._make = lambda: WebShop(**env_kwargs)
        self._slots: dict[int, _Slot] = {}
        self._deleted: set[int] = set()
        self._registry = threading.Lock()
        self._next_id = random.SystemRandom().randrange(1_000, 1_000_000_000)
        self._rng = random.SystemRandom()

    def _slot(self, idx: int) -> _Slot:
        with self._registry:
            slot = self._slots.get(idx)
            deleted = idx in self._deleted
        if slot is None:
            if deleted:
                raise ValueError(f"The task with environment {idx} has been deleted.")
            raise ValueError(f"The id {idx} is not valid.")
        return slot

    def list_envs(self) -> list[int]:
        with self._registry:
            return list(self._slots)

    def create(self) -> Any:
        with self._registry:
            if len(self._slots) >= self.max_envs:
                idle = [(i, s) for i, s in self._slots.items() if not s.lock.locked()]
                if not idle:
                    return {"error": f"all {self.max_envs} environments are busy; close one with "
                                     "POST /close or retry later"}
                victim, _ = min(idle, key=lambda item: item[1].last_used)
                del self._slots[victim]
                self._deleted.add(victim)
                logger.info("evicting idle env %s (at most %d envs)", victim, self.max_envs)
            idx = self._next_id
            self._next_id += 1
            self._slots[idx] = _Slot(self._make())
        return idx

    def reset(self, idx: int, session_id: int | None) -> Any:
        try:
            slot = self._slot(idx)
            n_goals = len(slot.env.data.goals)
            goal = self._rng.randrange(n_goals) if session_id is None else session_id
            if not 0 <= goal < n_goals:
                raise ValueError(f"session_id {goal} is out of range: this server has {n_goals} "
                                 f"WebShop goals (0..{n_goals - 1})")
            with slot.lock:
                slot.last_used = time.monotonic()
                observation = slot.env.reset(f"webshop/{goal}")
                slot.info.update(done=False, task_name=goal)
            return [observation, None]
        except Exception as exc:  # noqa: BLE001 - answered to the client
            return {"error": str(exc)}

    def step(self, idx: int, action: str) -> dict[str, Any]:
        try:
            slot = self._slot(idx)
            with slot.lock:
                if slot.info.get("task_name") is None:
                    raise ValueError(f"The task with environment {idx} has not been reset.")
                if slot.info.get("done"):
                    raise ValueError(f"The task with environment {idx} has finished.")
                slot.last_used = time.monotonic()
                result = slot.env.step(action)
                slot.info["done"] = result.done
            return {"state": result.observation, "reward": result.reward, "done": result.done,
                    "info": None}
        except Exception as exc:  # noqa: BLE001
            return {"error": str(exc)}

    def _read(self, idx: int, fn: Callable[[Any], Any]) -> Any:
        try:
            slot = self._slot(idx)
            with slot.lock:
                if slot.info.get("task_name") is None:
                    raise ValueError(f"The task with environment {idx} has not been reset.")
                return fn(slot.env)
        except Exception as exc:  # noqa: BLE001
            return {"error": str(exc)}

    def available_actions(self, idx: int) -> Any:
        return self._read(idx, lambda env: env.available_actions())

    def instruction_text(self, idx: int) -> Any:
        return self._read(idx, lambda env: f"Instruction: {env.instruction}")

    def observation(self, idx: int) -> Any:
        return self._read(idx, lambda env: env.observation)

    def state(self, idx: int) -> Any:
        return self._read(idx, lambda env: {
            "url": f"http://127.0.0.1:3000/{env.page_name}/{env.task_id}", "html": "",
            "instruction_text": f"Instruction: {env.instruction}"})

    def close(self, idx: int) -> dict[str, Any]:
        with self._registry:
            slot = self._slots.pop(idx, None)
            if slot is not None:
                self._deleted.add(idx)
        return {"closed": slot is not None}

    def close_all(self) -> None:
        with self._registry:
            self._deleted.update(self._slots)
            self._slots.clear()

    @property
    def n_envs(self) -> int:
        return len(self._slots)


def create_webshop_app(server: WebShopServer) -> Any:
    """The FastAPI app serving `server` with agentenv-webshop's endpoints."""
    from fastapi import FastAPI

    app = FastAPI(title="eef WebShop (AgentGym WebShop protocol)")

    @app.get("/")
    def hello() -> str:
        return WEBSHOP_GREETING

    @app.get("/list_envs")
    def list_envs() -> Any:
        return server.list_envs()

    @app.post("/create")
    def create() -> Any:
        return server.create()

    @app.post("/step")
    def step(body: WebShopStepBody) -> Any:
        return server.step(body.env_idx, body.action)

    @app.post("/reset")
    def reset(body: WebShopResetBody) -> Any:
        return server.reset(body.env_idx, body.session_id)

    @app.get("/available_actions")
    def available_actions(env_idx: int) -> Any:
        return server.available_actions(env_idx)

    @app.get("/instruction_text")
    def instruction_text(env_idx: int) -> Any:
        return server.instruction_text(env_idx)

    @app.get("/observation")
    def observation(env_idx: int) -> Any:
        return server.observation(env_idx)

    @app.get("/state")
    def state(env_idx: int) -> Any:
        return server.state(env_idx)

    @app.post("/close")
    def close(body: WebShopCloseBody) -> Any:
        return server.close(body.env_idx)

    app.state.webshop = server
    return app


def create_app(server: SciWorldServer) -> Any:
    """The FastAPI app serving `server` (envs are closed when the app shuts down)."""
    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(_: Any):
        yield
        server.close_all()

    app = FastAPI(title="eef ScienceWorld (AgentGym SciWorld protocol)", lifespan=lifespan)

    # Synchronous handlers: FastAPI runs them in its thread pool, so a slow game call (or a JVM
    # starting in /create) does not block the other envs' requests.
    @app.get("/")
    def hello() -> str:
        return GREETING

    @app.post("/create")
    def create() -> Any:
        return server.create()

    @app.post("/step")
    def step(body: StepRequestBody) -> Any:
        return server.step(body.id, body.action)

    @app.post("/reset")
    def reset(body: ResetRequestBody) -> Any:
        return server.reset(body.id, body.data_idx)

    @app.get("/observation")
    def get_observation(id: int) -> Any:  # noqa: A002 - AgentGym's query parameter name
        return server.observation(id)

    @app.get("/detail")
    def get_detailed_info(id: int) -> Any:  # noqa: A002
        return server.detail(id)

    @app.get("/action_hint")
    def get_action_hint(id: int) -> Any:  # noqa: A002
        return {"error": "/action_hint is not served by eef's ScienceWorld server"}

    @app.get("/goals")
    def get_goals(id: int) -> Any:  # noqa: A002
        return {"error": "/goals is not served by eef's ScienceWorld server"}

    @app.post("/close")
    def close(body: CloseRequestBody) -> Any:
        return server.close(body.id)

    app.state.sciworld = server
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m eef_tasks.envs.agentgym_server",
        description="Serve eef's ScienceWorld (or WebShop) with AgentGym's HTTP protocol.",
    )
    parser.add_argument("--env", choices=["sciworld", "webshop"], default="sciworld",
                        help="which environment to serve (default sciworld)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-envs", type=int, default=None,
                        help="most envs alive at once; the least recently used idle one is "
                             f"evicted to create another (default {DEFAULT_MAX_ENVS}, one JVM "
                             f"each; WebShop: {DEFAULT_MAX_WEBSHOP_ENVS})")
    parser.add_argument("--simplifications", default="easy",
                        help="ScienceWorld simplifications (default 'easy', eef's and ETO's "
                             "setting; '' for AgentGym's)")
    parser.add_argument("--java-heap", default="512m", help="heap cap per JVM (default 512m)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    if args.host not in LOCAL_HOSTS:
        logger.warning(
            "listening on %s: the server has no authentication, anyone who can reach this port "
            "can drive its environments", args.host,
        )
    import uvicorn

    server: SciWorldServer | WebShopServer
    if args.env == "webshop":
        server = WebShopServer(max_envs=args.max_envs or DEFAULT_MAX_WEBSHOP_ENVS)
        app = create_webshop_app(server)
    else:
        server = SciWorldServer(
            max_envs=args.max_envs or DEFAULT_MAX_ENVS, simplifications=args.simplifications,
            java_heap=args.java_heap,
        )
        app = create_app(server)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    access_log=args.log_level == "debug")
    finally:
        server.close_all()


if __name__ == "__main__":  # pragma: no cover
    main()

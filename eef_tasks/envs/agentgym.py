"""AgentGym's environment servers (WebShop, SciWorld, ALFWorld, BabyAI, TextCraft) behind `Env`.

AgentGym (github.com/WooooDyy/AgentGym) runs every environment as its own HTTP server
(`agentenv-webshop`, `agentenv-sciworld`, ...; FastAPI, usually on localhost). This module is a
client for those servers:

    from eef_tasks.envs.agentgym import AgentGymEnv
    with AgentGymEnv("webshop", base_url="http://127.0.0.1:36001") as env:
        obs = env.reset("webshop/12")                  # AgentGym's data_idx / session id 12
        result = env.step("search[blue running shoes]")

Task ids are '<env>/<data_idx>' ('webshop/12', 'sciworld/4240'); AgentGym's own item ids
('webshop/webshop_12', as `eef import` stores them) are accepted too, and a SciWorld client also
takes eef's ScienceWorld ids ('scienceworld/boil/3', mapped to AgentGym's data_idx).

The servers differ in field names (read from AgentGym's server.py / environment wrappers and the
clients in agentenv/agentenv/envs/*.py; docs/agentgym.md has the table):

    env        id field  reset body                        step answer                    reward
    webshop    env_idx   {env_idx, session_id}             {state, reward, done, info}    at the purchase
    sciworld   id        {id, data_idx}                    {observation, reward, score,   score / 100
                                                            done}
    alfworld   id        {id, game, world_type: "Text"}    {observation, reward,          `won` (0/1)
                                                            available_actions, done}
    babyai     id        {id, data_idx}                    {observation, reward, score,   reward
                                                            done}
    textcraft  id        {id, data_idx}                    {observation, reward, done}    reward (0/1)

`reward` in a `StepResult` is the episode's reward so far in [0, 1], as everywhere in eef.

Failures. Every request has a timeout. A request that fails (connection refused or reset, timeout,
HTTP 5xx, an `{"error": ...}` answer, or an answer saying the env id is unknown: the server was
restarted or dropped the env) is retried with exponential backoff, and because the env's state
on the server is then unknown, the retry runs on a *fresh* env: `/create`, reset to the same task,
replay the actions taken so far, compare the replayed observations with those the caller already
saw (order-insensitively, `base.find_drift`), then send the action again. A replay that drifts
raises `EnvCrashed` (rerun the episode); running out of retries raises `EnvCrashed`, or
`ServerUnavailable` (a subclass) when the server could not be reached at all. Nothing hangs: the
worst case is bounded by `max_retries`, `timeout_s` and `max_backoff_s`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from eef_tasks.envs.base import (
    EnvCrashed,
    EnvError,
    EpisodeOver,
    ReplayResult,
    Split,
    StepResult,
    TaskSpec,
    find_drift,
    replay_steps,
)

logger = logging.getLogger(__name__)

AGENTGYM_ENVS = ("webshop", "sciworld", "alfworld", "babyai", "textcraft")
URL_ENV_VAR = "EEF_AGENTGYM_URL"

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
DEFAULT_MAX_BACKOFF_S = 8.0
CLOSE_TIMEOUT_S = 5.0


class ServerUnavailable(EnvCrashed):
    """The AgentGym server could not be reached (connection refused or timed out) on any attempt."""


# --- per-environment protocol -------------------------------------------------------------------


def _first_match(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.S | re.M)
    return match[1].strip() if match else None


def _webshop_instruction(obs: str, _: Mapping[str, Any]) -> str:
    # "WebShop [SEP] Instruction: [SEP] i need ... dollars [SEP] Search"
    return _first_match(r"Instruction:\s*\[SEP\]\s*(.*?)\s*\[SEP\]", obs) or obs.strip()


def _sciworld_instruction(obs: str, answer: Mapping[str, Any]) -> str:
    return str(answer.get("task_description") or "").strip() or obs.strip()


def _alfworld_instruction(obs: str, _: Mapping[str, Any]) -> str:
    return _first_match(r"Your task is to:\s*(.*?)\s*$", obs) or obs.strip()


def _babyai_instruction(obs: str, _: Mapping[str, Any]) -> str:
    return _first_match(r"Your goal:\s*(.*?)\s*$", obs) or obs.strip()


def _textcraft_instruction(obs: str, _: Mapping[str, Any]) -> str:
    goal = _first_match(r"^Goal:\s*(.*?)\.?\s*$", obs)
    return goal or obs.strip()


_SCIWORLD_INVALID = (
    "No known action matches that input", "Unknown action", "ERROR:",
    "Ambiguous request: Multiple different possible actions",
)
_SCIWORLD_AMBIGUOUS = "Ambiguous request: Please enter the number"
_BABYAI_INVALID = (
    "The action is not recognized", "There is a barrier in front of you", "No change in state",
)
_TEXTCRAFT_INVALID = ("Could not ", "Wrong item format")


@dataclass(frozen=True)
class Protocol:
    """How one AgentGym environment server names things (see the module docstring's table)."""

    env: str  # eef's name: the task-id prefix
    title: str  # AgentGym's name
    package: str  # the AgentGym folder that holds the server
    id_key: str  # the env id's field name in bodies and query strings
    reset_body: Callable[[int], dict[str, Any]]
    create_body: dict[str, Any] | None  # JSON body of /create (TextCraft's server requires one)
    observation_key: str  # the observation's field in /step answers
    score_scale: float | None  # 'score' in 0..score_scale is the reward so far; None: use 'reward'
    max_steps: int  # AgentGym's max rounds for this env
    instruction: Callable[[str, Mapping[str, Any]], str]
    invalid_prefixes: tuple[str, ...] = ()
    invalid_if_unchanged: bool = False  # WebShop: an invalid action leaves the page unchanged


# Max rounds: AgentGym's agentenv/examples/agentevol/train_agentevol_multi_task.sh (max_round_list).
PROTOCOLS: dict[str, Protocol] = {
    "webshop": Protocol(
        env="webshop", title="WebShop", package="agentenv-webshop", id_key="env_idx",
        reset_body=lambda idx: {"session_id": idx}, create_body=None, observation_key="state",
        score_scale=None, max_steps=10, instruction=_webshop_instruction,
        invalid_if_unchanged=True,
    ),
    "sciworld": Protocol(
        env="sciworld", title="SciWorld", package="agentenv-sciworld", id_key="id",
        reset_body=lambda idx: {"data_idx": idx}, create_body=None,
        observation_key="observation", score_scale=100.0, max_steps=30,
        instruction=_sciworld_instruction, invalid_prefixes=_SCIWORLD_INVALID,
    ),
    "alfworld": Protocol(
        env="alfworld", title="ALFWorld", package="agentenv-alfworld", id_key="id",
        reset_body=lambda idx: {"game": idx, "world_type": "Text"}, create_body=None,
        observation_key="observation", score_scale=None, max_steps=30,
        instruction=_alfworld_instruction, invalid_prefixes=("Nothing happens", "Nothing happened"),
    ),
    "babyai": Protocol(
        env="babyai", title="BabyAI", package="agentenv-babyai", id_key="id",
        reset_body=lambda idx: {"data_idx": idx}, create_body=None,
        observation_key="observation", score_scale=None, max_steps=20,
        instruction=_babyai_instruction, invalid_prefixes=_BABYAI_INVALID,
    ),
    "textcraft": Protocol(
        env="textcraft", title="TextCraft", package="agentenv-textcraft", id_key="id",
        reset_body=lambda idx: {"data_idx": idx}, create_body={"commands": None, "goal": None},
        observation_key="observation", score_scale=None, max_steps=20,
        instruction=_textcraft_instruction, invalid_prefixes=_TEXTCRAFT_INVALID,
    ),
}

# An answer saying the server does not know our env id (restarted server, dropped env).
_LOST_RE = re.compile(
    r"id \S+ is not valid|has been deleted|not found|no such env|unknown env|KeyError", re.I
)
# A reset answer saying the task index itself is bad: no point in retrying.
_BAD_TASK_RE = re.compile(r"out of range|index|invalid data_idx|no such task", re.I)


def protocol(env: str) -> Protocol:
    env = env.removeprefix("agentgym:")
    try:
        return PROTOCOLS[env]
    except KeyError:
        raise EnvError(
            f"unknown AgentGym environment {env!r}; supported: {', '.join(AGENTGYM_ENVS)}"
        ) from None


# --- task ids -----------------------------------------------------------------------------------

_AG_ID_RE = re.compile(r"^(?P<env>[a-z]+)/(?:(?P=env)_)?(?P<idx>\d+)$")
_SW_ID_RE = re.compile(r"^scienceworld/(?P<task>[A-Za-z0-9_.-]+)/(?P<variation>\d+)$")


def make_agentgym_task_id(env: str, data_idx: int) -> str:
    """'webshop/12' from ('webshop', 12)."""
    return f"{protocol(env).env}/{int(data_idx)}"


def parse_agentgym_task_id(task_id: str, env: str | None = None) -> tuple[str, int]:
    """(env, data_idx) of '<env>/<data_idx>' or AgentGym's '<env>/<env>_<data_idx>'; with
    env='sciworld', eef's 'scienceworld/<task>/<variation>' too. EnvError otherwise."""
    match = _AG_ID_RE.match(task_id)
    if match and match["env"] in PROTOCOLS:
        if env is not None and match["env"] != protocol(env).env:
            raise EnvError(f"{task_id!r} is a {match['env']} task, not a {protocol(env).env} task")
        return match["env"], int(match["idx"])
    sw = _SW_ID_RE.match(task_id)
    if sw and (env is None or protocol(env).env == "sciworld"):
        return "sciworld", sciworld_data_idx(sw["task"], int(sw["variation"]))
    raise EnvError(
        f"malformed AgentGym task id {task_id!r}: expected '<env>/<data_idx>' with env one of "
        f"{', '.join(AGENTGYM_ENVS)}, e.g. 'webshop/12'"
    )


# --- SciWorld's data_idx ------------------------------------------------------------------------

# agentenv-sciworld's environment.py builds its task list from ScienceWorld's task table in id
# order, skipping these task ids (grow-plant, grow-fruit, the inclined planes, Mendelian
# genetics), with every variation 0..max-1 of each remaining task: data_idx indexes that list.
SCIWORLD_EXCLUDED_TASKS = (
    "grow-plant", "grow-fruit", "inclined-plane-determine-angle",
    "inclined-plane-friction-named-surfaces", "inclined-plane-friction-unnamed-surfaces",
    "mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant",
)


@cache
def sciworld_games() -> tuple[tuple[str, int], ...]:
    """AgentGym SciWorld's data_idx -> (ScienceWorld task name, variation), as its server builds
    it (from eef's shipped ScienceWorld 1.2.3 task table: same task order and variation counts)."""
    from eef_tasks.envs.scienceworld import TASK_NAMES, task_table

    table = task_table().get("tasks", {})
    games: list[tuple[str, int]] = []
    for name in TASK_NAMES:
        if name in SCIWORLD_EXCLUDED_TASKS:
            continue
        if name not in table:
            raise EnvError(f"the shipped ScienceWorld task table lacks {name!r}")
        games.extend((name, v) for v in range(int(table[name]["max_variations"])))
    return tuple(games)


@cache
def _sciworld_index() -> dict[tuple[str, int], int]:
    return {game: i for i, game in enumerate(sciworld_games())}


def sciworld_data_idx(task: str, variation: int) -> int:
    """AgentGym SciWorld's data_idx of a ScienceWorld task variation."""
    from eef_tasks.envs.scienceworld import eto_task_name

    name = eto_task_name(task) if task.startswith("task-") else task
    try:
        return _sciworld_index()[(name, int(variation))]
    except KeyError:
        why = (" (AgentGym's SciWorld server leaves this task out)"
               if name in SCIWORLD_EXCLUDED_TASKS else "")
        raise EnvError(f"no AgentGym SciWorld data_idx for {name}/{variation}{why}") from None


# --- base URL -----------------------------------------------------------------------------------


def resolve_base_url(env: str, base_url: str | None = None) -> str:
    """`base_url`, else $EEF_AGENTGYM_<ENV>_URL (e.g. EEF_AGENTGYM_WEBSHOP_URL), else
    $EEF_AGENTGYM_URL; EnvError when none is set."""
    name = protocol(env).env
    specific = f"EEF_AGENTGYM_{name.upper()}_URL"
    url = base_url or os.environ.get(specific) or os.environ.get(URL_ENV_VAR)
    if not url:
        raise EnvError(
            f"no AgentGym {protocol(env).title} server given: pass base_url=... or set "
            f"{specific} (or {URL_ENV_VAR}), e.g. http://127.0.0.1:36001 (docs/agentgym.md)"
        )
    if not re.match(r"^https?://", url):
        url = "http://" + url
    return url.rstrip("/")


def wait_for_server(base_url: str, timeout_s: float = 30.0, *, interval_s: float = 0.1) -> str:
    """Poll `GET /` until the server answers (returns its greeting); ServerUnavailable after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            answer = httpx.get(base_url.rstrip("/") + "/", timeout=min(5.0, timeout_s),
                               trust_env=False)
            if answer.status_code == 200:
                return answer.text
            last = EnvError(f"HTTP {answer.status_code}")
        except httpx.HTTPError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise ServerUnavailable(
                f"no AgentGym server answered at {base_url} within {timeout_s:.0f} s ({last})"
            )
        time.sleep(interval_s)


# --- the client ---------------------------------------------------------------------------------


class _Failure(Exception):
    """A request that did not get a usable answer; the env's state on the server is unknown.

    `unreachable`: no connection could be made. `lost`: the server says it has no such env.
    """

    def __init__(self, message: str, *, unreachable: bool = False, lost: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.lost = lost


class AgentGymEnv:
    """One episode at a time on an AgentGym environment server (see the module docstring).

    `env_name`: 'webshop', 'sciworld', 'alfworld', 'babyai' or 'textcraft' ('agentgym:' prefix
    allowed). `base_url`: the server, e.g. 'http://127.0.0.1:36001' (default: $EEF_AGENTGYM_<ENV>_URL
    or $EEF_AGENTGYM_URL). `timeout_s` bounds every request (`connect_timeout_s` its connection);
    a failed request is retried `max_retries` times, waiting `backoff_s * 2**k` (at most
    `max_backoff_s`) before retry k+1, on a fresh env restored by replay. `recover_on_drift=True`
    continues after a restore whose replay drifted (logged, `info['recovered_drift']`) instead of
    raising `EnvCrashed`. `transport` is passed to httpx (tests use a mock transport).
    """

    def __init__(
        self,
        env_name: str = "webshop",
        base_url: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        recover_on_drift: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.protocol = protocol(env_name)
        self.name = self.protocol.env
        self.base_url = resolve_base_url(self.name, base_url)
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries and backoff_s >= 0")
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(min(connect_timeout_s, timeout_s))
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.recover_on_drift = recover_on_drift
        self.recoveries = 0  # episodes restored on a fresh env over this object's life
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
            transport=transport,
            trust_env=False,  # localhost servers: never go through an HTTP(S)_PROXY
        )
        self._env_id: Any = None
        self._closed = False
        self._clear_episode()

    # -- lifecycle --

    def close(self) -> None:
        """Close the env on the server (best effort: not every AgentGym server has /close)."""
        if self._closed:
            return
        self._closed = True
        if self._env_id is not None:
            self._close_remote(self._env_id)
            self._env_id = None
        self._clear_episode()
        self._http.close()

    def __enter__(self) -> AgentGymEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"AgentGymEnv({self.name!r}, base_url={self.base_url!r}, env_id={self._env_id!r})"

    # -- episode state --

    def _clear_episode(self) -> None:
        self._task_id: str | None = None
        self._data_idx: int | None = None
        self._instruction = ""
        self._initial_observation = ""
        self._actions: list[str] = []
        self._observations: list[str] = []
        self._reward = 0.0
        self._done = False
        self._max_steps: int | None = None
        self._restored = 0

    @property
    def env_id(self) -> Any:
        """The env's id on the server (changes when the env is recreated)."""
        return self._env_id

    @property
    def task_id(self) -> str | None:
        return self._task_id

    @property
    def data_idx(self) -> int | None:
        return self._data_idx

    @property
    def instruction(self) -> str:
        """The current task's goal, taken from the first observation (SciWorld: the server's
        task description)."""
        return self._instruction

    @property
    def actions(self) -> list[str]:
        return list(self._actions)

    # -- HTTP --

    def _request(
        self, method: str, path: str, *, body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None, timeout_s: float | None = None,
    ) -> Any:
        """One request; the decoded JSON answer. _Failure when the answer is unusable but a retry
        may help, EnvError when the server does not speak this protocol."""
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if params is not None:
            kwargs["params"] = params
        if timeout_s is not None:
            kwargs["timeout"] = httpx.Timeout(timeout_s, connect=min(self.connect_timeout_s, timeout_s))
        url = f"{self.base_url}{path}"
        try:
            answer = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Failure(f"cannot connect to {url} ({exc or type(exc).__name__})",
                           unreachable=True) from exc
        except httpx.TimeoutException as exc:
            raise _Failure(f"{method} {url} got no answer within {self.timeout_s:.0f} s") from exc
        except httpx.TransportError as exc:  # reset, broken pipe, server died mid-answer
            raise _Failure(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        status = answer.status_code
        if status >= 500:
            raise _Failure(
                f"{method} {url} answered HTTP {status}: {answer.text[:300]}",
                lost=bool(_LOST_RE.search(answer.text)),
            )
        if status == 404:
            detail = _json_or_text(answer)
            if isinstance(detail, dict) and detail.get("detail") == "Not Found":
                raise EnvError(
                    f"{url} does not exist (HTTP 404): is {self.base_url} an AgentGym "
                    f"{self.protocol.title} server ({self.protocol.package})? Check base_url."
                )
            raise _Failure(f"{method} {url} answered HTTP 404: {str(detail)[:300]}", lost=True)
        if status in (408, 429):
            raise _Failure(f"{method} {url} answered HTTP {status}: {answer.text[:300]}")
        if 400 <= status < 500:
            raise EnvError(
                f"{method} {url} was rejected (HTTP {status}: {answer.text[:300]}): is "
                f"{self.base_url} an AgentGym {self.protocol.title} server "
                f"({self.protocol.package})? Check base_url and the environment name."
            )
        try:
            return answer.json()
        except ValueError:
            raise EnvError(
                f"{method} {url} answered with something that is not JSON: {answer.text[:200]!r}"
            ) from None

    @staticmethod
    def _error_of(answer: Any) -> str | None:
        if isinstance(answer, dict) and "error" in answer and len(answer) <= 2:
            return str(answer["error"])
        return None

    def _id_body(self, **fields: Any) -> dict[str, Any]:
        return {self.protocol.id_key: self._env_id, **fields}

    def _create_remote(self) -> None:
        answer = self._request("POST", "/create", body=self.protocol.create_body)
        error = self._error_of(answer)
        if error is not None:
            raise _Failure(f"the server could not create an env: {error}")
        if isinstance(answer, dict) and "id" in answer:
            env_id = answer["id"]
        elif isinstance(answer, int) and not isinstance(answer, bool):
            env_id = answer  # WebShop answers with the bare id
        else:
            raise EnvError(
                f"POST {self.base_url}/create answered {str(answer)[:200]!r}, not an env id: is "
                f"it an AgentGym {self.protocol.title} server ({self.protocol.package})?"
            )
        self._env_id = env_id
        logger.debug("created AgentGym %s env %s at %s", self.name, env_id, self.base_url)

    def _close_remote(self, env_id: Any) -> None:
        try:
            self._request("POST", "/close", body={self.protocol.id_key: env_id},
                          timeout_s=min(CLOSE_TIMEOUT_S, self.timeout_s))
        except (_Failure, EnvError, httpx.HTTPError, RuntimeError):
            pass  # best effort: several AgentGym servers have no /close

    def _new_env(self) -> None:
        old, self._env_id = self._env_id, None
        if old is not None:
            self._close_remote(old)
        self._create_remote()

    def _reset_remote(self, data_idx: int) -> tuple[str, str, dict[str, Any]]:
        """Reset the server's env to a task: (observation, instruction, answer)."""
        answer = self._request("POST", "/reset", body=self._id_body(**self.protocol.reset_body(data_idx)))
        error = self._error_of(answer)
        if error is not None:
            if _LOST_RE.search(error):
                raise _Failure(f"the server lost env {self._env_id}: {error}", lost=True)
            if _BAD_TASK_RE.search(error):
                raise EnvError(
                    f"the AgentGym {self.protocol.title} server refused task {data_idx}: {error}"
                )
            raise _Failure(f"reset to task {data_idx} failed on the server: {error}")
        if isinstance(answer, list) and answer:  # WebShop: [observation, None]
            observation = answer[0]
            details: dict[str, Any] = {}
            if not isinstance(observation, str):
                observation = self._get_observation()
        elif isinstance(answer, dict) and isinstance(answer.get("observation"), str):
            observation, details = answer["observation"], answer
        else:
            raise EnvError(
                f"POST {self.base_url}/reset answered {str(answer)[:200]!r}: not an AgentGym "
                f"{self.protocol.title} reset answer"
            )
        return observation, self.protocol.instruction(observation, details), details

    def _get_observation(self) -> str:
        answer = self._request("GET", "/observation", params={self.protocol.id_key: self._env_id})
        error = self._error_of(answer)
        if error is not None:
            raise _Failure(f"GET /observation failed: {error}", lost=bool(_LOST_RE.search(error)))
        if not isinstance(answer, str):
            raise EnvError(f"GET {self.base_url}/observation answered {str(answer)[:200]!r}")
        return answer

    def _step_remote(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """One /step: (observation, raw reward or score, done, answer)."""
        answer = self._request("POST", "/step", body=self._id_body(action=action))
        error = self._error_of(answer)
        if error is not None:
            raise _Failure(f"step failed on the server: {error}", lost=bool(_LOST_RE.search(error)))
        key = self.protocol.observation_key
        if not isinstance(answer, dict) or not isinstance(answer.get(key), str):
            raise EnvError(
                f"POST {self.base_url}/step answered {str(answer)[:200]!r} (no {key!r}): is it an "
                f"AgentGym {self.protocol.title} server ({self.protocol.package})?"
            )
        if self.protocol.score_scale is not None and answer.get("score") is not None:
            raw = float(answer["score"])
        else:
            raw = float(answer.get("reward") or 0.0)
        return answer[key], raw, bool(answer.get("done", False)), answer

    # -- retries and recovery --

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))

    def _with_retries(self, what: str, attempt_fn: Callable[[int], Any]) -> Any:
        failures: list[_Failure] = []
        started = time.monotonic()
        for attempt in range(self.max_retries + 1):
            if attempt and not failures[-1].lost:  # a server that answered needs no waiting for
                time.sleep(self._backoff(attempt))
            try:
                return attempt_fn(attempt)
            except _Failure as exc:
                failures.append(exc)
                if attempt < self.max_retries:
                    logger.warning(
                        "AgentGym %s at %s: %s failed (%s); retrying on a fresh env (%d/%d)",
                        self.name, self.base_url, what, exc, attempt + 1, self.max_retries,
                    )
        elapsed = time.monotonic() - started
        task = self._task_id
        self._clear_episode()
        last = failures[-1]
        if all(f.unreachable for f in failures):
            raise ServerUnavailable(
                f"the AgentGym {self.protocol.title} server at {self.base_url} is unreachable: "
                f"{len(failures)} attempts over {elapsed:.1f} s failed (last: {last}). Start it "
                f"(docs/agentgym.md) or fix base_url / ${URL_ENV_VAR}."
                + (f" The episode of {task} was abandoned: rerun it from reset()." if task else "")
            )
        raise EnvCrashed(
            f"the AgentGym {self.protocol.title} server at {self.base_url} failed "
            f"{len(failures)} times in a row over {elapsed:.1f} s while trying to {what} "
            f"(last: {last})."
            + (f" The episode of {task} was abandoned: rerun it from reset()." if task else "")
        )

    def _restore(self) -> None:
        """Bring a fresh env to the current episode's state by replaying it; EnvCrashed if the
        replay differs from what the caller already saw."""
        assert self._data_idx is not None
        self._new_env()
        observation, _, _ = self._reset_remote(self._data_idx)
        seen = [observation]
        for action in self._actions:
            seen.append(self._step_remote(action)[0])
        drift = find_drift(seen, [self._initial_observation, *self._observations])
        self._restored += 1
        self.recoveries += 1
        if drift:
            steps = ["reset" if k == 0 else k - 1 for k in drift]
            if self.recover_on_drift:
                logger.warning("AgentGym %s: restored %s with drift at %s", self.name,
                               self._task_id, steps)
                self._restored_drift = steps
                return
            task = self._task_id
            self._clear_episode()
            raise EnvCrashed(
                f"the AgentGym {self.protocol.title} server at {self.base_url} lost the env of "
                f"{task}, and replaying its {len(seen) - 1} actions on a new env did not "
                f"reproduce the observations the caller already saw (steps {steps}); rerun the "
                "episode from reset()."
            )
        logger.info("AgentGym %s: restored %s on env %s by replaying %d actions", self.name,
                    self._task_id, self._env_id, len(self._actions))

    # -- the Env interface --

    def reset(self, task_id: str, *, max_steps: int | None = None) -> str:
        """Start an episode of `task_id` ('<env>/<data_idx>'); returns the initial observation.

        With `max_steps`, the episode ends (`info['truncated']`) after that many actions.
        """
        if self._closed:
            raise EnvError("this AgentGymEnv is closed")
        _, data_idx = parse_agentgym_task_id(task_id, self.name)
        self._clear_episode()
        self._task_id = task_id

        def attempt(k: int) -> tuple[str, str, dict[str, Any]]:
            if k or self._env_id is None:
                self._new_env()
            return self._reset_remote(data_idx)

        try:
            observation, instruction, _ = self._with_retries(f"reset {task_id}", attempt)
        except BaseException:
            self._clear_episode()
            raise
        self._task_id, self._data_idx = task_id, data_idx
        self._instruction, self._initial_observation = instruction, observation
        self._max_steps = max_steps
        return observation

    def step(self, action: str) -> StepResult:
        if self._data_idx is None:
            raise EpisodeOver("no episode is running: call reset(task_id) first")
        if self._done:
            raise EpisodeOver(f"the episode of {self._task_id} is over: call reset() to start another")
        action = str(action)
        restored_before = self._restored
        self._restored_drift: list[Any] | None = None

        def attempt(k: int) -> tuple[str, float, bool, dict[str, Any]]:
            if k:
                self._restore()
            return self._step_remote(action)

        observation, raw, done, answer = self._with_retries(
            f"step {len(self._actions)} of {self._task_id}", attempt
        )
        previous = self._observations[-1] if self._observations else self._initial_observation
        self._actions.append(action)
        self._observations.append(observation)
        result = self._result(observation, raw, done, answer, previous)
        if self._restored != restored_before:
            result.info["recovered"] = self._restored - restored_before
            if self._restored_drift:
                result.info["recovered_drift"] = self._restored_drift
        return result

    def _result(self, observation: str, raw: float, done: bool, answer: Mapping[str, Any],
                previous: str) -> StepResult:
        p = self.protocol
        reward = raw / p.score_scale if p.score_scale else raw
        reward = min(1.0, max(0.0, reward))
        self._reward = reward
        n = len(self._actions)
        truncated = not done and self._max_steps is not None and n >= self._max_steps
        self._done = done or truncated
        stripped = observation.lstrip()
        invalid = bool(p.invalid_prefixes) and stripped.startswith(p.invalid_prefixes)
        if p.invalid_if_unchanged and observation == previous:
            invalid = True
        ambiguous = p.env == "sciworld" and stripped.startswith(_SCIWORLD_AMBIGUOUS)
        info: dict[str, Any] = {
            "invalid": invalid,
            "ambiguous": ambiguous,
            "score": raw,
            "done": bool(done),
            "truncated": truncated,
            "steps": n,
            "env_id": self._env_id,
        }
        if ambiguous:
            from eef_tasks.envs.scienceworld import parse_menu

            info["menu"] = parse_menu(observation)
        if isinstance(answer.get("available_actions"), list):
            info["available_actions"] = list(answer["available_actions"])
        return StepResult(observation, reward, self._done, info)

    def replay(
        self,
        actions: Sequence[str],
        recorded_observations: Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        max_steps: int | None = None,
    ) -> ReplayResult:
        """Reset `task_id` (default: the current task) and apply `actions` until the episode ends.

        The env is left in the state after the replay, so a policy can continue from it.
        `drift` lists the steps whose observation differs order-insensitively from
        `recorded_observations[k]`.
        """
        task_id = task_id or self._task_id
        if task_id is None:
            raise EpisodeOver("replay needs a task: pass task_id= or reset(task_id) first")
        self.reset(task_id, max_steps=max_steps)
        return replay_steps(
            self, task_id, self._instruction, self._initial_observation, actions,
            recorded_observations, self._reward,
        )

    # -- extras --

    def available_actions(self) -> Any:
        """GET /available_actions of the current env (WebShop: {has_search_bar, clickables};
        ALFWorld: a list). Not every server has it."""
        if self._env_id is None:
            raise EpisodeOver("no env yet: call reset(task_id) first")
        try:
            return self._request("GET", "/available_actions", params={self.protocol.id_key: self._env_id})
        except _Failure as exc:
            raise EnvError(f"GET /available_actions failed: {exc}") from exc


def _json_or_text(answer: httpx.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        return answer.text


# --- catalog ------------------------------------------------------------------------------------

# Index ranges [start, stop) per split, where a source defines them:
# - webshop: WebShop's own goal-index split (princeton-nlp/WebShop baseline_models/env.py: test
#   range(500), eval range(500, 1500), train range(1500, len(goals))) over the 6,910 synthetic
#   goals of the 1,000-product setting that agentenv-webshop runs (eef_tasks.envs.webshop.tasks).
#   AgentGym's WebShop server resets to goal `session_id` of its own goal list (its fork of
#   WebShop), and AgentGym's published splits are item-id lists (AgentEval / AgentTraj-L on
#   Hugging Face): use `item_ids=` for those. AgentGym's evaluation tutorial runs ids 0..199
#   (docs/tutorials/en/01-evaluation.md): `catalog("webshop", "test", limit=200)`.
# - alfworld: agentenv-alfworld/configs/mappings_train.json (item ids 0..2419, AgentTraj-L's
#   2,420 ALFWorld tasks) then mappings_test.json (2420..2619, AgentEval's 200).
# - sciworld: computed per data_idx from the game's own variation split (see `catalog`).
# - babyai, textcraft: AgentGym defines no ranges in code (BabyAI: level data_idx % 40 + 1 with
#   seed data_idx // 40; TextCraft: goal data_idx % n_goals); pass ranges= or item_ids=.
DEFAULT_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "webshop": {"test": (0, 500), "dev": (500, 1500), "train": (1500, 6910)},
    "alfworld": {"train": (0, 2420), "test": (2420, 2620)},
}


def _split_list(split: Split | Sequence[Split] | None) -> list[str]:
    if split is None:
        return ["train", "dev", "test"]
    chosen = [split] if isinstance(split, str) else list(split)
    for s in chosen:
        if s not in ("train", "dev", "test"):
            raise EnvError(f"unknown split {s!r}: choose train, dev or test")
    return chosen


def read_item_ids(source: str | Path | Iterable[Any], env: str | None = None) -> list[int]:
    """Data indices from AgentGym item ids: a JSON/JSONL file of records with 'item_id'
    ('webshop_12'), as AgentGym's AgentEval / AgentTraj-L files hold them, or an iterable of item
    ids, ints or records."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        items: Iterable[Any] = data if isinstance(data, list) else [data]
    else:
        items = source
    indices = []
    for item in items:
        raw = item.get("item_id", item.get("id")) if isinstance(item, Mapping) else item
        if isinstance(raw, int) and not isinstance(raw, bool):
            indices.append(raw)
            continue
        match = re.fullmatch(r"(?:(?P<env>[a-z_]+)_)?(?P<idx>\d+)", str(raw).strip())
        if not match:
            raise EnvError(f"AgentGym item id {raw!r} is not '<env>_<data_idx>'")
        if env is not None and match["env"] and match["env"] != protocol(env).env:
            raise EnvError(f"item id {raw!r} is not a {protocol(env).env} item")
        indices.append(int(match["idx"]))
    return indices


def catalog(
    env: str,
    split: Split | Sequence[Split] | None = None,
    *,
    ranges: Mapping[str, tuple[int, int] | range | Sequence[int]] | None = None,
    item_ids: str | Path | Iterable[Any] | None = None,
    limit: int | None = None,
    sciworld_split: str = "game",
) -> list[TaskSpec]:
    """AgentGym tasks as TaskSpecs ('<env>/<data_idx>', AgentGym's max rounds as max_steps).

    Which indices: `item_ids` (an AgentGym item-id file or list: all of them go to `split`, which
    must then be one split, default 'train'); else `ranges` ({split: (start, stop) or a list});
    else DEFAULT_RANGES (their sources are listed above it); SciWorld: every data_idx, split by
    the game's own train/dev/test variations (`sciworld_split='game'`) or restricted to ETO's
    split (`'eto'`, the pairs AgentGym's server can serve). `limit` keeps the first n per split.
    The instruction is None (it is the first observation's goal) except for SciWorld, where the
    game's task description is known from eef's shipped task table.
    """
    p = protocol(env)
    per_split: dict[str, list[int]] = {}
    if item_ids is not None:
        if split is not None and not isinstance(split, str):
            raise EnvError("item_ids= go to one split: pass split='train', 'dev' or 'test'")
        target = split or "train"
        _split_list(target)
        per_split[target] = read_item_ids(item_ids, p.env)
    elif ranges is not None:
        for s, r in ranges.items():
            _split_list(s)
            per_split[s] = list(range(*r)) if isinstance(r, tuple) else list(r)
    elif p.env == "sciworld":
        per_split = _sciworld_splits(sciworld_split)
    elif p.env in DEFAULT_RANGES:
        per_split = {s: list(range(*r)) for s, r in DEFAULT_RANGES[p.env].items()}
    else:
        raise EnvError(
            f"AgentGym's {p.title} has no published index ranges: pass ranges={{'train': (0, n)}} "
            "or item_ids= (an AgentGym item-id file, e.g. from AgentEval / AgentTraj-L)"
        )
    wanted = _split_list(split) if not (item_ids is not None) else list(per_split)
    specs: list[TaskSpec] = []
    for s in wanted:
        indices = per_split.get(s, [])
        if limit is not None:
            indices = indices[:limit]
        for idx in indices:
            specs.append(_spec(p, s, idx))  # type: ignore[arg-type]
    return specs


def _spec(p: Protocol, split: Split, idx: int) -> TaskSpec:
    meta: dict[str, Any] = {"data_idx": idx, "agentgym_env": p.title, "item_id": f"{p.env}_{idx}"}
    instruction = None
    if p.env == "sciworld":
        games = sciworld_games()
        if 0 <= idx < len(games):
            from eef_tasks.envs.scienceworld import instruction_for

            name, variation = games[idx]
            instruction = instruction_for(name, variation)
            meta.update(task_name=name, variation=variation,
                        scienceworld_task_id=f"scienceworld/{name}/{variation}")
    return TaskSpec(task_id=f"{p.env}/{idx}", env=p.env, split=split, instruction=instruction,
                    max_steps=p.max_steps, meta=meta)


def _sciworld_splits(which: str) -> dict[str, list[int]]:
    return {s: list(indices) for s, indices in _sciworld_splits_cached(which).items()}


@cache
def _sciworld_splits_cached(which: str) -> dict[str, tuple[int, ...]]:
    per_split = _compute_sciworld_splits(which)
    return {s: tuple(indices) for s, indices in per_split.items()}


def _compute_sciworld_splits(which: str) -> dict[str, list[int]]:
    from eef_tasks.envs import scienceworld as sw

    per_split: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    if which == "eto":
        index = _sciworld_index()
        for s in per_split:
            for spec in sw.catalog(s):  # type: ignore[arg-type]
                key = (spec.meta["task_name"], spec.meta["variation"])
                if key in index:
                    per_split[s].append(index[key])
        return per_split
    if which != "game":
        raise EnvError(f"sciworld_split must be 'game' or 'eto', not {which!r}")
    table = sw.task_table().get("tasks", {})
    where: dict[tuple[str, int], str] = {}
    for name, entry in table.items():
        for s, variations in entry["splits"].items():
            for v in variations:
                where[(name, int(v))] = s
    for idx, game in enumerate(sciworld_games()):
        s = where.get(game)
        if s in per_split:
            per_split[s].append(idx)
    return per_split


def find_task(task_id: str) -> TaskSpec:
    """A TaskSpec for an AgentGym task id (split from DEFAULT_RANGES / the SciWorld split when
    known, else 'train')."""
    env, idx = parse_agentgym_task_id(task_id)
    p = protocol(env)
    split: str = "train"
    if env == "sciworld":
        for s, indices in _sciworld_splits_cached("game").items():
            if idx in indices:
                split = s
                break
    else:
        for s, (start, stop) in DEFAULT_RANGES.get(env, {}).items():
            if start <= idx < stop:
                split = s
                break
    return _spec(p, split, idx)  # type: ignore[arg-type]


__all__ = [
    "AGENTGYM_ENVS", "AgentGymEnv", "DEFAULT_RANGES", "PROTOCOLS", "Protocol", "ServerUnavailable",
    "URL_ENV_VAR", "catalog", "find_task", "make_agentgym_task_id", "parse_agentgym_task_id",
    "protocol", "read_item_ids", "resolve_base_url", "sciworld_data_idx", "sciworld_games",
    "wait_for_server",
]

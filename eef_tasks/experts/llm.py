"""An LLM expert: any OpenAI-compatible chat endpoint acting in an environment, ReAct style.

GPT-4o, a local vLLM or llama.cpp server, `transformers serve` — anything that answers
`POST {base_url}/chat/completions` — plays the expert. It is prompted with the project's one chat
format (`eef_tasks.chat.build_chat`): the environment's system prompt, the task instruction, then
per action an assistant turn "Thought: …\\nAction: …" and a user turn "Observation: …". Its reply is
*parsed* (`parse_action`), never executed as code; the parsed action is sent to the environment as
text, and the environment's answer is the next observation.

    config = LLMExpertConfig(name="gpt-4o", model="gpt-4o", price_in=2.5, price_out=10.0)
    collect_experts("data/eef.duckdb", expert="llm", llm=config, split="train", n_workers=2)

Every trajectory is stored, success or failure (`expert=config.name`, traj_id
'<name>/<task_id>/<seed>'), with `meta` holding its token counts (from the responses' `usage`),
cost (`price_in`/`price_out`: dollars per 1M input/output tokens), the sampling settings, the model
name the server reported, and `base_url` with any credentials removed. `meta.calls` has one
`[prompt_tokens, completion_tokens, finish_reason, latency_s, retries]` per request.

- **API key**: from the environment variable `api_key_env` (default OPENAI_API_KEY) or the Prefect
  Secret block `api_key_secret`. It is sent only in a request header: never logged, never stored,
  never part of an error message (anything the server echoes back is scrubbed of it).
- **Errors**: 429, 408, 5xx, timeouts and connection errors are retried with exponential backoff
  (honouring Retry-After / retry-after-ms) up to `max_retries` times; anything else (401, 404, a
  400 for a wrong model name, …) and exhausted retries raise `LLMExpertError`: the collection stops,
  trajectories finished before are kept, the interrupted one is not written.
- **Bad replies** (empty, no parsable "Action:", junk) are not sent to the environment: they are
  counted (`meta.n_invalid`, `meta.invalid_replies`), the model is told the expected format and
  asked again. Each model call counts against the episode's step limit, and `max_invalid_in_a_row`
  bad replies in a row end the episode (`meta.stop_reason = 'invalid_replies'`). Actions the
  environment itself rejects are ordinary steps, listed in `meta.invalid_steps`.
- Episodes run in an `EnvPool` (one environment per worker process); the policy, and so every HTTP
  request, runs in the calling process, one request at a time.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eef_tasks.chat import build_chat
from eef_tasks.envs.base import EnvError, Split, TaskSpec
from eef_tasks.envs.pool import EnvPool, Episode, EpisodeResult, EpisodeView
from eef_tasks.records import StepRecord, TrajectoryRecord

if TYPE_CHECKING:
    from eef_tasks.collect import CollectSummary

LLM_EXPERT = "llm"  # the `expert=` value of collect_experts that selects this expert
RESERVED_NAMES = ("gold", "synthetic", LLM_EXPERT)
INVALID_REPLY_MESSAGE = (
    "Observation: Invalid format. Reply with one line 'Thought: <your reasoning>' and one line "
    "'Action: <one action>'."
)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

logger = logging.getLogger(__name__)


class LLMExpertError(EnvError):
    """The LLM endpoint failed for good (refused the request, or kept failing after retries)."""


# --- configuration --------------------------------------------------------------------------------


class LLMExpertConfig(BaseModel):
    """How to reach and sample the expert model; `name` is the trajectories' `expert` column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        None, description="expert name stored in trajectories.expert (default: the model's name)"
    )
    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible API root")
    model: str = Field("gpt-4o", description="model name sent in each request")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key")
    api_key_secret: str | None = Field(None, description="Prefect Secret block holding the key (wins)")
    api_key_header: str = Field(
        "Authorization", description="'Authorization' sends 'Bearer KEY'; any other header the bare key"
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1)
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    stop: list[str] | None = Field(None, description="stop sequences, e.g. ['\\nObservation:']")
    seed: int | None = Field(
        None, description="sampling seed sent with every request; None: the trajectory's seed"
    )
    price_in: float = Field(0.0, ge=0.0, description="dollars per 1M prompt tokens")
    price_out: float = Field(0.0, ge=0.0, description="dollars per 1M completion tokens")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubles each retry")
    max_backoff_s: float = Field(60.0, ge=0.0, description="longest wait between tries (Retry-After too)")
    max_steps: int | None = Field(
        None, gt=0, description="model calls per episode (default: the task's step limit)"
    )
    max_invalid_in_a_row: int = Field(3, ge=1)
    extra_body: dict[str, Any] | None = Field(None, description="more request fields, e.g. top_p")

    @model_validator(mode="after")
    def _name(self) -> LLMExpertConfig:
        if self.name is None:
            object.__setattr__(self, "name", self.model.rstrip("/").split("/")[-1] or self.model)
        if self.name in RESERVED_NAMES:
            raise ValueError(f"expert name {self.name!r} is reserved; choose another `name`")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:+-]*", self.name):
            raise ValueError(f"expert name {self.name!r}: letters, digits and . _ : + - only, no '/'")
        return self

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL, e.g. https://api.openai.com/v1")
        return value.rstrip("/")

    def public(self) -> dict[str, Any]:
        """The settings as stored in trajectory meta (no credentials)."""
        return {
            "model": self.model, "base_url": redact_url(self.base_url),
            "temperature": self.temperature, "max_tokens": self.max_tokens, "stop": self.stop,
            "extra_body": self.extra_body,
        }


_SECRET_PARAM = re.compile(r"key|token|secret|sig|password|auth", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` without user:password and without query parameters that look like credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not _SECRET_PARAM.search(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def resolve_api_key(config: LLMExpertConfig) -> str | None:
    """The API key: the Prefect Secret block `api_key_secret` if named, else $`api_key_env`;
    None when neither gives one (a local server needs none)."""
    if config.api_key_secret:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(config.api_key_secret).get()
        except Exception as exc:  # noqa: BLE001 - the message must not carry anything secret
            raise LLMExpertError(
                f"cannot load the Prefect Secret block {config.api_key_secret!r} "
                f"({type(exc).__name__}); create it in the Prefect UI or with "
                f"`Secret(value=...).save({config.api_key_secret!r})`"
            ) from None
        if not isinstance(value, str) or not value:
            raise LLMExpertError(f"the Prefect Secret block {config.api_key_secret!r} holds no string")
        return value
    key = os.environ.get(config.api_key_env) or None if config.api_key_env else None
    if key is None and "api.openai.com" in config.base_url:
        # OpenAI's own endpoint always needs a key: say so now instead of after a round of retries
        raise LLMExpertError(
            f"no API key for {config.base_url}: set ${config.api_key_env or 'OPENAI_API_KEY'} or name a "
            "Prefect Secret block (api_key_secret); local servers need no key (--base-url)"
        )
    return key


# --- parsing replies ------------------------------------------------------------------------------

_ACTION_LINE = re.compile(
    r"^[ \t>*_#-]*action(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*[:：][ \t]*[*_]*[ \t]*(?P<rest>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_THOUGHT_PREFIX = re.compile(r"^[ \t>*_#-]*thought(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*[:：][ \t]*[*_]*",
                             re.IGNORECASE | re.MULTILINE)
_OBSERVATION_LINE = re.compile(r"^[ \t>*_#-]*observation(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*[:：]",
                               re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"^```[\w-]*[ \t]*$", re.MULTILINE)
MAX_ACTION_CHARS = 200


def parse_action(text: str | None) -> tuple[str | None, str | None]:
    """(thought, action) from a model reply; action is None when the reply holds no usable one.

    Tolerant of the usual variations: any case, markdown emphasis or bullets around the labels
    ('**Action:** look around'), numbered labels ('Action 2:'), code fences and backticks, quotes,
    a full-width colon, the action on the line after its label, a trailing period, and a
    continuation the model invented ('Observation: …', a second Thought/Action): only the first
    action counts. A reply without an 'Action:' label is accepted only when it is one short line
    that looks like a command (e.g. 'look around'). The action is never evaluated, only returned.
    """
    if not text or not text.strip():
        return None, None
    body = _FENCE.sub("", text.replace("\r\n", "\n")).strip()
    match = _ACTION_LINE.search(body)
    if match is None:
        return _bare_action(body)
    before = body[: match.start()]
    thought = _clean_thought(before)
    rest = match["rest"]
    if not _strip_action(rest):  # the action on the next non-empty line
        following = body[match.end():].lstrip("\n").split("\n", 1)[0]
        if _OBSERVATION_LINE.match(following) or _THOUGHT_PREFIX.match(following):
            following = ""
        rest = following
    action = _strip_action(rest)
    return thought, action or None


def _clean_thought(text: str) -> str | None:
    obs = _OBSERVATION_LINE.search(text)
    if obs is not None:
        text = text[: obs.start()]
    text = _THOUGHT_PREFIX.sub("", text, count=1).strip().strip("*_").strip()
    return text or None


def _strip_action(text: str) -> str:
    action = text.strip().split("\n", 1)[0].strip()
    for _ in range(4):  # peel markdown, quotes and a closing period, in whatever order they come
        stripped = action.strip().strip("*_`").strip()
        if stripped.endswith(".") and not stripped.endswith(".."):
            stripped = stripped[:-1].rstrip()
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
            stripped = stripped[1:-1].strip()
        if stripped == action:
            break
        action = stripped
    if len(action) > MAX_ACTION_CHARS:
        return ""
    return action


_BARE_ACTION = re.compile(r"^[a-z][a-z0-9 '\-]*(\[[^\]\n]*\])?$", re.IGNORECASE)


def _bare_action(body: str) -> tuple[None, str | None]:
    """A reply that is nothing but a short command, e.g. 'look around' or 'click[Buy Now]': one
    line of at most 6 words, letters/digits/hyphens/apostrophes only (no sentence punctuation)."""
    candidate = body.strip().strip("*_`").strip()
    if "\n" in candidate or _THOUGHT_PREFIX.match(candidate):
        return None, None
    if len(candidate) <= 60 and len(candidate.split()) <= 6 and _BARE_ACTION.match(candidate):
        return None, candidate
    return None, None


# --- the HTTP client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One chat completion: the reply text and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    model: str | None
    latency_s: float
    retries: int
    usage_reported: bool


class ChatClient:
    """POSTs chat completions to an OpenAI-compatible endpoint, with retries (see module doc)."""

    def __init__(
        self,
        config: LLMExpertConfig,
        *,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self._key = api_key if api_key is not None else resolve_api_key(config)
        if self._key is None and config.api_key_env and not config.api_key_secret:
            logger.info("no API key in $%s: sending requests without one", config.api_key_env)
        parts = urlsplit(config.base_url)
        query_secrets = [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k)]
        self._secrets = [
            s for s in (self._key, parts.password, parts.username, *query_secrets) if s and len(s) >= 4
        ]
        auth = httpx.BasicAuth(parts.username or "", parts.password or "") if parts.username else None
        clean = parts._replace(
            netloc=parts.netloc.rsplit("@", 1)[-1], path=parts.path.rstrip("/") + "/chat/completions",
            fragment="",
        )
        self.url = urlunsplit(clean)
        self.safe_url = redact_url(self.url)
        self._sleep = sleep
        self._http = httpx.Client(timeout=config.timeout_s, auth=auth, transport=transport)
        self.calls = 0
        self.retries = 0
        # httpx logs every request URL (at INFO): keep credentials given in base_url out of logs
        self._log_filter = _ScrubFilter(self.scrub) if self._secrets else None
        if self._log_filter is not None:
            for name in _HTTP_LOGGERS:
                logging.getLogger(name).addFilter(self._log_filter)

    def close(self) -> None:
        self._http.close()
        if self._log_filter is not None:
            for name in _HTTP_LOGGERS:
                logging.getLogger(name).removeFilter(self._log_filter)
            self._log_filter = None

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChatClient({self.safe_url!r}, model={self.config.model!r})"

    def scrub(self, text: str) -> str:
        """`text` with the API key and URL credentials replaced by '***'."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            name = self.config.api_key_header
            headers[name] = f"Bearer {self._key}" if name.lower() == "authorization" else self._key
        return headers

    def body(self, messages: Sequence[dict[str, str]], seed: int | None = None) -> dict[str, Any]:
        c = self.config
        body: dict[str, Any] = {
            "model": c.model, "messages": list(messages), "temperature": c.temperature,
            c.max_tokens_field: c.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if c.stop:
            body["stop"] = list(c.stop)
        if c.extra_body:
            body.update(c.extra_body)
        return body

    def complete(self, messages: Sequence[dict[str, str]], *, seed: int | None = None) -> Completion:
        """One chat completion; transient failures retried, permanent ones raise LLMExpertError."""
        body = self.body(messages, seed)
        attempts = self.config.max_retries + 1
        self.calls += 1
        for attempt in range(attempts):
            started = time.monotonic()
            retry_after: float | None = None
            try:
                response = self._http.post(self.url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                why = f"no answer within {self.config.timeout_s:g} s"
            except httpx.TransportError as exc:
                why = f"connection failed ({type(exc).__name__}: {self.scrub(str(exc))[:200]})"
            else:
                if response.status_code == 200:
                    parsed = self._parse(response, time.monotonic() - started, attempt)
                    if isinstance(parsed, Completion):
                        return parsed
                    why = parsed
                elif response.status_code in RETRYABLE_STATUS:
                    why = f"HTTP {response.status_code}{self._detail(response)}"
                    retry_after = _retry_after(response.headers)
                else:
                    raise LLMExpertError(self._refused(response)) from None
            if attempt + 1 >= attempts:
                raise LLMExpertError(
                    f"{self.safe_url} kept failing: {why} (gave up after {attempts} tries; "
                    "raise max_retries or try again later)"
                )
            delay = self._delay(attempt, retry_after)
            self.retries += 1
            logger.warning(
                "LLM request to %s failed: %s; retry %d/%d in %.1f s",
                self.safe_url, why, attempt + 1, attempts - 1, delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.max_backoff_s
        if retry_after is not None:
            return min(max(retry_after, 0.0), cap)
        exp = self.config.backoff_s * (2 ** attempt)
        return min(cap, exp * random.uniform(0.75, 1.0))

    def _detail(self, response: httpx.Response) -> str:
        try:
            text = response.text
        except Exception:  # noqa: BLE001
            return ""
        text = " ".join(self.scrub(text).split())
        return f": {text[:300]}" if text else ""

    def _refused(self, response: httpx.Response) -> str:
        status = response.status_code
        hint = {
            401: "the API key was refused: set $%s or api_key_secret" % (self.config.api_key_env or "OPENAI_API_KEY"),
            403: "access denied for this key or model",
            404: f"no such endpoint or model (base_url should end in /v1; model={self.config.model!r})",
        }.get(status, "the request was refused")
        return f"{self.safe_url} answered HTTP {status}: {hint}{self._detail(response)}"

    def _parse(self, response: httpx.Response, latency_s: float, attempt: int) -> Completion | str:
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return f"a reply that is not a chat completion{self._detail(response)}"
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = data.get("usage") or {}
        return Completion(
            text=self.scrub(content) if isinstance(content, str) else "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
            model=data.get("model"),
            latency_s=round(latency_s, 3),
            retries=attempt,
            usage_reported=bool(usage),
        )


_HTTP_LOGGERS = ("httpx", "httpcore")


class _ScrubFilter(logging.Filter):
    """Rewrites log records of the HTTP libraries with the client's secrets masked."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let logging report it
            return True
        cleaned = self._scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from retry-after-ms (OpenAI) or Retry-After (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- the expert as a policy -----------------------------------------------------------------------


@dataclass
class _Episode:
    """The expert's side of one episode: what the environment does not keep."""

    traj_id: str
    task_id: str
    env: str
    seed: int
    max_steps: int | None
    thoughts: list[str | None] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)  # bad reply + format reminder
    calls: list[list[Any]] = field(default_factory=list)  # [prompt, completion, finish, latency, retries]
    invalid_replies: list[dict[str, Any]] = field(default_factory=list)
    invalid_in_a_row: int = 0
    stop_reason: str | None = None
    response_model: str | None = None
    usage_missing: int = 0
    discarded: dict[str, int] = field(default_factory=lambda: {"attempts": 0, "prompt_tokens": 0,
                                                               "completion_tokens": 0, "calls": 0})

    def restart(self) -> None:
        """The pool reran the episode from scratch: keep what the lost attempt cost, nothing else."""
        self.discarded["attempts"] += 1
        self.discarded["prompt_tokens"] += sum(c[0] for c in self.calls)
        self.discarded["completion_tokens"] += sum(c[1] for c in self.calls)
        self.discarded["calls"] += len(self.calls)
        self.thoughts, self.pending, self.calls, self.invalid_replies = [], [], [], []
        self.invalid_in_a_row, self.stop_reason, self.usage_missing = 0, None, 0


class LLMExpert:
    """The LLM as an `EnvPool` policy: `begin()` an episode, run it in the pool with this object
    as its policy (key = traj_id), then `record()` its result."""

    def __init__(self, config: LLMExpertConfig, *, client: ChatClient | None = None) -> None:
        self.config = config
        self.client = client or ChatClient(config)
        self.episodes: dict[str, _Episode] = {}
        self.fatal: LLMExpertError | None = None

    def close(self) -> None:
        self.client.close()

    def begin(self, traj_id: str, spec: TaskSpec, seed: int) -> Episode:
        limit = _min(spec.max_steps, self.config.max_steps)
        self.episodes[traj_id] = _Episode(traj_id, spec.task_id, spec.env, seed, limit)
        return Episode(spec.task_id, policy=self, max_steps=limit, key=traj_id)

    def request_seed(self, episode: _Episode) -> int | None:
        return self.config.seed if self.config.seed is not None else episode.seed

    def messages(self, view: EpisodeView, episode: _Episode) -> list[dict[str, str]]:
        steps = [
            {"thought": t, "action": a, "observation": o}
            for t, a, o in zip(episode.thoughts, view.actions, view.observations, strict=True)
        ]
        turns = build_chat(episode.env, view.instruction, steps, include_last_observation=True)
        return [t.message() for t in turns] + episode.pending

    def __call__(self, view: EpisodeView) -> str | None:
        episode = self.episodes[view.key]
        if self.fatal is not None:  # the endpoint is gone: end the other episodes quickly
            raise self.fatal
        if len(view.actions) < len(episode.thoughts) or (not view.actions and episode.calls):
            episode.restart()
        if len(view.actions) != len(episode.thoughts):
            raise LLMExpertError(f"{episode.traj_id}: the episode has actions the expert did not choose")
        while True:
            if episode.max_steps is not None and len(episode.calls) >= episode.max_steps:
                episode.stop_reason = "max_steps"
                return None
            try:
                completion = self.client.complete(
                    self.messages(view, episode), seed=self.request_seed(episode)
                )
            except LLMExpertError as exc:
                self.fatal = exc
                raise
            episode.calls.append([
                completion.prompt_tokens, completion.completion_tokens, completion.finish_reason,
                completion.latency_s, completion.retries,
            ])
            episode.response_model = completion.model or episode.response_model
            episode.usage_missing += not completion.usage_reported
            thought, action = parse_action(completion.text)
            if action is not None:
                episode.thoughts.append(thought)
                episode.pending = []
                episode.invalid_in_a_row = 0
                return action
            episode.invalid_replies.append(
                {"after_step": len(view.actions), "reply": completion.text[:300]}
            )
            episode.invalid_in_a_row += 1
            episode.pending = [
                {"role": "assistant", "content": completion.text.strip() or "(empty reply)"},
                {"role": "user", "content": INVALID_REPLY_MESSAGE},
            ]
            if episode.invalid_in_a_row >= self.config.max_invalid_in_a_row:
                episode.stop_reason = "invalid_replies"
                return None

    def record(self, result: EpisodeResult, spec: TaskSpec, *, env_meta: dict[str, Any] | None = None) -> TrajectoryRecord:
        """The finished episode as an expert trajectory (every step the environment took)."""
        episode = self.episodes.pop(result.key)
        c = self.config
        prompt = sum(call[0] for call in episode.calls)
        completion = sum(call[1] for call in episode.calls)
        if result.done and not result.truncated:
            stop_reason = "done"
        elif result.truncated or (
            episode.max_steps is not None and len(result.actions) >= episode.max_steps
        ):
            stop_reason = "max_steps"
        else:
            stop_reason = episode.stop_reason or "stopped"
        meta: dict[str, Any] = {
            "llm": {**c.public(), "seed": self.request_seed(episode),
                    "response_model": episode.response_model},
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost_usd": round(cost_usd(prompt, completion, c.price_in, c.price_out), 8),
            "price_in_per_1m": c.price_in,
            "price_out_per_1m": c.price_out,
            "n_calls": len(episode.calls),
            "n_invalid": len(episode.invalid_replies),
            "invalid_replies": episode.invalid_replies,
            "invalid_steps": list(result.invalid),
            "n_retries": sum(call[4] for call in episode.calls),
            "calls": episode.calls,
            "stop_reason": stop_reason,
            "max_steps": episode.max_steps,
            "initial_observation": result.initial_observation,
            "seed": episode.seed,
            **(env_meta or {}),
        }
        if episode.usage_missing:
            meta["usage_missing"] = episode.usage_missing
        if episode.discarded["attempts"]:
            meta["discarded"] = dict(episode.discarded)
        return TrajectoryRecord(
            traj_id=episode.traj_id, task_id=result.task_id, source="expert", expert=c.name,
            reward=result.reward, meta=meta,
            steps=[
                StepRecord(thought=t, action=a, observation=o, reward=r)
                for t, a, o, r in zip(
                    episode.thoughts, result.actions, result.observations, result.rewards, strict=True
                )
            ],
        )


def cost_usd(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    """Dollars for the tokens at `price_in`/`price_out` dollars per 1M tokens."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


def _min(a: int | None, b: int | None) -> int | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


# --- collection ---------------------------------------------------------------------------------


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
    batch_size: int = 50,
    simplifications: str | None = None,
    retries: int = 2,
    timeout_s: float = 600.0,
    progress: bool = True,
    pool: EnvPool | None = None,
    client: ChatClient | None = None,
) -> CollectSummary:
    """Run the LLM expert on tasks and store every trajectory (`collect_experts(expert='llm')`
    calls this). Resumable like the offline experts: traj_ids already stored are skipped before
    any request is made. Returns a `CollectSummary` with token and cost totals."""
    from eef_tasks.collect import CollectSummary, _progress, pending_episodes, select_tasks, write_batch
    from eef_tasks.envs.scienceworld import DEFAULT_SIMPLIFICATIONS, SCIENCEWORLD_VERSION
    from eef_tasks.experts import task_record, traj_id_for

    config = config if isinstance(config, LLMExpertConfig) else LLMExpertConfig.model_validate(config)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    simplifications = simplifications if simplifications is not None else DEFAULT_SIMPLIFICATIONS
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
    buffer: list[tuple[TrajectoryRecord, TaskSpec, str]] = []

    def flush() -> None:
        if not buffer:
            return
        write_batch(
            db_path,
            [r for r, _, _ in buffer],
            [task_record(spec, instruction) for _, spec, instruction in buffer],
            summary,
        )
        buffer.clear()

    own_pool = pool is None
    if pool is None:
        pool = EnvPool(min(n_workers, len(todo)), env, retries=retries, timeout_s=timeout_s,
                       simplifications=simplifications)
    elif pool.env_kwargs.get("simplifications", DEFAULT_SIMPLIFICATIONS) != simplifications:
        raise EnvError("the given pool's simplifications differ from the requested ones")
    episodes = [expert.begin(traj_id_for(name, spec.task_id, s), spec, s) for spec, s in todo]
    by_key = {ep.key: spec for ep, (spec, _) in zip(episodes, todo, strict=True)}
    bar = _progress(progress, len(todo), f"{name} expert")
    results = pool.imap(episodes)
    try:
        for _, result in results:
            spec = by_key[result.key]
            episode = expert.episodes.get(result.key)
            if episode is not None:
                summary.prompt_tokens += sum(c[0] for c in episode.calls) + episode.discarded["prompt_tokens"]
                summary.completion_tokens += sum(c[1] for c in episode.calls) + episode.discarded["completion_tokens"]
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
                buffer.append((record, spec, result.instruction))
                if len(buffer) >= batch_size:
                    flush()
            bar.advance(
                f"ok {summary.successes} · failed {summary.failures} · "
                f"${cost_usd(summary.prompt_tokens, summary.completion_tokens, config.price_in, config.price_out):.4f}"
            )
    finally:
        results.close()
        try:
            flush()  # finished trajectories are complete: keep them even when interrupted
        finally:
            bar.close()
            expert.close()
            if own_pool:
                pool.close()
            summary.cost_usd = round(cost_usd(
                summary.prompt_tokens, summary.completion_tokens, config.price_in, config.price_out
            ), 8)
            summary.elapsed_s = time.monotonic() - started
    if expert.fatal is not None:
        raise LLMExpertError(
            f"{expert.fatal} — stopped after {summary.written} trajectories were stored; "
            "rerun to resume"
        ) from None
    return summary


__all__ = [
    "ChatClient", "Completion", "INVALID_REPLY_MESSAGE", "LLMExpert", "LLMExpertConfig",
    "LLMExpertError", "LLM_EXPERT", "collect_llm", "cost_usd", "parse_action", "redact_url",
    "resolve_api_key",
]

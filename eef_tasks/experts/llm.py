"""An LLM expert: any OpenAI-compatible chat endpoint acting in an environment, ReAct style.

GPT-4o, a local vLLM or llama.cpp server, `transformers serve` — anything that answers
`POST {base_url}/chat/completions` — plays the expert. Each turn is the project's one agent loop
(`eef_tasks.agent`): the prompt is the one chat format (`eef_tasks.chat.build_chat`), the reply is
*parsed* (`chat.parse_action`), never executed as code; the parsed action is sent to the
environment as text, and the environment's answer is the next observation. Requests go through
the one OpenAI-compatible client (`eef_tasks.openai_http`).

    config = LLMExpertConfig(name="gpt-4o", model="gpt-4o", price_in=2.5, price_out=10.0)
    collect_experts("data/eef.duckdb", expert="llm", llm=config, split="train", n_workers=2)

Every trajectory is stored, success or failure (`expert=config.name`, traj_id
'<name>/<task_id>/<seed>'), with `meta` holding its token counts (from the responses' `usage`),
cost (`price_in`/`price_out`: dollars per 1M input/output tokens), the sampling settings, the model
name the server reported, and `base_url` with any credentials removed. `meta.calls` has one
`[prompt_tokens, completion_tokens, finish_reason, latency_s, retries]` per request.

- **API key**: from the environment variable `api_key_env` (default OPENAI_API_KEY) or the Prefect
  Secret block `api_key_secret`, stripped and checked where it is read (`eef_tasks.credentials`).
  It is sent only in a request header: never logged, never stored,
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
  request, runs in the calling process, one request at a time. `collect.collect_experts` drives
  the collection (`expert='llm'`); this module is the expert itself.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eef_tasks.agent import AgentEpisode, step_limit, stop_reason
from eef_tasks.credentials import clean_key
from eef_tasks.envs.base import EnvError, TaskSpec
from eef_tasks.envs.pool import Episode, EpisodeResult, EpisodeView
from eef_tasks.openai_http import OpenAIHTTP, RetryPolicy, RetryReply, redact_url
from eef_tasks.records import StepRecord, TrajectoryRecord

LLM_EXPERT = "llm"  # the `expert=` value of collect_experts that selects this expert
RESERVED_NAMES = ("gold", "synthetic", LLM_EXPERT)

logger = logging.getLogger(__name__)


class LLMExpertError(EnvError):
    """The LLM endpoint failed for good (refused the request, or kept failing after retries)."""


# --- configuration --------------------------------------------------------------------------------


class LLMExpertConfig(BaseModel):
    """How to reach and sample the expert model; `name` is the trajectories' `expert` column."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

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
        key = clean_key(value, f"the Prefect Secret block {config.api_key_secret!r}")
        if key is None:
            raise LLMExpertError(f"the Prefect Secret block {config.api_key_secret!r} holds only whitespace")
        return key
    key = clean_key(os.environ.get(config.api_key_env), f"${config.api_key_env}") if config.api_key_env else None
    if key is None and "api.openai.com" in config.base_url:
        # OpenAI's own endpoint always needs a key: say so now instead of after a round of retries
        raise LLMExpertError(
            f"no API key for {config.base_url}: set ${config.api_key_env or 'OPENAI_API_KEY'} or name a "
            "Prefect Secret block (api_key_secret); local servers need no key (--base-url)"
        )
    return key


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
    """Chat completions from the expert's endpoint (`openai_http.OpenAIHTTP`: retries, Retry-After,
    the key only in a header and scrubbed from everything else)."""

    def __init__(
        self,
        config: LLMExpertConfig,
        *,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        key = clean_key(api_key, "api_key") if api_key is not None else resolve_api_key(config)
        if key is None and config.api_key_env and not config.api_key_secret:
            logger.info("no API key in $%s: sending requests without one", config.api_key_env)
        self._http = OpenAIHTTP(
            config.base_url, api_key=key, api_key_header=config.api_key_header, timeout_s=config.timeout_s,
            policy=RetryPolicy(config.max_retries, config.backoff_s, config.max_backoff_s),
            error=LLMExpertError, hint="raise max_retries or try again later", sleep=sleep,
            transport=transport,
        )
        self.url = self._http.url("/chat/completions")
        self.safe_url = redact_url(self.url)
        self.calls = 0

    @property
    def retries(self) -> int:
        """Transient failures retried so far."""
        return self._http.retries

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChatClient({self.safe_url!r}, model={self.config.model!r})"

    def scrub(self, text: str) -> str:
        """`text` with the API key and URL credentials replaced by '***'."""
        return self._http.scrub(text)

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
        self.calls += 1
        return self._http.send("POST", "/chat/completions", self.body(messages, seed),
                               what="asking for a chat completion", read=self._read)

    def _read(self, response: httpx.Response, attempt: int, latency_s: float) -> Completion:
        if response.status_code != 200:
            raise LLMExpertError(self._refused(response)) from None
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise RetryReply(f"a reply that is not a chat completion{self._http.detail(response)}") from None
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

    def _refused(self, response: httpx.Response) -> str:
        status = response.status_code
        hint = {
            401: "the API key was refused: set $%s or api_key_secret" % (self.config.api_key_env or "OPENAI_API_KEY"),
            403: "access denied for this key or model",
            404: f"no such endpoint or model (base_url should end in /v1; model={self.config.model!r})",
        }.get(status, "the request was refused")
        return f"{self.safe_url} answered HTTP {status}: {hint}{self._http.detail(response)}"


# --- the expert as a policy -----------------------------------------------------------------------


@dataclass
class ExpertEpisode:
    """One episode of the expert: the agent's state plus what the requests cost."""

    traj_id: str
    task_id: str
    seed: int
    agent: AgentEpisode
    calls: list[list[Any]] = field(default_factory=list)  # [prompt, completion, finish, latency, retries]
    response_model: str | None = None
    usage_missing: int = 0
    discarded: dict[str, int] = field(default_factory=lambda: {"attempts": 0, "prompt_tokens": 0,
                                                               "completion_tokens": 0, "calls": 0})

    @property
    def prompt_tokens(self) -> int:
        return sum(c[0] for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c[1] for c in self.calls)

    def restart(self) -> None:
        """The pool reran the episode from scratch: keep what the lost attempt cost, nothing else."""
        self.discarded["attempts"] += 1
        self.discarded["prompt_tokens"] += self.prompt_tokens
        self.discarded["completion_tokens"] += self.completion_tokens
        self.discarded["calls"] += len(self.calls)
        self.calls, self.usage_missing = [], 0
        self.agent.reset()


class LLMExpert:
    """The LLM as an `EnvPool` policy: `begin()` an episode, run it in the pool with this object
    as its policy (key = traj_id), then `record()` its result."""

    def __init__(self, config: LLMExpertConfig, *, client: ChatClient | None = None) -> None:
        self.config = config
        self.client = client or ChatClient(config)
        self.episodes: dict[str, ExpertEpisode] = {}
        self.fatal: LLMExpertError | None = None

    def close(self) -> None:
        self.client.close()

    def begin(self, traj_id: str, spec: TaskSpec, seed: int) -> Episode:
        limit = step_limit(spec.max_steps, self.config.max_steps)
        agent = AgentEpisode(spec.env, limit, self.config.max_invalid_in_a_row)
        self.episodes[traj_id] = ExpertEpisode(traj_id, spec.task_id, seed, agent)
        return Episode(spec.task_id, policy=self, max_steps=limit, key=traj_id)

    def request_seed(self, episode: ExpertEpisode) -> int | None:
        return self.config.seed if self.config.seed is not None else episode.seed

    def __call__(self, view: EpisodeView) -> str | None:
        episode = self.episodes[view.key]
        if self.fatal is not None:  # the endpoint is gone: end the other episodes quickly
            raise self.fatal
        if episode.agent.restarted(view):
            episode.restart()
        if len(view.actions) != len(episode.agent.thoughts):
            raise LLMExpertError(f"{episode.traj_id}: the episode has actions the expert did not choose")

        return episode.agent.turn(view, partial(self._ask, episode))

    def _ask(self, episode: ExpertEpisode, messages: list[dict[str, str]]) -> str:
        """One request of the episode's turn: its reply text, its cost kept in `episode.calls`."""
        try:
            completion = self.client.complete(messages, seed=self.request_seed(episode))
        except LLMExpertError as exc:
            self.fatal = exc
            raise
        episode.calls.append([
            completion.prompt_tokens, completion.completion_tokens, completion.finish_reason,
            completion.latency_s, completion.retries,
        ])
        episode.response_model = completion.model or episode.response_model
        episode.usage_missing += not completion.usage_reported
        return completion.text

    def record(self, result: EpisodeResult, spec: TaskSpec, *, env_meta: dict[str, Any] | None = None) -> TrajectoryRecord:
        """The finished episode as an expert trajectory (every step the environment took)."""
        episode = self.episodes.pop(result.key)
        agent = episode.agent
        c = self.config
        prompt, completion = episode.prompt_tokens, episode.completion_tokens
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
            "n_invalid": len(agent.invalid_replies),
            "invalid_replies": agent.invalid_replies,
            "invalid_steps": list(result.invalid),
            "n_retries": sum(call[4] for call in episode.calls),
            "calls": episode.calls,
            "stop_reason": stop_reason(result, agent),
            "max_steps": agent.max_steps,
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
                    agent.thoughts, result.actions, result.observations, result.rewards, strict=True
                )
            ],
        )


def cost_usd(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    """Dollars for the tokens at `price_in`/`price_out` dollars per 1M tokens."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


__all__ = [
    "ChatClient", "Completion", "ExpertEpisode", "LLMExpert", "LLMExpertConfig", "LLMExpertError",
    "LLM_EXPERT", "RESERVED_NAMES", "cost_usd", "resolve_api_key",
]

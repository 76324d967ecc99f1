"""The vllm engine: samples from a vLLM server (its OpenAI-compatible API), LoRA adapters
included.

vLLM pins its own torch and web-stack versions, so it runs as a separate server (its own venv or
the compose service `vllm`, see docs/vllm.md) and eef talks to it over HTTP:

    engine = VLLMEngine("http://localhost:8000/v1", "smollm2-135m-instruct", "data/adapters/r1/eef-it1")
    run_rollouts(db, "r1", 1, episodes, purpose="explore", engine=engine)   # meta.engine = 'vllm'

It is an `eef_tasks.engines.Engine` (`session`, `generate`, `model_path`, `adapter_dir`) with
`name = "vllm"`; its requests go through the one OpenAI-compatible client, `eef_tasks.openai_http`:

- `generate(requests, sampling)` sends one `POST {base_url}/chat/completions` per (session,
  messages), all at once (a thread pool of `max_concurrency`; vLLM batches them itself), with
  `model` = the served name of the adapter (or the base model), `temperature`, `top_p`,
  `max_tokens` = `sampling.max_new_tokens` and a `seed` derived from the session's seed and its
  turn number, so a rerun of an episode sends the same seeds (vLLM honours them; whether the
  samples are then identical depends on the server's batching and kernels). Replies come back as
  `Generation(text, token_ids=[], finish_reason, prompt_tokens, prefill_tokens)` from the response's
  `usage` (`prefill_tokens` = prompt tokens less `prompt_tokens_details.cached_tokens` when the
  server reports them). A reply with no choices is an empty reply (the driver counts it invalid).
- **Adapters** are loaded with vLLM's runtime LoRA API, `POST {base_url}/load_lora_adapter`
  `{"lora_name": NAME, "lora_path": PATH}` (server started with `--enable-lora` and
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`). vLLM reads the weights when the adapter is loaded and
  keeps serving them under NAME, so NAME carries the adapter's content: `<prefix>-<first 12 hex of
  sha256(adapter_config.json, adapter weights)>` (prefix: the adapter folder's name). A retrained
  adapter in the same folder gets a new name, so a stale one is never served; an "already loaded"
  answer for the same NAME is fine. PATH is the folder as the *server* sees it:
  `adapter_path_on_server`, by default the local absolute path (the compose file mounts ./data at
  the same path in the worker and in the vLLM container). If the server forgot the adapter (it was
  restarted), a 404 for it makes the engine load it again and retry.
- **Errors**: connection failures, timeouts, 408/429/5xx are retried with exponential backoff
  (honouring Retry-After) `retries` times (`openai_http`); then, and for any other refusal,
  `VLLMError` (an `EnvError`, so the CLI prints one line) naming the URL and what to check.
- **Replicas**: `base_url` may list several servers of the same model, comma-separated. Each
  request goes to the live replica with the fewest requests in flight (ties round robin;
  `engines.replicas`). Before the first request, every replica is checked (it serves the base
  model) and given the adapter, in parallel. A replica whose request kept failing
  (retried `replica_retries` times, `VLLMUnreachable`) is marked dead and the request goes to another, so
  the episode goes on; a dead replica is probed in the background `probe_s` later (then at doubling
  intervals up to `max_probe_s`) and rejoins once it answers, serves the base model and has the
  adapter again (the name rules above hold per replica). With every replica dead, each is probed
  once more, then `VLLMError` names them all. One URL behaves as a single server always did: its
  retries are `retries`, and its error is raised as it is.
- **API key**: `$VLLM_API_KEY` (or `api_key_env`, or `api_key=`), stripped and checked by
  `eef_tasks.credentials`, goes only into the `Authorization: Bearer` header; it is never logged,
  stored or part of an error message. user:password in the URL (a proxy) is sent as Basic auth,
  and refused together with a key (both would need the Authorization header).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from eef_tasks.credentials import clean_key
from eef_tasks.engines import Generation, SamplingConfig, Session
from eef_tasks.engines.replicas import ReplicaSet
from eef_tasks.envs.base import EnvError
from eef_tasks.models import is_full_checkpoint
from eef_tasks.openai_http import OpenAIHTTP, RetryPolicy, error_message, redact_url

logger = logging.getLogger(__name__)

ENGINE_NAME = "vllm"
URL_ENV = "EEF_VLLM_URL"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# a failing adapter load is retried only for these (a 500 there is the adapter's fault, e.g. rank)
_LOAD_RETRY_STATUS = frozenset({408, 425, 429, 502, 503, 504})
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_SERVER_HINT = "is the vLLM server running and reachable? (docs/vllm.md)"


class VLLMError(EnvError):
    """The vLLM server is unreachable or refused a request; the message says what to check."""


@dataclass
class VLLMSession(Session):
    """A conversation on the server: no cache on this side, only the turn count (for the seeds)."""

    turns: int = 0

    def reset(self) -> None:
        super().reset()
        self.turns = 0


def request_seed(session_seed: int, turn: int) -> int:
    """The `seed` of a session's `turn`-th request: stable across processes, 31 bits."""
    digest = hashlib.sha256(f"{session_seed}/{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """sha256 (hex) of a LoRA adapter folder's config and weights."""
    folder = Path(adapter_dir)
    if is_full_checkpoint(folder):
        raise VLLMError(f"{folder} is a full fine-tuned model (finetune='full'), not a LoRA adapter: the vllm engine "
                        "serves LoRA adapters on its base model; use engine=hf, or serve that folder as the model")
    config = folder / "adapter_config.json"
    weights = next((folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if not config.is_file() or weights is None:
        raise VLLMError(
            f"{folder} is not a LoRA adapter folder (it needs adapter_config.json and "
            f"{' or '.join(ADAPTER_WEIGHTS)}; `eef train` writes them)"
        )
    h = hashlib.sha256()
    for path in (config, weights):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def adapter_served_name(adapter_dir: str | Path, prefix: str | None = None) -> str:
    """`<prefix>-<12 hex of the adapter's content hash>`; prefix defaults to the folder's name."""
    prefix = _NAME_CHARS.sub("-", prefix if prefix is not None else Path(adapter_dir).resolve().name)
    return f"{prefix.strip('-') or 'adapter'}-{adapter_fingerprint(adapter_dir)[:12]}"


def base_urls(text: str) -> list[str]:
    """The OpenAI base URLs in `text`: one, or several comma-separated (replicas of one model),
    each ending in /v1 (a bare http://host:port gets /v1); query strings are dropped."""
    urls: list[str] = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VLLMError(f"not an http(s) URL: {redact_url(raw)!r} (e.g. http://localhost:8000/v1)")
        path = parts.path.rstrip("/") or "/v1"  # vLLM serves its OpenAI routes under /v1
        url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        if url in urls:
            raise VLLMError(f"the vLLM URLs list {redact_url(url)} twice")
        urls.append(url)
    if not urls:
        raise VLLMError(f"no vLLM server URL in {redact_url(text)!r} (e.g. http://localhost:8000/v1)")
    return urls


class VLLMUnreachable(VLLMError):  # noqa: N818 - a VLLMError, named for what happened
    """A server kept failing (connection errors, timeouts, 429/5xx) until its retries were spent."""


@dataclass
class _Replica:
    """One server: its clients and whether it has been checked and given the adapter."""

    client: OpenAIHTTP  # requests, with the engine's retries (several replicas: replica_retries)
    probe: OpenAIHTTP | None  # with several replicas: probes of a dead one, no retries
    lock: threading.Lock = field(default_factory=threading.Lock)  # its readiness and adapter loads
    ready: bool = False

    @property
    def url(self) -> str:
        return self.client.safe_url


def _one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit]


class VLLMEngine:
    """Samples replies from a vLLM server, or several replicas of it, optionally through a LoRA
    adapter loaded at run time."""

    name = ENGINE_NAME

    def __init__(
        self,
        base_url: str | None,
        base_model: str | None = None,
        adapter_dir: str | Path | None = None,
        *,
        adapter_name_prefix: str | None = None,
        adapter_path_on_server: str | None = None,
        api_key_env: str | None = "VLLM_API_KEY",
        api_key: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 300.0,
        retries: int = 8,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        replica_retries: int = 2,
        probe_s: float = 5.0,
        max_probe_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`base_url`: the server's OpenAI base URL (…/v1; a bare http://host:port gets /v1), or
        several comma-separated (replicas serving the same model), by default $EEF_VLLM_URL.
        `base_model`: the base model's served name (`vllm serve --served-model-name`); None asks
        the server (which must then serve exactly one). With several replicas a request tries one
        replica `replica_retries` + 1 times (at most `retries` + 1) before it is marked dead and the
        request goes to another; a dead replica is probed `probe_s` later, then at doubling
        intervals up to `max_probe_s`."""
        base_url = base_url or os.environ.get(URL_ENV)
        if not base_url:
            raise VLLMError(f"no vLLM server URL: pass one (--vllm-url) or set ${URL_ENV}, "
                            "e.g. http://localhost:8000/v1")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if replica_retries < 0:
            raise ValueError("replica_retries must be >= 0")
        urls = base_urls(base_url)
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        self.adapter_name = adapter_served_name(adapter_dir, adapter_name_prefix) if adapter_dir else None
        self.adapter_path_on_server = (
            (adapter_path_on_server or str(Path(adapter_dir).resolve())) if adapter_dir else None
        )
        if api_key is not None:
            key = clean_key(api_key, "api_key")
        else:  # stripped and checked where it is read: a key from a file often ends in a newline
            key = clean_key(os.environ.get(api_key_env), f"${api_key_env}") if api_key_env else None
        several = len(urls) > 1
        policy = RetryPolicy(min(retries, replica_retries) if several else retries, backoff_s, max_backoff_s)

        def client(url: str, policy: RetryPolicy, error: type[VLLMError]) -> OpenAIHTTP:
            # user:password in the URL (a proxy in front of the server) is Basic auth; with a key
            # too it is refused (both need the Authorization header)
            # a replica's failure is one part of the all-down line, which gives the hint once
            return OpenAIHTTP(
                url, api_key=key or None, timeout_s=timeout_s, policy=policy, error=error,
                label=redact_url(url) if several else f"the vLLM server at {redact_url(url)}",
                hint="" if several else _SERVER_HINT, keep_query=False,
                max_connections=max_concurrency, sleep=sleep, transport=transport,
            )

        self._reps: list[_Replica] = []
        try:
            for url in urls:
                self._reps.append(_Replica(
                    client(url, policy, VLLMUnreachable),
                    client(url, RetryPolicy(0, backoff_s, max_backoff_s), VLLMUnreachable) if several else None,
                ))
        except BaseException:
            self._close_clients()
            raise
        self.base_urls = [r.client.base_url for r in self._reps]
        self.safe_urls = [r.url for r in self._reps]
        self.base_url = ",".join(self.base_urls)
        self.safe_url = ", ".join(self.safe_urls)
        self._replicas = ReplicaSet(self.safe_urls, probe_s=probe_s, max_probe_s=max_probe_s)
        self.max_concurrency = max_concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # engine readiness and the pool
        self._ready = False
        self._failovers = 0
        if base_model:
            self.base_model = base_model
        else:
            try:
                self.base_model = self._only_base_model()
            except BaseException:
                self._close_clients()
                raise

    @property
    def retries(self) -> int:
        """Transient failures retried so far (on the same server)."""
        return sum(r.client.retries for r in self._reps)

    @property
    def failovers(self) -> int:
        """Requests sent to another replica after theirs was marked dead."""
        return self._failovers

    def replica_stats(self) -> list[dict[str, Any]]:
        """Per replica, in URL order: url, live, in_flight, served, deaths."""
        return [{"url": s.url, "live": not s.dead, "in_flight": s.in_flight, "served": s.served,
                 "deaths": s.deaths} for s in self._replicas.states()]

    # -- the interface run_rollouts uses --

    @property
    def model_path(self) -> str:
        """The base model's served name (what `meta.model_path` records for this engine)."""
        return self.base_model

    @property
    def served_model(self) -> str:
        """The `model` of the requests: the adapter's served name, else the base model."""
        return self.adapter_name or self.base_model

    def session(self, key: str, seed: int = 0) -> VLLMSession:
        return VLLMSession(key=key, seed=seed)

    def generate(
        self, requests: Sequence[tuple[Session, Sequence[dict[str, str]]]], sampling: SamplingConfig
    ) -> list[Generation]:
        """One reply per (session, messages); the requests go to the server(s) concurrently."""
        if not requests:
            return []
        self.ensure_ready()
        seeds = []
        for session, _ in requests:
            turn = getattr(session, "turns", 0)
            seeds.append(request_seed(session.seed, turn))
            if isinstance(session, VLLMSession):
                session.turns = turn + 1
        jobs = [(list(messages), seed) for (_, messages), seed in zip(requests, seeds, strict=True)]
        if len(jobs) == 1:
            results = [self._complete(jobs[0][0], sampling, jobs[0][1])]
        else:
            pool = self._executor()
            futures: list[Future] = [pool.submit(self._complete, m, sampling, s) for m, s in jobs]
            results = []
            try:
                for future in futures:
                    results.append(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        out = []
        for (session, _), (text, finish, prompt, prefill, completion) in zip(requests, results, strict=True):
            session.prompt_tokens += prompt
            session.prefill_tokens += prefill
            session.completion_tokens += completion
            out.append(Generation(text=text, token_ids=[], finish_reason=finish,
                                  prompt_tokens=prompt, prefill_tokens=prefill))
        return out

    # -- server state --

    def ensure_ready(self) -> None:
        """Once: check that every live replica serves the base model and load the adapter (if any)
        into each, in parallel; a replica that does not answer is marked dead (with one URL: the
        error). A replica that comes back later is checked and given the adapter before it gets
        requests (`_probe`)."""
        if self._ready:
            return
        pool = self._executor() if len(self._reps) > 1 else None
        with self._lock:
            if self._ready:
                return
            live = self._replicas.live()
            if pool is None or len(live) < 2:
                outcomes = {i: self._attempt(self._prepare, self._reps[i]) for i in live}
            else:
                futures = {i: pool.submit(self._attempt, self._prepare, self._reps[i]) for i in live}
                outcomes = {i: f.result() for i, f in futures.items()}
            for i, error in outcomes.items():
                if error is not None:
                    self._fail_replica(i, error)
            if not self._replicas.live():
                self._probe_all_now()
                if not self._replicas.live():
                    raise VLLMError(self._all_down())
            self._ready = True

    @staticmethod
    def _attempt(step: Callable[[_Replica], None], rep: _Replica) -> VLLMUnreachable | None:
        """`step(rep)`; a server that does not answer is returned, any other error raised."""
        try:
            step(rep)
        except VLLMUnreachable as exc:
            return exc
        return None

    def _prepare(self, rep: _Replica, client: OpenAIHTTP | None = None) -> None:
        """Check that `rep` serves the base model and give it the adapter (once)."""
        client = client or rep.client
        with rep.lock:
            if rep.ready:
                return
            models = self._served_models(client)
            if self.base_model not in models:
                raise VLLMError(
                    f"the vLLM server at {client.safe_url} does not serve the model {self.base_model!r} "
                    f"(it serves {sorted(models)}): pass the name given to `vllm serve "
                    "--served-model-name` (--served-model)"
                )
            if self.adapter_name and self.adapter_name not in models:
                self._load_adapter(client)
            rep.ready = True

    def served_models(self) -> dict[str, dict[str, Any]]:
        """The `/models` listing of the (first live) server: id -> model card (vLLM lists loaded
        adapters too, with `parent` = their base model)."""
        live = self._replicas.live()
        return self._served_models(self._reps[live[0] if live else 0].client)

    def _served_models(self, client: OpenAIHTTP) -> dict[str, dict[str, Any]]:
        response = client.send("GET", "/models", None, what="listing models")
        if response.status_code != 200:
            raise VLLMError(self._refused(client, response, "/models"))
        try:
            cards = response.json()["data"]
            return {str(c["id"]): c for c in cards}
        except (ValueError, KeyError, TypeError) as exc:
            raise VLLMError(f"{client.safe_url}/models answered something that is not a model list "
                            f"({type(exc).__name__}){client.detail(response)}") from None

    def _only_base_model(self) -> str:
        """The one base model the servers serve (the first replica that answers says)."""
        for i, rep in enumerate(self._reps):
            try:
                models = self._served_models(rep.client)
            except VLLMUnreachable as exc:
                self._fail_replica(i, exc)
                continue
            bases = [name for name, card in models.items() if not card.get("parent")]
            if len(bases) != 1:
                raise VLLMError(f"the vLLM server at {rep.url} serves {sorted(bases) or 'no'} base "
                                "models: name one with --served-model")
            return bases[0]
        raise VLLMError(self._all_down())

    def load_adapter(self) -> None:
        """(Re)load this engine's adapter into every live replica under its content-hashed name."""
        for i in self._replicas.live():
            rep = self._reps[i]
            with rep.lock:
                error = self._attempt(lambda r: self._load_adapter(r.client), rep)
            if error is not None:
                self._fail_replica(i, error)

    def _load_adapter(self, client: OpenAIHTTP) -> None:
        if not self.adapter_name:
            return
        url = client.safe_url
        logger.info("loading LoRA adapter %s as %r into %s", self.adapter_dir, self.adapter_name, url)
        body = {"lora_name": self.adapter_name, "lora_path": self.adapter_path_on_server}
        response = client.send("POST", "/load_lora_adapter", body, what="loading the adapter",
                               retry_status=_LOAD_RETRY_STATUS)
        if response.status_code == 200:
            return
        message = error_message(response)
        if response.status_code == 400 and message and "already" in message.lower():
            return  # the same content under the same name
        if response.status_code == 404 and message is None:
            raise VLLMError(
                f"the server at {url} has no /load_lora_adapter: start vLLM with --enable-lora "
                "and the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (docs/vllm.md)"
            )
        raise VLLMError(
            f"the vLLM server at {url} could not load the adapter {self.adapter_dir} from "
            f"{self.adapter_path_on_server!r} (HTTP {response.status_code}"
            f"{': ' + client.scrub(message)[:300] if message else ''}); the path must be the adapter folder "
            "as the server sees it (adapter_path_on_server / --adapter-path-on-server) and its LoRA rank "
            "at most the server's --max-lora-rank"
        )

    def unload_adapter(self) -> bool:
        """Ask every live replica to forget this engine's adapter; False if none knew it."""
        if not self.adapter_name:
            return False
        known = False
        for i in self._replicas.live():
            client = self._reps[i].client
            try:
                response = client.send("POST", "/unload_lora_adapter", {"lora_name": self.adapter_name},
                                       what="unloading the adapter", retry_status=_LOAD_RETRY_STATUS)
            except VLLMUnreachable as exc:
                self._fail_replica(i, exc)  # one URL: raises
                continue
            if response.status_code == 200:
                known = True
            elif not (response.status_code in (400, 404) and error_message(response)):
                raise VLLMError(self._refused(client, response, "/unload_lora_adapter"))
        with self._lock:
            self._ready = False
            for rep in self._reps:
                rep.ready = False
        return known

    # -- replicas --

    def _fail_replica(self, index: int, error: VLLMUnreachable) -> None:
        """Mark a replica that kept failing dead; with one URL there is no other: the error."""
        if len(self._reps) == 1:
            raise error
        if self._replicas.mark_dead(index, _one_line(error)):
            logger.warning("vLLM replica %s is down, its requests go to the others (probed again in "
                           "%g s): %s", self._reps[index].url, self._replicas.probe_s, _one_line(error))

    def _start_due_probes(self) -> None:
        """Probe, in the background, each dead replica whose wait is over."""
        if len(self._reps) == 1:
            return
        for i in self._replicas.claim_probes():
            threading.Thread(target=self._probe, args=(i,), name=f"eef-vllm-probe-{i}", daemon=True).start()

    def _probe(self, index: int) -> None:
        """Is a dead replica back? It rejoins only once it serves the base model and has the
        adapter (a restarted server forgot it)."""
        rep = self._reps[index]
        with rep.lock:
            rep.ready = False
        try:
            self._prepare(rep, rep.probe)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the replica stays out
            self._replicas.probe_done(index, False, _one_line(exc))
            logger.info("vLLM replica %s is still down: %s", rep.url, _one_line(exc))
        else:
            self._replicas.probe_done(index, True)
            logger.warning("vLLM replica %s answers again: back in the rotation%s", rep.url,
                           f" (adapter {self.adapter_name} loaded)" if self.adapter_name else "")

    def _probe_all_now(self) -> None:
        """No replica is live: probe every dead one now (and wait for probes already under way)."""
        for i in self._replicas.claim_probes(due_only=False):
            self._probe(i)
        self._replicas.wait_for_probes(self._reps[0].client.timeout_s)

    def _all_down(self) -> str:
        states = self._replicas.states()
        whys = "; ".join(s.why for s in states if s.why)
        return (f"every vLLM replica is down ({', '.join(s.url for s in states)})"
                f"{': ' + whys if whys else ''}; {_SERVER_HINT}")

    # -- requests --

    def _complete(
        self, messages: list[dict[str, str]], sampling: SamplingConfig, seed: int
    ) -> tuple[str, str, int, int, int]:
        """One chat completion on the live replica with the fewest requests in flight; if that
        replica kept failing, it is marked dead and the request goes to another."""
        body = {
            "model": self.served_model, "messages": messages, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens, "seed": seed, "n": 1,
        }
        probed, failed = False, False
        while True:
            self._start_due_probes()
            index = self._replicas.acquire()
            if index is None:
                if probed:
                    raise VLLMError(self._all_down())
                probed = True
                self._probe_all_now()
                continue
            if failed:
                with self._lock:
                    self._failovers += 1
            served = False
            try:
                result = self._complete_on(self._reps[index], body)
                served = True
                return result
            except VLLMUnreachable as exc:
                self._fail_replica(index, exc)  # one URL: raises
                failed = True
            finally:
                self._replicas.release(index, served)

    def _complete_on(self, rep: _Replica, body: dict[str, Any]) -> tuple[str, str, int, int, int]:
        client = rep.client
        response = client.send("POST", "/chat/completions", body, what="a chat completion")
        if response.status_code == 404 and self.adapter_name:
            # the server lost the adapter (restarted since it was loaded): load it again, once
            logger.warning("%s does not know the adapter %r: loading it again", rep.url, self.adapter_name)
            with rep.lock:
                self._load_adapter(client)
            response = client.send("POST", "/chat/completions", body, what="a chat completion")
        if response.status_code != 200:
            raise VLLMError(self._refused(client, response, "/chat/completions"))
        try:
            data = response.json()
            choices = data.get("choices") or []
            usage = data.get("usage") or {}
        except (ValueError, AttributeError):
            raise VLLMError(f"{rep.url}/chat/completions answered something that is not a chat "
                            f"completion{client.detail(response)}") from None
        text, finish = "", "empty"
        if choices and isinstance(choices[0], dict):
            message = choices[0].get("message") or {}
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = content if isinstance(content, str) else ""
            finish = choices[0].get("finish_reason") or "stop"
        prompt = int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        return text, str(finish), prompt, max(0, prompt - cached), int(usage.get("completion_tokens") or 0)

    def scrub(self, text: str) -> str:
        """`text` with the API key and URL credentials (of every replica) replaced by '***'."""
        for rep in self._reps:
            text = rep.client.scrub(text)
        return text

    def _refused(self, client: OpenAIHTTP, response: httpx.Response, path: str) -> str:
        status = response.status_code
        hint = {
            401: "the API key was refused: set $VLLM_API_KEY to the server's --api-key",
            403: "access denied",
            404: f"no such route or model (the URL should end in /v1; model={self.served_model!r})",
        }.get(status, "the request was refused")
        return f"{client.safe_url}{path} answered HTTP {status}: {hint}{client.detail(response)}"

    # -- lifetime --

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="eef-vllm")
            return self._pool

    def _close_clients(self) -> None:
        for rep in self._reps:
            rep.client.close()
            if rep.probe is not None:
                rep.probe.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if len(self._reps) > 1:
            logger.info("vLLM replicas: %s", ", ".join(
                f"{s['url']} served {s['served']} (down {s['deaths']}x)" for s in self.replica_stats()))
        self._close_clients()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLLMEngine({self.safe_url!r}, model={self.served_model!r})"


__all__ = [
    "ENGINE_NAME", "URL_ENV", "VLLMEngine", "VLLMError", "VLLMSession", "VLLMUnreachable",
    "adapter_fingerprint", "adapter_served_name", "base_urls", "request_seed",
]

"""The one HTTP client for OpenAI-compatible servers: the LLM expert's endpoint and the vLLM server.

It owns what every request to such a server needs, so that no caller re-derives it:

- **URLs**: credentials written into the base URL (user:password) become Basic auth and are never
  part of a URL that is logged or raised; with an API key that takes the Authorization header too,
  they are refused (`credentials.check_auth_conflict`), never a silently unsent key.
- **The API key** goes only into a request header (`Authorization: Bearer KEY`, or the bare key in
  another header, e.g. Azure's `api-key`), stripped and checked by `credentials.clean_key`. Every
  form of the key, the URL credentials and query parameters that look like credentials is masked
  (`***`, `credentials.Scrubber`) in error messages, in server answers echoed into them and in the
  records httpx and httpcore log.
- **Retries**: connection errors, timeouts and the statuses in `retry_status` (429, 408, 5xx, …)
  are retried with exponential backoff (jittered, capped at `max_backoff_s`), honouring
  `retry-after-ms` (OpenAI) and `Retry-After` (seconds or an HTTP date); when the tries are spent
  the caller's error class is raised with one line saying where, why and what to check.

Callers (`experts.llm.ChatClient`, `engines.vllm.VLLMEngine`) build the request bodies, read the
answers and word their own refusals (a 401, a 404) from `detail`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from eef_tasks.credentials import LogMask, Scrubber, check_auth_conflict, clean_key, redact_url

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


def retry_after(headers: httpx.Headers) -> float | None:
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


def error_message(response: httpx.Response) -> str | None:
    """The message of an OpenAI/vLLM error body ({"error": {"message"}}, {"error": "…"} or
    {"message"}), or None when the body is not one (e.g. FastAPI's {"detail": "Not Found"} for a
    missing route)."""
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    if isinstance(data.get("message"), str):
        return data["message"]
    return None


class RetryReply(Exception):  # noqa: N818 - a signal, not an error the user sees
    """Raised by a `send(read=...)` callback: this answer is unusable (e.g. not a chat
    completion), so it is retried like a transient failure; the message says why."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    retries: int = 6
    backoff_s: float = 1.0  # the first delay; doubles each retry
    max_backoff_s: float = 60.0  # the longest wait between tries (Retry-After included)

    def delay(self, attempt: int, after: float | None) -> float:
        if after is not None:
            return min(max(after, 0.0), self.max_backoff_s)
        return min(self.max_backoff_s, self.backoff_s * (2 ** attempt) * random.uniform(0.75, 1.0))


class OpenAIHTTP:
    """Requests to one OpenAI-compatible server (see module doc); thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        api_key_header: str = "Authorization",
        timeout_s: float,
        policy: RetryPolicy,
        error: type[Exception],
        label: str | None = None,
        hint: str = "",
        keep_query: bool = True,
        max_connections: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`label` names the server in messages (default: its redacted URL), `hint` says what to
        check once the retries are spent; `keep_query=False` drops the base URL's query string."""
        parts = urlsplit(base_url)
        # callers clean the key where they read it (naming its source); again here for direct use
        self._key = clean_key(api_key, "api_key")
        self._key_header = api_key_header
        check_auth_conflict(base_url, self._key, api_key_header)
        self.scrub = Scrubber.for_client(base_url, self._key)
        auth = httpx.BasicAuth(parts.username or "", parts.password or "") if parts.username else None
        self._scheme, self._netloc = parts.scheme, parts.netloc.rsplit("@", 1)[-1]
        self._path, self._query = parts.path.rstrip("/"), parts.query if keep_query else ""
        self.base_url = self.url("")
        self.safe_url = redact_url(self.base_url)
        self.label = label or self.safe_url
        self.hint = hint
        self.timeout_s = timeout_s
        self.policy = policy
        self.error = error
        self._sleep = sleep
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections) \
            if max_connections else httpx.Limits()
        self._http = httpx.Client(timeout=timeout_s, auth=auth, transport=transport, limits=limits)
        self._lock = threading.Lock()
        self.retries = 0  # transient failures retried so far
        self._log_mask = LogMask(self.scrub)

    def url(self, path: str) -> str:
        """The URL of `path` (e.g. '/chat/completions') under the base URL, without credentials."""
        return urlunsplit((self._scheme, self._netloc, self._path + path, self._query, ""))

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._key:
            name = self._key_header
            headers[name] = f"Bearer {self._key}" if name.lower() == "authorization" else self._key
        return headers

    def detail(self, response: httpx.Response) -> str:
        """': <the answer's body, scrubbed, on one line, at most 300 characters>' or ''."""
        try:
            text = " ".join(self.scrub(response.text).split())
        except Exception:  # noqa: BLE001 - a body that cannot be read adds nothing
            return ""
        return f": {text[:300]}" if text else ""

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        what: str,
        retry_status: frozenset[int] = RETRYABLE_STATUS,
        read: Callable[[httpx.Response, int, float], Any] | None = None,
    ) -> Any:
        """The server's answer to one request, transient failures retried (see module doc).

        Without `read`, the first answer whose status is not in `retry_status` is returned. With
        it, that answer goes to `read(response, attempt, latency_s)`, whose result is returned; it
        may raise `RetryReply` (retried) or any error of its own (passed on, not retried).
        """
        attempts = self.policy.retries + 1
        for attempt in range(attempts):
            started = time.monotonic()
            after: float | None = None
            try:
                response = self._http.request(method, self.url(path), json=body, headers=self.headers())
            except httpx.TimeoutException:
                why = f"no answer within {self.timeout_s:g} s"
            except httpx.TransportError as exc:
                why = f"connection failed ({type(exc).__name__}: {self.scrub(str(exc))[:200]})"
            else:
                if response.status_code in retry_status:
                    why = f"HTTP {response.status_code}{self.detail(response)}"
                    after = retry_after(response.headers)
                elif read is None:
                    return response
                else:
                    try:
                        return read(response, attempt, time.monotonic() - started)
                    except RetryReply as exc:
                        why = str(exc)
            if attempt + 1 >= attempts:
                raise self.error(
                    f"{self.label} kept failing: {why} (while {what}; gave up after {attempts} tries"
                    f"{'; ' + self.hint if self.hint else ''})"
                )
            delay = self.policy.delay(attempt, after)
            with self._lock:
                self.retries += 1
            logger.warning("%s: %s failed: %s; retry %d/%d in %.1f s",
                           self.label, what, why, attempt + 1, attempts - 1, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._http.close()
        self._log_mask.close()


__all__ = [
    "OpenAIHTTP", "RETRYABLE_STATUS", "RetryPolicy", "RetryReply", "error_message", "redact_url",
    "retry_after",
]

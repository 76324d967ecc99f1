"""API keys and URL credentials: how eef reads them, keeps them out of parameters, and masks them.

One home for the rules every HTTP client of eef follows (the LLM expert's and the vLLM engine's):

- `clean_key`: a key is read once, where it is read (an environment variable, a Prefect Secret
  block, an argument), stripped of surrounding whitespace (a key read from a file often ends in a
  newline) and checked to be a valid HTTP header value. A bad key is an error naming where it came
  from, never its value.
- `refuse_url_credentials`: a URL given as a parameter (flow parameters, CLI options, run
  settings) carries no credentials (user:password, or a key in its query): Prefect stores
  parameters in clear. The error says how to pass the key instead.
- `check_auth_conflict`: user:password in a URL becomes an `Authorization: Basic` header, which
  replaces a Bearer key; both at once is an error, never a silently unsent key.
- `Scrubber`: masks every representation of the secrets (the text, its Python and bytes repr,
  percent-encoding, the base64 of a Basic header) in error messages and, through `LogMask`,
  in the HTTP libraries' log records.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from eef_tasks.errors import UserError

# query parameters whose value is a credential (api-key, access_token, sig, password, …)
SECRET_PARAM = re.compile(r"key|token|secret|sig|password|auth", re.IGNORECASE)
# what an HTTP header value may hold: visible ASCII, no spaces or control characters
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
# log records of these libraries carry request URLs and, in errors, header values
HTTP_LOGGERS = ("httpx", "httpcore")
MASK = "***"
# shorter strings are not masked: masking 'a' everywhere would garble messages, and a
# credential that short protects nothing anyway
_MIN_SECRET_CHARS = 4


class CredentialError(UserError):
    """A key or URL credential cannot be used as given; the message never contains its value."""


def clean_key(value: str | None, source: str) -> str | None:
    """The key `value` stripped of surrounding whitespace; None when nothing is left.

    `source` names where it came from ('$OPENAI_API_KEY', "Prefect Secret block 'k'") for the
    error raised when the key holds characters no HTTP header can carry."""
    if value is None:
        return None
    key = value.strip()
    if not key:
        return None
    if not _HEADER_SAFE.fullmatch(key):
        raise CredentialError(
            f"the API key in {source} holds a space, a control character or a non-ASCII "
            "character, which an HTTP header cannot carry: check how the key was written there"
        )
    return key


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries: user, password and secret-looking query values."""
    parts = urlsplit(url)
    found = [parts.username, parts.password]
    found += [value for name, value in parse_qsl(parts.query, keep_blank_values=True)
              if SECRET_PARAM.search(name)]
    return [unquote(s) for s in found if s]


def has_url_credentials(url: str) -> bool:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return True
    return any(SECRET_PARAM.search(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True))


def refuse_url_credentials(url: str, what: str, how: str) -> str:
    """`url` when it carries no credentials, else ValueError (so pydantic validators can use it).

    `what` names the parameter ('base_url'), `how` says where the key goes instead. A
    comma-separated list of URLs (several servers, e.g. vllm_url's replicas) is checked URL by URL: the
    credentials of a later one sit in the first one's path, where urlsplit does not see them."""
    for part in (*url.split(","), url):  # the parts first: redact_url of the whole misses theirs
        if has_url_credentials(part.strip()):
            raise ValueError(
                f"{what} {redact_url(part.strip())!r} carries credentials (user:password or a key in "
                f"the query), and parameters are stored in clear: {how}"
            )
    return url


def check_auth_conflict(url: str, key: str | None, header: str = "Authorization") -> None:
    """user:password in `url` and a key sent in the Authorization header cannot both be sent."""
    if key and header.lower() == "authorization" and urlsplit(url).username is not None:
        raise CredentialError(
            f"{redact_url(url)} carries user:password and an API key is set: both go in the "
            "Authorization header, so the key would not be sent. Drop one of them (or send the "
            "key in another header, e.g. api_key_header='api-key')"
        )


def redact_url(url: str) -> str:
    """`url` without user:password and without query parameters that look like credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port: leave it out rather than fail while reporting
        port = None
    netloc = host + (f":{port}" if port else "")
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not SECRET_PARAM.search(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _representations(secret: str) -> set[str]:
    """The ways a secret shows up in text: itself, escaped as Python writes str and bytes
    reprs (h11's 'Illegal header value b'Bearer sk-…\\n''), and percent-encoded."""
    forms = {secret, repr(secret)[1:-1], repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
             quote(secret, safe=""), quote(secret)}
    return {form for form in forms if len(form) >= _MIN_SECRET_CHARS}


@dataclass(frozen=True)
class Scrubber:
    """Masks secrets in text. Build it with `for_client` from what a client holds."""

    forms: tuple[str, ...] = ()

    @classmethod
    def for_client(cls, url: str, *keys: str | None) -> Scrubber:
        secrets = [k for k in keys if k] + url_secrets(url)
        forms: set[str] = set()
        for secret in secrets:
            forms |= _representations(secret)
        parts = urlsplit(url)
        if parts.username is not None:  # the Basic header httpx builds from user:password
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            forms |= _representations(base64.b64encode(pair.encode()).decode())
        # longest first, so that a form containing another is masked whole
        return cls(tuple(sorted(forms, key=len, reverse=True)))

    def __bool__(self) -> bool:
        return bool(self.forms)

    def __call__(self, text: str) -> str:
        for form in self.forms:
            text = text.replace(form, MASK)
        return text


class _ScrubFilter(logging.Filter):
    """Rewrites log records with the secrets masked (message and exception text)."""

    def __init__(self, scrub: Scrubber) -> None:
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
        if record.exc_info and record.exc_info[1] is not None:
            # the traceback text would repeat the exception's message unmasked
            record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__}: {self._scrub(str(record.exc_info[1]))})"
            record.exc_info, record.exc_text = None, None
        return True


class LogMask:
    """Masks the secrets in the HTTP libraries' log records until `close()` (the clients hold one
    for their lifetime: httpx logs every request URL at INFO)."""

    def __init__(self, scrub: Scrubber, loggers: tuple[str, ...] = HTTP_LOGGERS) -> None:
        self._filter = _ScrubFilter(scrub) if scrub else None
        self._loggers = loggers
        if self._filter is not None:
            for name in loggers:
                logging.getLogger(name).addFilter(self._filter)

    def close(self) -> None:
        if self._filter is not None:
            for name in self._loggers:
                logging.getLogger(name).removeFilter(self._filter)
            self._filter = None


# Where keys go instead of a URL, as the refusals say it (one sentence each, per client).
LLM_KEY_HINT = (
    "put the key in an environment variable (api_key_env, default $OPENAI_API_KEY) or a Prefect "
    "Secret block (api_key_secret); a key the server reads from the query can usually go in a "
    "header instead (api_key_header, e.g. 'api-key')"
)
ENV_URL_HINT = (
    "a URL with user:password may come from $EEF_AGENTGYM_<ENV>_URL or $EEF_AGENTGYM_URL, the environment, "
    "never from a parameter"
)
VLLM_KEY_HINT = (
    "put the key in $VLLM_API_KEY; a URL with user:password (a proxy) may come from $EEF_VLLM_URL, "
    "the environment, never from a parameter"
)

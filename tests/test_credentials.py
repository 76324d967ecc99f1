"""Keys and URL credentials (eef_tasks.credentials) through both HTTP clients, against a real
HTTP server in a thread: a key is stripped and checked where it is read, never shows up in an
error or a log line in any of its forms, and a URL with credentials is refused wherever it would
be stored as a parameter (flow parameters, run settings, the CLI)."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from eef_tasks.credentials import CredentialError, Scrubber, clean_key, has_url_credentials, redact_url
from eef_tasks.experts.llm import ChatClient, LLMExpertConfig, LLMExpertError

KEY = "sk-eef-sec-41c9e2b7a05d3f68-NEVER-PRINT"
KEY_ENV = "EEF_TEST_SECURITY_KEY"
EEF = Path(sys.executable).with_name("eef")


class Recorder:
    """A real HTTP server: answers chat completions and /v1/models, records each request's headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, payload: dict) -> None:
                recorder.headers.append(dict(self.headers))
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._answer({"choices": [{"message": {"content": "Action: look around"},
                                           "finish_reason": "stop"}], "usage": {}})

            def do_GET(self):  # noqa: N802
                self._answer({"object": "list", "data": [{"id": "base-m", "parent": None}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug records included
    return caplog


def _config(url: str, **kw) -> LLMExpertConfig:
    return LLMExpertConfig(name="sec-test", model="m", base_url=url, api_key_env=KEY_ENV,
                           max_retries=1, backoff_s=0.01, **kw)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r", " \t"])
def test_a_key_read_with_a_line_ending_is_stripped_and_sent(server, logs, monkeypatch, ending):
    """A key read from a file ends in a newline: it used to go into the header as is, so httpx
    refused it and printed it in full (Illegal header value b'Bearer sk-…\\n')."""
    monkeypatch.setenv(KEY_ENV, KEY + ending)
    with ChatClient(_config(server.url)) as client:
        assert client.complete([{"role": "user", "content": "hi"}]).text == "Action: look around"
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in logs.text


def test_the_vllm_engine_strips_its_key_too(server, logs, monkeypatch):
    from eef_tasks.engines.vllm import VLLMEngine

    monkeypatch.setenv("VLLM_API_KEY", "\n" + KEY + "\n")
    with VLLMEngine(server.url, None) as engine:  # asks the server for its one base model
        assert engine.base_model == "base-m"
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in logs.text


@pytest.mark.parametrize("bad", [KEY[:10] + "\n" + KEY[10:], KEY + "\x01", "sk-" + "é" * 8, "sk-a b-cdef"])
def test_a_key_no_header_can_carry_is_refused_without_showing_it(server, monkeypatch, bad):
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(CredentialError, match=f"API key in \\${KEY_ENV} holds") as err:
        ChatClient(_config(server.url))
    assert KEY[:10] not in str(err.value) and "é" not in str(err.value)
    from eef_tasks.engines.vllm import VLLMEngine

    monkeypatch.setenv("VLLM_API_KEY", bad)
    with pytest.raises(CredentialError, match="API key in \\$VLLM_API_KEY holds"):
        VLLMEngine(server.url, "base-m")
    assert server.headers == []  # nothing was sent


def test_clean_key():
    assert clean_key(None, "$X") is None and clean_key(" \n", "$X") is None
    assert clean_key("  sk-1234\r\n", "$X") == "sk-1234"


def test_every_representation_of_a_secret_is_masked():
    key = "sk-q/w+e=r\n"
    scrub = Scrubber.for_client("http://eefuser:pa%24%24word@h:1/v1?api_key=qk-123456&x=1", key)
    basic = base64.b64encode(b"eefuser:pa$$word").decode()
    leaks = [
        key, repr(key), repr(key.encode()), f"Illegal header value b'Bearer {key!r}'",
        "sk-q%2Fw%2Be%3Dr%0A", "pa$$word", "pa%24%24word", "eefuser", basic, "qk-123456",
    ]
    for text in leaks:
        masked = scrub(f"before {text} after")
        assert "sk-q" not in masked and "pa$$" not in masked and "pa%24" not in masked, masked
        assert basic not in masked and "qk-123456" not in masked and "eefuser" not in masked, masked
    assert scrub("nothing secret here") == "nothing secret here"


def test_a_url_user_password_and_a_bearer_key_cannot_both_be_sent(server, monkeypatch):
    """Basic auth from the URL replaced the Bearer header: the key was silently not sent."""
    monkeypatch.setenv(KEY_ENV, KEY)
    url = server.url.replace("http://", "http://eefuser:hunter2-pass@")
    with pytest.raises(CredentialError, match="the key would not be sent") as err:
        ChatClient(_config(url))
    assert "hunter2" not in str(err.value) and KEY not in str(err.value)
    # a key in another header goes with Basic auth
    with ChatClient(_config(url, api_key_header="api-key")) as client:
        client.complete([{"role": "user", "content": "hi"}])
    assert server.headers[0]["api-key"] == KEY
    assert server.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"eefuser:hunter2-pass").decode()


CREDENTIAL_URLS = [
    "http://eefuser:hunter2-pass@127.0.0.1:9/v1",
    "http://eefuser@127.0.0.1:9/v1",
    "https://api.example.com/v1?api-key=qs-secret-123",
    "https://api.example.com/v1?access_token=qs-secret-123",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_flow_parameters_refuse_credentials_in_urls(url):
    from flows.collect import CollectParams
    from flows.pipeline import ExperimentParams, RunParams
    from flows.seeds import SeedsParams

    assert has_url_credentials(url) and "hunter2" not in redact_url(url) and "qs-secret" not in redact_url(url)
    with pytest.raises(ValidationError, match="api_key_env") as err:
        CollectParams(expert="llm", llm={"base_url": url, "model": "m", "name": "x"})
    assert "hunter2" not in str(err.value) and "qs-secret" not in str(err.value)
    for make in (lambda: RunParams(run={"run_id": "r", "engine": "vllm", "vllm_url": url}),
                 lambda: ExperimentParams(overrides={"vllm_url": url}),
                 lambda: SeedsParams(overrides={"vllm_url": url})):
        with pytest.raises(ValidationError, match="VLLM_API_KEY") as err:
            make()
        assert "hunter2" not in str(err.value) and "qs-secret" not in str(err.value)
    # an AgentGym server list too: env_url is stored in runs.config like vllm_url
    for make in (lambda: RunParams(run={"run_id": "r", "env": "agentgym:webshop", "env_url": url}),
                 lambda: RunParams(run={"run_id": "r", "env": "agentgym:webshop",
                                        "env_url": f"http://127.0.0.1:36001,{url}"})):
        with pytest.raises(ValidationError, match="EEF_AGENTGYM_") as err:
            make()
        assert "hunter2" not in str(err.value) and "qs-secret" not in str(err.value)
    # the same URLs without credentials are fine
    CollectParams(expert="llm", llm={"base_url": redact_url(url), "model": "m", "name": "x"})
    RunParams(run={"run_id": "r", "engine": "vllm", "vllm_url": redact_url(url)})
    RunParams(run={"run_id": "r", "env": "agentgym:webshop", "env_url": redact_url(url)})


def _eef(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EEF), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_the_cli_refuses_credentials_in_urls_and_says_where_keys_go(tmp_path):
    db = str(tmp_path / "s.duckdb")
    url = CREDENTIAL_URLS[0]
    cases = [
        (["collect", "--db", db, "--expert", "llm", "--model", "m", "--base-url", url], "api_key_env"),
        (["collect", "--db", db, "--expert", "llm", "--llm-config", json.dumps({"model": "m", "base_url": url})],
         "api_key_env"),
        (["rollout", "--db", db, "--run", "r", "--iteration", "1", "--purpose", "explore",
          "--engine", "vllm", "--vllm-url", url], "VLLM_API_KEY"),
        (["run", "--db", db, "--set", f"vllm_url={url}"], "VLLM_API_KEY"),
    ]
    for args, hint in cases:
        result = _eef(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert hint in result.stderr and "carries credentials" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout

"""The LLM expert against a real OpenAI-compatible server (`transformers serve`) running a real small
model (SmolLM2-135M-Instruct, the project's default checkpoint), in real ScienceWorld episodes.

Errors are injected by a small real HTTP server in a thread that sits between the expert and the
model server: it answers some requests itself (429 with Retry-After, 503, 401, a slow answer, a
scripted reply) and forwards the others to the model server. Nothing in the client is mocked.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import format_datetime
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from eef_tasks import interrupt, store
from eef_tasks.collect import collect_experts
from eef_tasks.envs.pool import EnvPool
from eef_tasks.chat import parse_action
from eef_tasks.experts.llm import ChatClient, LLMExpertConfig, LLMExpertError, cost_usd, resolve_api_key
from eef_tasks.openai_http import redact_url, retry_after

import processes  # noqa: E402 - tests/processes.py

os.environ["HF_HUB_OFFLINE"] = "1"

FAKE_KEY = "sk-eef-test-9f3b2c71d0a4e6-DO-NOT-LEAK"
KEY_ENV = "EEF_TEST_LLM_KEY"
TASK = "scienceworld/find-living-thing/0"
TASK2 = "scienceworld/find-plant/3"


# --- parsing (no server needed) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "thought", "action"),
    [
        ("Thought: I need water.\nAction: teleport to kitchen", "I need water.", "teleport to kitchen"),
        ("thought: look first\naction: look around", "look first", "look around"),
        ("**Thought:** hmm\n**Action:** open door to kitchen", "hmm", "open door to kitchen"),
        ("Thought: x\nAction: `pick up thermometer`.", "x", "pick up thermometer"),
        ("Thought: x\nAction: \"focus on red box\"", "x", "focus on red box"),
        ("Thought: x\nAction:\nlook around\n", "x", "look around"),
        ("Thought 3: x\nAction 3: wait1", "x", "wait1"),
        ("Action： look around", None, "look around"),
        ("I should look around.\nAction: look around", "I should look around.", "look around"),
        ("```\nThought: x\nAction: look around\n```", "x", "look around"),
        (
            "Thought: go\nAction: teleport to kitchen\nObservation: You teleport.\n"
            "Thought: now\nAction: look around",
            "go", "teleport to kitchen",
        ),
        ("Thought: click it\nAction: click[Buy Now]", "click it", "click[Buy Now]"),
        ("look around", None, "look around"),
        ("  teleport to kitchen  ", None, "teleport to kitchen"),
        ("`open door to kitchen`", None, "open door to kitchen"),
        ("click[Buy Now]", None, "click[Buy Now]"),
    ],
)
def test_parse_action_accepts_the_usual_variations(reply, thought, action):
    assert parse_action(reply) == (thought, action)


@pytest.mark.parametrize(
    "junk",
    [
        None, "", "   \n ", "Thought: I am not sure what to do.", "Action:", "Action:   \n\n",
        "The task is to find a living thing.\n\nThe answer is:\n\nYou can't find it.",
        "What action?", "How would you do that?", "nonsense, truly.", "I think so.",
        "Let me think about it for a while first",
        "Sure! Here is a detailed plan for finding the living thing in this house today.",
        "Thought: x\nAction: " + "a" * 500,
        "Action:\nObservation: nothing",
        "\x00\x01\x02",
        "import os; os.system('rm -rf /')",
    ],
)
def test_parse_action_rejects_junk(junk):
    assert parse_action(junk)[1] is None


def test_redact_url_andretry_after():
    assert redact_url("https://user:pw@api.example.com:8443/v1?api-key=s3cret&api-version=2024") == (
        "https://api.example.com:8443/v1?api-version=2024"
    )
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert retry_after(httpx.Headers({"retry-after": "2"})) == 2.0
    assert retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after(httpx.Headers({"retry-after": later})) <= 31
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert cost_usd(1_000_000, 500_000, 2.5, 10.0) == pytest.approx(7.5)


def test_config_names_and_validation():
    assert LLMExpertConfig(model="gpt-4o").name == "gpt-4o"
    assert LLMExpertConfig(model="/models/smollm2-135m-instruct/").name == "smollm2-135m-instruct"
    for bad in ("gold", "synthetic", "a/b"):
        with pytest.raises(ValueError):
            LLMExpertConfig(name=bad)
    with pytest.raises(ValueError):
        LLMExpertConfig(base_url="ftp://example.com")


def test_collect_needs_a_config_for_the_llm_expert(db_path):
    from eef_tasks.envs.base import EnvError

    with pytest.raises(EnvError, match="needs llm=LLMExpertConfig"):
        collect_experts(db_path, expert="llm", task_ids=[TASK])


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    assert resolve_api_key(LLMExpertConfig(api_key_env=KEY_ENV)) == FAKE_KEY
    monkeypatch.delenv(KEY_ENV)
    local = LLMExpertConfig(api_key_env=KEY_ENV, base_url="http://127.0.0.1:8000/v1")
    assert resolve_api_key(local) is None  # a local server needs no key
    with pytest.raises(LLMExpertError, match="no API key"):  # OpenAI's endpoint always does
        resolve_api_key(LLMExpertConfig(api_key_env=KEY_ENV))


def test_api_key_from_a_prefect_secret_block(monkeypatch):
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=120):
        Secret(value=FAKE_KEY).save("eef-test-llm-key", overwrite=True)
        config = LLMExpertConfig(api_key_secret="eef-test-llm-key", api_key_env=None)
        assert resolve_api_key(config) == FAKE_KEY
        with pytest.raises(LLMExpertError, match="cannot load the Prefect Secret block") as err:
            resolve_api_key(LLMExpertConfig(api_key_secret="no-such-block"))
        assert FAKE_KEY not in str(err.value)


# --- the real model server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_server(model_path, tmp_path_factory) -> Iterator[str]:
    """`transformers serve` on a free localhost port, serving the default checkpoint."""
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        pytest.skip("the `transformers` command is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # one compute thread: on CI's 2 cores, beside the other xdist worker, a server with a thread per
    # core oversubscribes them and one 48-token answer took from 10 s to over 60 s (stop 32)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", str(model_path), "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
            preexec_fn=interrupt.die_with_parent,  # never outlives a killed test run
        )
    base = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http(f"{base}/v1/models", proc, log, 180, "transformers serve", on_failure=pytest.fail,
                            interval_s=0.5)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def canned(text: str, prompt_tokens: int = 11, completion_tokens: int = 7) -> dict:
    return {
        "id": "scripted", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class FaultInjector:
    """A real HTTP server in a thread: answers each request with the next scripted behaviour, or
    forwards it to `upstream` when the script is empty (or `default` when there is no upstream).

    Behaviours: ("status", code, headers, body) · ("slow", seconds) then forward ·
    ("reply", text) a chat completion with that text · ("forward",).
    """

    def __init__(self, upstream: str | None = None, default: tuple | None = None) -> None:
        self.upstream = upstream
        self.default = default or ("forward",)
        self.script: list[tuple] = []
        self.requests: list[dict] = []  # {"headers": {...}, "body": {...}}
        self._lock = threading.Lock()
        injector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with injector._lock:
                    injector.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)}
                    )
                    action = injector.script.pop(0) if injector.script else injector.default
                kind = action[0]
                if kind == "status":
                    _, code, headers, body = action
                    self._send(code, body.encode(), headers)
                    return
                if kind == "slow":
                    time.sleep(action[1])
                if kind == "reply":
                    self._send(200, json.dumps(canned(action[1])).encode())
                    return
                upstream = httpx.post(f"{injector.upstream}{self.path.removeprefix('/v1')}",
                                      content=raw, headers={"content-type": "application/json"},
                                      timeout=300)
                self._send(upstream.status_code, upstream.content)

            def _send(self, code, payload: bytes, headers: dict | None = None):
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def injector(model_server) -> Iterator[FaultInjector]:
    fi = FaultInjector(model_server)
    yield fi
    fi.close()


@pytest.fixture
def offline_injector() -> Iterator[FaultInjector]:
    """A fault injector with no model behind it (scripted replies only)."""
    fi = FaultInjector(None, default=("reply", "Thought: default\nAction: look around"))
    yield fi
    fi.close()


from game import HAVE_JAVA  # noqa: E402


@pytest.fixture(scope="module")
def pool() -> Iterator[EnvPool]:
    if not HAVE_JAVA:
        pytest.skip("ScienceWorld needs Java")
    with EnvPool(1) as workers:
        yield workers


def _config(base_url: str, model: str, **kw) -> LLMExpertConfig:
    settings = dict(
        name="smollm2-test", base_url=base_url, model=model, api_key_env=KEY_ENV,
        temperature=0.0, max_tokens=48, max_steps=3, price_in=0.15, price_out=0.6,
        # generous: these tests are about what is stored and retried, not the server's speed under
        # load (the timeout itself is tested with a scripted slow answer and timeout_s=0.5)
        backoff_s=0.05, max_backoff_s=2.0, timeout_s=300, max_retries=3, max_invalid_in_a_row=2,
        stop=["\nObservation:"],
    )
    settings.update(kw)
    return LLMExpertConfig(**settings)


def _dump(db_path) -> str:
    """Everything in the store as text."""
    with store.reader(db_path) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()]
        return "\n".join(
            repr(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables
        )


@pytest.fixture
def key(monkeypatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return FAKE_KEY


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logging included
    return caplog


# --- real episodes ---------------------------------------------------------------------------------


def test_real_model_runs_scienceworld_and_every_trajectory_is_stored(
    db_path, model_path, injector, pool, key, all_logs, capfd
):
    config = _config(injector.url, str(model_path))
    summary = collect_experts(
        db_path, expert="llm", llm=config, task_ids=[TASK, TASK2], pool=pool, progress=False
    )
    assert summary.requested == 2 and summary.written == 2 and not summary.errors
    assert summary.expert == "smollm2-test"
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0
    assert summary.cost_usd == pytest.approx(
        cost_usd(summary.prompt_tokens, summary.completion_tokens, 0.15, 0.6)
    )
    # the key went to the server in a header (so the checks below are not vacuous) ...
    assert injector.requests and all(
        r["headers"].get("Authorization") == f"Bearer {FAKE_KEY}" for r in injector.requests
    )
    first = injector.requests[0]["body"]
    assert first["model"] == str(model_path) and first["max_tokens"] == 48 and first["seed"] == 0
    assert [m["role"] for m in first["messages"]] == ["system", "user"]

    with store.reader(db_path) as con:
        rows = con.execute(
            """SELECT traj_id, task_id, source, expert, reward, success, n_steps, meta
               FROM trajectories ORDER BY traj_id"""
        ).fetchall()
        n_tasks = con.execute("SELECT count(*) FROM tasks").fetchall()[0][0]
    assert n_tasks == 2
    assert [r[0] for r in rows] == [f"smollm2-test/{TASK}/0", f"smollm2-test/{TASK2}/0"]
    total_in = total_out = 0
    for traj_id, task_id, source, expert, reward, success, n_steps, meta in rows:
        meta = json.loads(meta)
        assert source == "expert" and expert == "smollm2-test" and 0 <= reward <= 1
        assert meta["n_calls"] >= 1 and len(meta["calls"]) == meta["n_calls"] <= 3
        assert meta["prompt_tokens"] == sum(c[0] for c in meta["calls"]) > 0
        assert meta["completion_tokens"] == sum(c[1] for c in meta["calls"]) > 0
        assert meta["cost_usd"] == pytest.approx(
            cost_usd(meta["prompt_tokens"], meta["completion_tokens"], 0.15, 0.6), abs=1e-8
        )
        assert meta["llm"]["model"] == str(model_path)
        assert meta["llm"]["base_url"] == injector.url
        assert meta["llm"]["temperature"] == 0.0 and meta["llm"]["max_tokens"] == 48
        assert meta["llm"]["seed"] == 0
        assert " is called the " in meta["initial_observation"]  # the game's own look around
        assert meta["stop_reason"] in {"done", "max_steps", "invalid_replies"}
        assert meta["n_invalid"] == len(meta["invalid_replies"])
        assert n_steps == meta["n_calls"] - meta["n_invalid"]
        total_in += meta["prompt_tokens"]
        total_out += meta["completion_tokens"]
    assert (total_in, total_out) == (summary.prompt_tokens, summary.completion_tokens)

    # a rerun asks the model nothing and stores nothing
    asked = len(injector.requests)
    again = collect_experts(
        db_path, expert="llm", llm=config, task_ids=[TASK, TASK2], pool=pool, progress=False
    )
    assert again.already_stored == 2 and again.written == 0 and again.ran == 0
    assert len(injector.requests) == asked

    # the key is nowhere: not in the store, not in the logs, not on the terminal
    captured = capfd.readouterr()
    assert FAKE_KEY not in _dump(db_path)
    assert FAKE_KEY not in all_logs.text
    assert FAKE_KEY not in captured.out + captured.err
    assert any("HTTP Request" in r.getMessage() for r in all_logs.records)  # logs were captured


def test_steps_keep_thoughts_and_the_game_s_observations(db_path, model_path, injector, pool, key):
    """A scripted first reply (then the real model): the stored step is the game's answer to the
    parsed action, and the next prompt carries it in the one chat format."""
    injector.script = [("reply", "**Thought:** First I look.\n**Action:** look around.")]
    config = _config(injector.url, str(model_path), max_steps=2)
    collect_experts(db_path, expert="llm", llm=config, task_ids=[TASK], pool=pool, progress=False)
    with store.reader(db_path) as con:
        steps = con.execute(
            "SELECT step, thought, action, observation FROM steps ORDER BY step"
        ).fetchall()
        meta = json.loads(con.execute("SELECT meta FROM trajectories").fetchall()[0][0])
    assert steps[0][:3] == (0, "First I look.", "look around")
    assert steps[0][3].startswith("This room is called the hallway")
    second = injector.requests[1]["body"]["messages"]
    assert second[2] == {"role": "assistant", "content": "Thought: First I look.\nAction: look around"}
    assert second[3] == {"role": "user", "content": f"Observation: {steps[0][3]}"}
    assert meta["n_calls"] == 2 and meta["calls"][0][:2] == [11, 7]


def test_junk_replies_are_counted_not_executed(db_path, pool, offline_injector):
    offline_injector.script = [
        ("reply", ""), ("reply", "The answer is: you cannot."),
        ("reply", "Thought: ok\nAction: look around"), ("reply", "Thought: hmm, no action here"),
        ("reply", "Thought: ok\nAction: inventory"),
    ]
    config = _config(offline_injector.url, "scripted", max_steps=5, max_invalid_in_a_row=3)
    collect_experts(db_path, expert="llm", llm=config, task_ids=[TASK], pool=pool, progress=False)
    with store.reader(db_path) as con:
        actions = [r[0] for r in con.execute("SELECT action FROM steps ORDER BY step").fetchall()]
        meta = json.loads(con.execute("SELECT meta FROM trajectories").fetchall()[0][0])
    assert actions == ["look around", "inventory"]  # junk never reached the game
    assert meta["n_invalid"] == 3 and meta["n_calls"] == 5 and meta["stop_reason"] == "max_steps"
    assert [r["after_step"] for r in meta["invalid_replies"]] == [0, 0, 1]
    # after a bad reply the model is shown it and told the format
    retry = offline_injector.requests[1]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "(empty reply)"}
    assert retry[-1]["role"] == "user" and "Invalid format" in retry[-1]["content"]


def test_too_many_bad_replies_in_a_row_end_the_episode(db_path, pool, offline_injector):
    offline_injector.script = [("reply", "nonsense, truly.")] * 2
    config = _config(offline_injector.url, "scripted", max_steps=5, max_invalid_in_a_row=2)
    collect_experts(db_path, expert="llm", llm=config, task_ids=[TASK], pool=pool, progress=False)
    with store.reader(db_path) as con:
        n_steps, meta = con.execute("SELECT n_steps, meta FROM trajectories").fetchall()[0]
    meta = json.loads(meta)
    assert n_steps == 0 and meta["stop_reason"] == "invalid_replies" and meta["n_invalid"] == 2


# --- transient and permanent errors ---------------------------------------------------------------


def test_rate_limits_and_server_errors_are_retried_honouringretry_after(
    injector, model_path, key, all_logs
):
    injector.script = [
        ("status", 429, {"Retry-After": "1"}, '{"error": {"message": "rate limited"}}'),
        ("status", 503, {}, '{"error": "overloaded"}'),
        ("status", 502, {}, "<html>bad gateway</html>"),
    ]
    config = _config(injector.url, str(model_path), backoff_s=0.05)
    with ChatClient(config) as client:
        started = time.monotonic()
        reply = client.complete([{"role": "user", "content": "Say hello."}], seed=1)
        elapsed = time.monotonic() - started
    assert len(injector.requests) == 4 and client.retries == 3 and reply.retries == 3
    assert elapsed >= 1.0  # Retry-After honoured
    assert reply.text and reply.prompt_tokens > 0 and reply.completion_tokens > 0
    warnings = [r.getMessage() for r in all_logs.records if r.name == "eef_tasks.openai_http"]
    assert any("HTTP 429" in w and "retry 1/3 in 1.0 s" in w for w in warnings)
    assert FAKE_KEY not in all_logs.text


def test_a_slow_answer_times_out_and_is_retried(offline_injector, key):
    offline_injector.script = [("slow", 3.0)]
    config = _config(offline_injector.url, "scripted", timeout_s=0.5)
    with ChatClient(config) as client:
        reply = client.complete([{"role": "user", "content": "hi"}])
    assert reply.text == "Thought: default\nAction: look around" and client.retries == 1


def test_connection_errors_are_retried_then_fail_clearly(key):
    config = _config(f"http://127.0.0.1:{_free_port()}/v1", "scripted", max_retries=2)
    with ChatClient(config) as client, pytest.raises(LLMExpertError, match="gave up after 3 tries") as err:
        client.complete([{"role": "user", "content": "hi"}])
    assert client.retries == 2 and "connection failed" in str(err.value)


def test_a_refused_request_fails_at_once_without_the_key(db_path, pool, offline_injector, key, all_logs):
    """First task finishes; then the server refuses the key (echoing it back): the collection
    stops with a clear error, the finished trajectory is kept, nothing of the second is written."""
    offline_injector.script = [
        ("reply", "Thought: a\nAction: look around"),
        ("status", 401, {}, json.dumps({"error": {"message": f"Incorrect API key provided: {FAKE_KEY}"}})),
    ]
    config = _config(offline_injector.url, "scripted", max_steps=1)
    with pytest.raises(LLMExpertError, match="HTTP 401: the API key was refused") as err:
        collect_experts(db_path, expert="llm", llm=config, task_ids=[TASK, TASK2], pool=pool,
                        progress=False)
    assert FAKE_KEY not in str(err.value) and "***" in str(err.value)
    assert len(offline_injector.requests) == 2  # no retry of a 401
    with store.reader(db_path) as con:
        assert con.execute("SELECT traj_id FROM trajectories").fetchall() == [
            (f"smollm2-test/{TASK}/0",)
        ]
    assert FAKE_KEY not in _dump(db_path) and FAKE_KEY not in all_logs.text


def test_exhausted_retries_raise_and_write_nothing(db_path, pool, offline_injector, key):
    offline_injector.default = ("status", 503, {}, '{"error": "down"}')
    config = _config(offline_injector.url, "scripted", max_retries=2, backoff_s=0.01)
    with pytest.raises(LLMExpertError, match="kept failing: HTTP 503"):
        collect_experts(db_path, expert="llm", llm=config, task_ids=[TASK], pool=pool, progress=False)
    assert len(offline_injector.requests) == 3
    assert not db_path.exists() or _dump(db_path).count("smollm2-test") == 0


def test_the_real_server_refusing_a_model_name_is_permanent(model_server, key):
    config = _config(model_server, "gpt-4o")  # the server is pinned to the local checkpoint
    with ChatClient(config) as client, pytest.raises(LLMExpertError, match="HTTP 400") as err:
        client.complete([{"role": "user", "content": "hi"}])
    assert client.retries == 0 and "gpt-4o" in str(err.value)


def test_credentials_in_base_url_are_sent_but_never_stored(
    db_path, pool, offline_injector, key, all_logs
):
    """Basic auth and a query key in base_url (and the key in an Azure-style header) reach the
    server; none of them reaches the store."""
    url = offline_injector.url.replace("http://", "http://eefuser:hunter2-pass@")
    config = _config(url + "?api-key=qs-secret-123&x=1", "scripted", max_steps=1,
                     api_key_header="api-key")
    collect_experts(db_path, expert="llm", llm=config, task_ids=[TASK], pool=pool, progress=False)
    headers = offline_injector.requests[0]["headers"]
    assert headers["api-key"] == FAKE_KEY
    assert offline_injector.requests[0]["path"] == "/v1/chat/completions?api-key=qs-secret-123&x=1"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"eefuser:hunter2-pass").decode()
    text = _dump(db_path)
    for secret in ("hunter2-pass", "eefuser", "qs-secret-123", FAKE_KEY):
        assert secret not in text and secret not in all_logs.text
    assert "api-key=***&x=1" in all_logs.text  # httpx's request log, masked
    assert f'"base_url": "{offline_injector.url}?x=1"' in text

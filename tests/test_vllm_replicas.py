"""vLLM replicas: the vllm engine over several base URLs (`eef_tasks.engines.vllm`, policy in
`eef_tasks.engines.replicas`).

- the dispatch policy alone (a fake clock): least outstanding, ties round robin, dead replicas
  skipped, probes after 5 s doubling to 60 s;
- the engine over an in-memory transport (httpx.MockTransport): failover, a revived replica given
  the adapter before it gets requests, one line naming every URL when all are down, URL lists;
- real processes (slow): two stand-in servers (`tests/openai_lora_server.py`, real SmolLM2, real
  peft adapters): the spread, a slow replica, the adapter on every replica before use, and a
  replica SIGKILLed in the middle of real ScienceWorld rollouts, restarted, rejoining with the
  adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from eef_tasks import store
from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.replicas import ReplicaSet
from eef_tasks.engines.vllm import VLLMEngine, VLLMError, base_urls
from eef_tasks.pipeline.settings import RunConfig
from eef_tasks.rollout import RolloutEpisode, run_rollouts

from game import needs_java  # noqa: E402
from standin import BASE, KEY, StandIn, free_port, lora_adapters  # noqa: E402

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=8)
SHORT = SamplingConfig(temperature=0.0, max_new_tokens=2)  # where only who answers matters
FIND = "scienceworld/find-living-thing/0"


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are an agent in a text game."}, {"role": "user", "content": text}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch) -> str:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    return KEY


# --- the policy ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_least_outstanding_with_round_robin_ties() -> None:
    replicas = ReplicaSet(["a", "b", "c"], clock=Clock())
    # sequential requests (each released before the next) alternate
    picks = []
    for _ in range(6):
        i = replicas.acquire()
        picks.append(i)
        replicas.release(i, served=True)
    assert picks == [0, 1, 2, 0, 1, 2]
    # concurrent ones: the replica with the fewest in flight
    held = [replicas.acquire() for _ in range(3)]
    assert held == [0, 1, 2]
    replicas.release(1, served=True)  # 1 finished: the only one with none in flight
    assert replicas.acquire() == 1
    assert replicas.acquire() == 2  # all tied at one: the round robin goes on after 1
    assert [s.in_flight for s in replicas.states()] == [1, 1, 2]
    assert [s.served for s in replicas.states()] == [2, 3, 2]


def test_the_counts_hold_under_threads() -> None:
    replicas = ReplicaSet(["a", "b", "c"])

    def work(_: int) -> None:
        for _ in range(200):
            i = replicas.acquire()
            replicas.release(i, served=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    states = replicas.states()
    assert [s.in_flight for s in states] == [0, 0, 0] and sum(s.served for s in states) == 1600
    assert all(s.served for s in states)


def test_dead_replicas_are_skipped_and_probed_with_back_off() -> None:
    clock = Clock()
    replicas = ReplicaSet(["a", "b"], probe_s=5.0, max_probe_s=60.0, clock=clock)
    assert replicas.mark_dead(0, "connection refused") is True
    assert replicas.mark_dead(0, "still refused") is False  # a second failed request: still one death
    assert [replicas.acquire() for _ in range(3)] == [1, 1, 1]
    waits = []
    for _ in range(6):  # each failed probe doubles the wait, up to 60 s
        start = clock.now
        while not replicas.claim_probes():
            clock.now += 0.5
        waits.append(clock.now - start)
        assert replicas.claim_probes() == [] and replicas.claim_probes(due_only=False) == []  # one prober
        replicas.probe_done(0, ok=False, why="refused")
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    state = replicas.states()[0]
    assert state.dead and state.why == "refused" and state.deaths == 1
    clock.now += 60
    assert replicas.claim_probes() == [0]
    replicas.probe_done(0, ok=True)
    assert replicas.live() == [0, 1] and replicas.acquire() == 0  # b has 3 in flight
    replicas.mark_dead(0, "again")  # the back-off starts over
    clock.now += 5
    assert replicas.claim_probes() == [0]
    replicas.mark_dead(1, "gone")
    assert replicas.acquire() is None


# --- the engine over an in-memory transport -----------------------------------------------------------


class Fleet:
    """Fake vLLM servers by host: `down` ones refuse connections; every request is logged."""

    def __init__(self, *hosts: str, dies_after: dict[str, int] | None = None, delay_s: float = 0.0) -> None:
        self.down: set[str] = set()
        self.dies_after = dict(dies_after or {})  # host -> chat completions it answers, then it is down
        self.delay_s = delay_s
        self.adapters: dict[str, set[str]] = {h: set() for h in hosts}
        self.log: list[tuple[str, str, str | None, int]] = []  # (host, path, model or lora_name, status)
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        assert request.headers.get("authorization") == f"Bearer {KEY}"
        body = json.loads(request.content) if request.content else {}
        with self.lock:
            if path == "/v1/chat/completions" and host in self.dies_after:
                if self.dies_after[host] == 0:
                    self.down.add(host)
                self.dies_after[host] -= 1
        if host in self.down:
            self._logged(host, path, body, 0)
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        time.sleep(self.delay_s)
        return self._logged(host, path, body, self._answer(host, path, body))

    def _logged(self, host: str, path: str, body: dict, answer: httpx.Response | int) -> httpx.Response:
        with self.lock:  # status 0: refused
            status = answer if isinstance(answer, int) else answer.status_code
            self.log.append((host, path, body.get("model") or body.get("lora_name"), status))
        return answer

    def _answer(self, host: str, path: str, body: dict) -> httpx.Response:
        if path == "/v1/models":
            cards = [{"id": "base-m", "parent": None}] + [{"id": n, "parent": "base-m"} for n in self.adapters[host]]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if path == "/v1/load_lora_adapter":
            self.adapters[host].add(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/v1/chat/completions":
            if body["model"] not in {"base-m", *self.adapters[host]}:
                return httpx.Response(404, json={"error": {"message": "no such model", "code": 404}})
            if body["messages"][-1]["content"] == "too long":
                return httpx.Response(400, json={"error": {"message": "max_tokens is too large", "code": 400}})
            return httpx.Response(200, json={
                "choices": [{"message": {"content": f"from {host}"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        return httpx.Response(404, json={"detail": "Not Found"})

    def chats(self, host: str) -> list[str | None]:
        return [m for h, p, m, _ in self.log if h == host and p == "/v1/chat/completions"]


def _fake_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def _wait_live(engine: VLLMEngine, index: int, chat) -> int:
    """Send requests (each may start a due probe) until replica `index` is live again; how many."""
    sent = 0
    deadline = time.monotonic() + 60
    while not engine.replica_stats()[index]["live"]:
        assert time.monotonic() < deadline, engine.replica_stats()
        engine.generate([(engine.session(f"wake{sent}"), chat)], SHORT)
        sent += 1
        time.sleep(0.05)
    return sent


def test_failover_and_a_revived_replica_gets_the_adapter_first(tmp_path) -> None:
    fleet = Fleet("a", "b")
    adapter = _fake_adapter(tmp_path / "eef-it2")
    engine = VLLMEngine("http://a:8000/v1, http://b:8000", "base-m", adapter, backoff_s=0.0, retries=5,
                        replica_retries=1, probe_s=0.05, max_probe_s=0.1, transport=httpx.MockTransport(fleet))
    assert engine.base_urls == ["http://a:8000/v1", "http://b:8000/v1"]
    chat = _chat("go")
    engine.ensure_ready()  # both checked and given the adapter before any request
    name = engine.served_model
    assert fleet.adapters == {"a": {name}, "b": {name}} and not fleet.chats("a") + fleet.chats("b")
    texts = [engine.generate([(engine.session(f"s{i}"), chat)], GREEDY)[0].text for i in range(4)]
    assert texts == ["from a", "from b", "from a", "from b"]

    fleet.down.add("a")
    fleet.adapters["a"].clear()  # when it comes back it is a fresh server
    texts = [engine.generate([(engine.session(f"t{i}"), chat)], GREEDY)[0].text for i in range(3)]
    assert texts == ["from b"] * 3  # the request that met the dead replica went to b
    assert (engine.failovers, engine.retries) == (1, 1)  # one retry on a (replica_retries), then b
    assert [s["live"] for s in engine.replica_stats()] == [False, True]

    fleet.down.discard("a")
    _wait_live(engine, 0, chat)
    after = [(p, status) for h, p, _, status in fleet.log if h == "a"]
    after = after[max(i for i, (_, status) in enumerate(after) if status == 0) + 1:]  # since it is back
    assert after[:2] == [("/v1/models", 200), ("/v1/load_lora_adapter", 200)]  # the probe, first
    assert fleet.adapters["a"] == {name}
    texts = [engine.generate([(engine.session(f"u{i}"), chat)], GREEDY)[0].text for i in range(2)]
    assert sorted(texts) == ["from a", "from b"]
    assert set(fleet.chats("a")) == {name} and all(status in (0, 200) for *_, status in fleet.log)  # no 404
    stats = engine.replica_stats()
    assert [s["deaths"] for s in stats] == [1, 0] and sum(s["in_flight"] for s in stats) == 0

    # a refusal is the request's fault, not the replica's: raised, nobody marked dead
    with pytest.raises(VLLMError, match="HTTP 400.*max_tokens"):
        engine.generate([(engine.session("x"), _chat("too long"))], GREEDY)
    assert all(s["live"] for s in engine.replica_stats())
    engine.close()


def test_concurrent_requests_survive_a_replica_dying_under_them() -> None:
    """32 requests, 8 in flight, from two threads' generate calls; replica a answers 5 and then
    refuses connections: every request is answered once, b takes the rest."""
    fleet = Fleet("a", "b", dies_after={"a": 5}, delay_s=0.01)
    engine = VLLMEngine("http://a:8000/v1,http://b:8000/v1", "base-m", backoff_s=0.0, max_concurrency=8,
                        probe_s=60.0, transport=httpx.MockTransport(fleet))
    chat = _chat("go")
    with ThreadPoolExecutor(2) as callers:
        batches = [callers.submit(engine.generate, [(engine.session(f"{k}-{i}"), chat) for i in range(16)], GREEDY)
                   for k in range(2)]
        texts = [g.text for batch in batches for g in batch.result(timeout=60)]
    assert len(texts) == 32 and texts.count("from a") == 5 and texts.count("from b") == 27
    stats = engine.replica_stats()
    assert [s["served"] for s in stats] == [5, 27] and [s["in_flight"] for s in stats] == [0, 0]
    assert [s["live"] for s in stats] == [False, True] and stats[0]["deaths"] == 1
    answered = [status for h, p, _, status in fleet.log if p == "/v1/chat/completions" and status == 200]
    assert len(answered) == 32  # none answered twice
    engine.close()


def test_every_replica_down_is_one_line_naming_them(tmp_path) -> None:
    fleet = Fleet("a", "b")
    fleet.down |= {"a", "b"}
    engine = VLLMEngine("http://a:8000/v1,http://b:8000/v1", "base-m", backoff_s=0.0, replica_retries=1,
                        transport=httpx.MockTransport(fleet))
    with pytest.raises(VLLMError) as exc:
        engine.generate([(engine.session("k"), _chat("go"))], GREEDY)
    message = str(exc.value)
    assert message.startswith("every vLLM replica is down (http://a:8000/v1, http://b:8000/v1)")
    assert "\n" not in message and KEY not in message and "Connection refused" in message
    # each was probed once more before giving up
    assert [p for h, p, *_ in fleet.log if h == "a"] == ["/v1/models"] * 3
    # the base model asked of a set whose first replica is down: the next one answers
    fleet.down.discard("b")
    with VLLMEngine("http://a:8000/v1,http://b:8000/v1", None, backoff_s=0.0,
                    transport=httpx.MockTransport(fleet)) as found:
        assert found.model_path == "base-m"
        assert [s["live"] for s in found.replica_stats()] == [False, True]
        assert found.generate([(found.session("k"), _chat("go"))], GREEDY)[0].text == "from b"


def test_url_lists() -> None:
    assert base_urls("http://h:1") == ["http://h:1/v1"]
    assert base_urls(" http://a:1/v1/ ,http://b:2,") == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(VLLMError, match="URLs list http://a:1/v1 twice"):
        base_urls("http://a:1,http://a:1/v1")
    with pytest.raises(VLLMError, match="not an http"):
        base_urls("http://a:1/v1,ftp://b")
    # one URL: the engine is what it always was
    one = VLLMEngine("http://vllm.local:8000/", "m", transport=httpx.MockTransport(Fleet()))
    assert (one.base_url, one.safe_url, one.base_urls) == ("http://vllm.local:8000/v1",) * 2 + (["http://vllm.local:8000/v1"],)
    one.close()
    # run settings (stored in clear) refuse credentials in any URL of the list, without echoing them
    with pytest.raises(ValidationError, match="VLLM_API_KEY") as err:
        RunConfig(run_id="r", engine="vllm", vllm_url="http://a:8000/v1,http://eefuser:hunter2@b:9/v1")
    assert "hunter2" not in str(err.value) and "'http://b:9/v1' carries credentials" in str(err.value)
    assert RunConfig(run_id="r", engine="vllm", vllm_url="http://a:8000/v1,http://b:9/v1").vllm_url


# --- real processes: two stand-in servers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(model_path, tmp_path_factory) -> list[StandIn]:
    """Two stand-in servers, started together."""
    logs = tmp_path_factory.mktemp("replicas")
    servers = [StandIn(model_path, logs / f"replica{i}.log") for i in range(2)]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def adapter(model_path, tmp_path_factory) -> Path:
    """One LoRA adapter (its folder: eef-it1); the servers keep it once loaded, for the module."""
    return lora_adapters(model_path, tmp_path_factory.mktemp("adapters"), {"eef-it1": 1})["eef-it1"]


@pytest.mark.slow
def test_requests_spread_over_the_replicas(replicas) -> None:
    a, b = replicas
    before = [len(a.received()), len(b.received())]
    chat = _chat("Your task is to find a(n) animal.")
    with VLLMEngine(f"{a.url},{b.url}", BASE) as engine:
        texts = [engine.generate([(engine.session(f"s{i}"), chat)], SHORT)[0].text for i in range(2)]
        together = engine.generate([(engine.session(f"c{i}"), chat) for i in range(2)], SHORT)
        assert [s["served"] for s in engine.replica_stats()] == [2, 2]
    assert len(set(texts + [g.text for g in together])) == 1  # the same model and greedy: one reply
    assert [len(a.received()) - before[0], len(b.received()) - before[1]] == [2, 2]


@pytest.mark.slow
def test_a_slow_replica_gets_fewer_requests(replicas) -> None:
    """Replica a holds every request (as a stalled server would): with two in flight at most, the
    first request waits on a and the three others go to b, one after the other."""
    a, b = replicas
    before = [len(a.received()), len(b.received())]
    chat = _chat("Your task is to boil water.")
    a.hold()
    try:
        with VLLMEngine(f"{a.url},{b.url}", BASE, max_concurrency=2) as engine, ThreadPoolExecutor(1) as run:
            replies = run.submit(engine.generate, [(engine.session(f"s{i}"), chat) for i in range(4)], SHORT)
            deadline = time.monotonic() + 120
            while len(b.received()) - before[1] < 3:
                assert time.monotonic() < deadline and not replies.done(), engine.replica_stats()
                time.sleep(0.1)
            assert len(a.received()) - before[0] == 1
            a.release()
            assert len(replies.result(timeout=120)) == 4
            assert [s["served"] for s in engine.replica_stats()] == [1, 3]
    finally:
        a.release()


@pytest.mark.slow
def test_the_adapter_is_on_every_replica_before_use(replicas, adapter) -> None:
    a, b = replicas
    folder = adapter
    before = [len(a.received()), len(b.received())]
    chat = _chat("Your task is to find a(n) plant.")
    with VLLMEngine(f"{a.url},{b.url}", BASE, folder) as engine:
        name = engine.served_model
        assert name not in a.models() and name not in b.models()
        gens = engine.generate([(engine.session(f"s{i}"), chat) for i in range(2)], GREEDY)
        assert all(g.text for g in gens)
    for server, n in zip((a, b), before, strict=True):
        assert server.models()[name]["root"] == str(folder.resolve())
        assert [r["model"] for r in server.received()[n:]] == [name]  # one request each, no 404 first


@needs_java
@pytest.mark.slow
def test_a_killed_replica_loses_no_request_and_rejoins_with_the_adapter(replicas, adapter, db_path) -> None:
    """Real ScienceWorld rollouts over two replicas; replica a is SIGKILLed while it holds a request.
    The request goes to b, every episode finishes, every call is answered exactly once; a is
    restarted (same port, a fresh process without the adapter), rejoins after a probe that gives it
    the adapter, and serves again."""
    a, b = replicas
    n_b = len(b.received())
    a.hold()
    held = len(a.received())
    engine = VLLMEngine(f"{a.url},{b.url}", BASE, adapter, backoff_s=0.05, max_backoff_s=0.1,
                        probe_s=0.5, max_probe_s=1.0)
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=8, seed=3)
    episodes = [RolloutEpisode(FIND, sample=i) for i in range(2)]
    with ThreadPoolExecutor(1) as run:
        phase = run.submit(run_rollouts, db_path, "k", 1, episodes, purpose="explore", engine=engine,
                           sampling=sampling, n_workers=2, max_steps=2)
        deadline = time.monotonic() + 180
        while len(a.received()) == held:  # a has a request, and holds it
            assert time.monotonic() < deadline and not phase.done(), (phase.done() and phase.result())
            time.sleep(0.1)
        a.kill()
        a.start()  # from the main thread: it dies with the test run; it boots while b plays on
        summary = phase.result(timeout=300)
    assert (summary.ran, summary.written, summary.errors) == (2, 2, [])
    with store.reader(db_path) as con:
        metas = [json.loads(m) for (m,) in con.execute("SELECT meta FROM trajectories WHERE run_id = 'k'").fetchall()]
    calls = sum(m["n_calls"] for m in metas)
    assert len(metas) == 2 and calls >= 2 and all(m["served_model"] == engine.served_model for m in metas)
    assert engine.failovers >= 1 and engine.replica_stats()[0]["deaths"] == 1

    a.wait_ready()
    chat = _chat("Your task is to find a(n) living thing.")
    calls += _wait_live(engine, 0, chat)
    assert engine.served_model in a.models()  # loaded by the probe, before a got any request
    gens = engine.generate([(engine.session(f"r{i}"), chat) for i in range(2)], SHORT)
    calls += len(gens)
    new_a, new_b = a.received(), b.received()[n_b:]
    assert len(new_a) >= 1  # a serves again
    # every call answered once: the held request (lost with the killed process) was answered by b,
    # and no request met a replica without the adapter (a 404 would have sent it twice)
    assert len(new_a) + len(new_b) == calls
    assert {r["model"] for r in new_a + new_b} == {engine.served_model}
    engine.close()


def test_the_cli_refuses_credentials_in_any_replica_url(tmp_path) -> None:
    """`eef rollout --vllm-url A,B` with user:password in B: refused in one line, before any work,
    without echoing the password (a command line lands in shell history and `ps`). ~2 s: one CLI start."""
    eef = Path(sys.executable).parent / "eef"
    result = subprocess.run(
        [str(eef), "rollout", "--db", str(tmp_path / "s.duckdb"), "--run", "r", "--iteration", "1",
         "--purpose", "explore", "--engine", "vllm", "--vllm-url", "http://a:8000/v1,http://eefuser:hunter2@b:9/v1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "'http://b:9/v1' carries credentials" in result.stderr and "VLLM_API_KEY" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr

"""The AgentGym client (`envs.agentgym`) and eef's AgentGym-protocol ScienceWorld server.

Two kinds of tests:
- against in-process stand-ins of AgentGym's five servers (httpx mock transports answering with
  the field names and error conventions of AgentGym's server.py files): protocol shapes,
  instructions, rewards, recovery, drift, wrong server, timeouts; fast, no Java;
- against the real thing: `python -m eef_tasks.envs.agentgym_server` started as a subprocess on a
  free localhost port, serving eef's ScienceWorld (Java): a gold episode to success, replay and
  drift, the server killed with SIGKILL mid-episode and restarted on the same port, a restart
  that drifts, and no server at all. Short task only (lifespan-longest-lived/0: 6 gold actions).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import eef_tasks.envs as envs
from eef_tasks import interrupt
from eef_tasks.envs import agentgym as ag
from eef_tasks.envs.agentgym import AgentGymEnv, ServerUnavailable
from eef_tasks.envs.base import EnvCrashed, EnvError, EpisodeOver, same_observation

pytestmark = pytest.mark.timeout(120)  # no test may hang, whatever the servers do

LIFESPAN = "scienceworld/lifespan-longest-lived/0"
LIFESPAN_IDX = 4240  # its AgentGym SciWorld data_idx

FAST = dict(timeout_s=5.0, max_retries=3, backoff_s=0.0, max_backoff_s=0.0)


# --- task ids, SciWorld's data_idx, catalogs ---------------------------------------------------


def test_task_ids():
    assert ag.parse_agentgym_task_id("webshop/12") == ("webshop", 12)
    assert ag.parse_agentgym_task_id("webshop/webshop_12") == ("webshop", 12)  # AgentGym item id
    assert ag.parse_agentgym_task_id(LIFESPAN) == ("sciworld", LIFESPAN_IDX)
    assert ag.parse_agentgym_task_id(LIFESPAN, "sciworld") == ("sciworld", LIFESPAN_IDX)
    assert ag.make_agentgym_task_id("agentgym:alfworld", 7) == "alfworld/7"
    for bad in ("webshop", "webshop/x", "shop/1", "webshop/alfworld_3", "sciworld/boil/3"):
        with pytest.raises(EnvError, match="malformed AgentGym task id"):
            ag.parse_agentgym_task_id(bad)
    with pytest.raises(EnvError, match="not a alfworld task"):
        ag.parse_agentgym_task_id("webshop/1", "alfworld")
    with pytest.raises(EnvError, match="leaves this task out"):
        ag.sciworld_data_idx("grow-plant", 0)


def test_sciworld_games_follow_agentgyms_server():
    games = ag.sciworld_games()
    assert len(games) == 4639  # 23 tasks, every variation
    assert games[0] == ("boil", 0)
    assert games[LIFESPAN_IDX] == ("lifespan-longest-lived", 0)
    assert not {name for name, _ in games} & set(ag.SCIWORLD_EXCLUDED_TASKS)
    assert ag.sciworld_data_idx("task-1-boil", 0) == 0  # ETO's names work too


def test_catalogs():
    alfworld = envs.catalog("agentgym:alfworld")
    assert [s.task_id for s in alfworld if s.split == "test"][:2] == ["alfworld/2420", "alfworld/2421"]
    assert sum(s.split == "train" for s in alfworld) == 2420 and len(alfworld) == 2620
    webshop = ag.catalog("webshop", "test", limit=200)
    assert len(webshop) == 200 and webshop[0].task_id == "webshop/0" and webshop[0].max_steps == 10
    assert webshop[0].instruction is None  # known only from the first observation
    sciworld = ag.catalog("sciworld")
    assert len(sciworld) == 4639 and {s.split for s in sciworld} == {"train", "dev", "test"}
    spec = envs.find_task(f"sciworld/{LIFESPAN_IDX}")
    assert spec.meta["scienceworld_task_id"] == LIFESPAN and spec.split == "train"
    assert spec.instruction.startswith("Your task is to find the animal with the longest life span")
    eto = ag.catalog("sciworld", "test", sciworld_split="eto")
    assert 0 < len(eto) < 211  # ETO's test pairs, minus the tasks AgentGym's server leaves out
    with pytest.raises(EnvError, match="no published index ranges"):
        ag.catalog("babyai", "train")
    assert [s.task_id for s in ag.catalog("babyai", ranges={"test": (5, 8)})] == [
        "babyai/5", "babyai/6", "babyai/7"]
    assert envs.AGENTGYM_ENVS == ag.AGENTGYM_ENVS


def test_catalog_from_agentgym_item_id_file(tmp_path):
    path = tmp_path / "webshop_test.json"
    path.write_text(json.dumps([{"item_id": "webshop_3", "conversations": []},
                                {"item_id": "webshop_5238", "conversations": []}]))
    specs = ag.catalog("webshop", "test", item_ids=path)
    assert [(s.task_id, s.split) for s in specs] == [("webshop/3", "test"), ("webshop/5238", "test")]
    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text('{"item_id": "textcraft_1"}\n{"item_id": "textcraft_9"}\n')
    assert ag.read_item_ids(jsonl, "textcraft") == [1, 9]
    with pytest.raises(EnvError, match="not a webshop item"):
        ag.read_item_ids(["alfworld_2"], "webshop")


def test_base_url_from_arguments_or_environment(monkeypatch):
    monkeypatch.delenv("EEF_AGENTGYM_URL", raising=False)
    monkeypatch.delenv("EEF_AGENTGYM_WEBSHOP_URL", raising=False)
    with pytest.raises(EnvError, match="EEF_AGENTGYM_WEBSHOP_URL"):
        ag.resolve_base_url("webshop")
    monkeypatch.setenv("EEF_AGENTGYM_URL", "127.0.0.1:9")
    assert ag.resolve_base_url("webshop") == "http://127.0.0.1:9"
    monkeypatch.setenv("EEF_AGENTGYM_WEBSHOP_URL", "http://127.0.0.1:36001/")
    assert ag.resolve_base_url("webshop") == "http://127.0.0.1:36001"
    assert ag.resolve_base_url("webshop", "http://h:1") == "http://h:1"
    env = envs.make_env("agentgym:webshop")
    try:
        assert isinstance(env, AgentGymEnv) and isinstance(env, envs.Env)
        assert env.name == "webshop" and env.base_url == "http://127.0.0.1:36001"
    finally:
        env.close()


# --- stand-ins for AgentGym's servers -----------------------------------------------------------

# A tiny game per task: actions "a" and "b" change the page, "win" ends it with reward 1; anything
# else is invalid. Observations are worded as each AgentGym server words them.
WINS = {"webshop": "click[buy now]", "alfworld": "put mug in/on desk", "babyai": "go to red ball 1",
        "textcraft": "craft 1 stick using 2 planks", "sciworld": "focus on bear"}


class FakeAgentGym:
    """Answers like AgentGym's `agentenv-<env>` server.py: field names, `{"error": ...}` answers
    with HTTP 200 for unknown ids, WebShop's HTTP 500 for an unknown env_idx, 422 for a body
    that lacks a field. `restart()` forgets every env (ids start again at 0, as AgentGym's do);
    `world` changes what the game says (a restart onto a different game: drift)."""

    def __init__(self, env: str) -> None:
        self.env = env
        self.envs: dict[int, dict[str, Any]] = {}
        self.next_id = 0
        self.world = ""
        self.fail_next: list[int | type[Exception]] = []  # HTTP statuses or exceptions to raise
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.id_key = "env_idx" if env == "webshop" else "id"

    def restart(self, world: str = "") -> None:
        self.envs.clear()
        self.next_id = 0
        self.world = world

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- the game --

    def _initial(self, idx: int) -> str:
        goal = f"goal number {idx}{self.world}"
        return {
            "webshop": f"WebShop [SEP] Instruction: [SEP] {goal} [SEP] Search",
            "alfworld": f"-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room."
                        f"\n\nYour task is to: {goal}",
            "babyai": f"Your goal: {goal}\nYou cannot see any objects within sight.",
            "textcraft": f"Crafting commands:\ncraft 1 stick using 2 planks\n\nGoal: craft {goal}.",
            "sciworld": f"This room is called the hallway.{self.world}",
        }[self.env]

    def _play(self, state: dict[str, Any], action: str) -> tuple[str, float, bool]:
        if action == WINS[self.env]:
            return f"You won.{self.world}", 1.0, True
        if action in ("a", "b"):
            state["page"] = f"page after {action}{self.world} (step {len(state['actions'])})"
            return state["page"], 0.0, False
        invalid = {
            "webshop": state["page"],  # an invalid WebShop action leaves the page unchanged
            "alfworld": "Nothing happens.",
            "babyai": "The action is not recognized. Please check valid actions.",
            "textcraft": f"Could not execute {action}",
            "sciworld": "No known action matches that input.",
        }[self.env]
        return invalid, 0.0, False

    # -- HTTP --

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        params = dict(request.url.params)
        self.log.append((request.url.path, body if body is not None else params))
        if self.fail_next:
            failure = self.fail_next.pop(0)
            if isinstance(failure, int):
                return httpx.Response(failure, text="Service Unavailable")
            raise failure("simulated", request=request)
        path = request.url.path
        if path == "/":
            return httpx.Response(200, json=f"This is environment {self.env}.")
        if path == "/create":
            if self.env == "textcraft" and body is None:
                return _missing("body")
            idx = self.next_id
            self.next_id += 1
            self.envs[idx] = {"page": "", "actions": [], "done": False}
            return httpx.Response(200, json=idx if self.env == "webshop" else {"id": idx})
        if path == "/close":
            return httpx.Response(404, json={"detail": "Not Found"})  # most servers have none
        need = {"/reset": {"webshop": ["env_idx", "session_id"],
                           "alfworld": ["id", "game", "world_type"]}.get(self.env, ["id", "data_idx"]),
                "/step": [self.id_key, "action"]}.get(path)
        if need is None and path == "/observation":
            need = []
        if need is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        data = body if body is not None else params
        for key in need:
            if key not in data:
                return _missing(key)
        env_id = int(data.get(self.id_key, params.get(self.id_key, -1)))
        state = self.envs.get(env_id)
        if state is None:
            if self.env == "webshop":  # KeyError in WebShop's server: a bare 500
                return httpx.Response(500, text="Internal Server Error")
            return httpx.Response(200, json={"error": f"The id {env_id} is not valid."})
        if path == "/observation":
            return httpx.Response(200, json=state["page"])
        if path == "/reset":
            idx = data.get("session_id", data.get("game", data.get("data_idx")))
            state.update(page=self._initial(idx), actions=[], done=False)
            if self.env == "webshop":
                return httpx.Response(200, json=[state["page"], None])
            answer: dict[str, Any] = {"observation": state["page"], "reward": 0, "done": False}
            if self.env == "sciworld":
                answer.update(task_description=f"Your task is to find goal {idx}.", score=0)
            if self.env == "alfworld":
                answer["available_actions"] = ["a", "b", WINS["alfworld"]]
            return httpx.Response(200, json=answer)
        if state["done"]:
            return httpx.Response(200, json={"error": f"The task with environment {env_id} has finished."})
        observation, reward, done = self._play(state, data["action"])
        state["actions"].append(data["action"])
        state["done"] = done
        if self.env == "webshop":
            state["page"] = observation
            return httpx.Response(200, json={"state": observation, "reward": reward, "done": done,
                                             "info": None})
        answer = {"observation": observation, "reward": reward, "done": done}
        if self.env in ("sciworld", "babyai"):
            answer["score"] = reward * (100 if self.env == "sciworld" else 1)
        if self.env == "alfworld":
            answer["available_actions"] = ["a", "b"]
        return httpx.Response(200, json=answer)


def _missing(field: str) -> httpx.Response:
    return httpx.Response(422, json={"detail": [{"type": "missing", "loc": ["body", field],
                                                 "msg": "Field required"}]})


def fake_env(env: str, **kwargs: Any) -> tuple[AgentGymEnv, FakeAgentGym]:
    fake = FakeAgentGym(env)
    options = {**FAST, **kwargs}
    return AgentGymEnv(env, "http://agentgym.test", transport=fake.transport(), **options), fake


ENVS5 = ["webshop", "alfworld", "babyai", "textcraft", "sciworld"]


@pytest.mark.parametrize("env_name", ENVS5)
def test_protocol_shapes_instruction_rewards(env_name):
    env, fake = fake_env(env_name)
    with env:
        observation = env.reset(f"{env_name}/7")
        assert "goal" in observation or env_name == "sciworld"
        expected = {"sciworld": "Your task is to find goal 7.",  # the server's task_description
                    "textcraft": "craft goal number 7"}.get(env_name, "goal number 7")
        assert env.instruction == expected
        ok = env.step("a")
        assert (ok.reward, ok.done, ok.invalid) == (0.0, False, False)
        bad = env.step("dance")
        assert bad.invalid and not bad.done, bad
        win = env.step(WINS[env_name])
        assert (win.reward, win.done, win.success) == (1.0, True, True)
        assert win.info["steps"] == 3 and "score" in win.info and "truncated" in win.info
        with pytest.raises(EpisodeOver):
            env.step("a")
        # the id travelled under each server's own name
        key = "env_idx" if env_name == "webshop" else "id"
        assert all(key in body for path, body in fake.log if path in ("/reset", "/step"))
        replay = env.replay(["a", "b", WINS[env_name], "a"], [ok.observation, "different", "x"])
        assert replay.n_steps == 3 and replay.success and replay.actions_left == 1
        assert replay.drift == [1, 2] and replay.instruction == expected


def test_step_limit_truncates():
    env, _ = fake_env("babyai")
    with env:
        env.reset("babyai/1", max_steps=2)
        assert not env.step("a").done
        last = env.step("b")
        assert last.done and last.info["truncated"] and last.reward == 0.0


@pytest.mark.parametrize("env_name", ENVS5)
def test_restarted_server_env_is_recreated_and_restored(env_name):
    env, fake = fake_env(env_name)
    with env:
        env.reset(f"{env_name}/3")
        first, second = env.step("a"), env.step("b")
        fake.restart()  # the server forgot every env
        fake.log.clear()
        result = env.step(WINS[env_name])
        assert result.success and result.info["recovered"] == 1 and env.recoveries == 1
        paths = [path for path, _ in fake.log if path != "/close"]
        # the failed step, then a new env, the same task, the two earlier actions, the action
        assert paths == ["/step", "/create", "/reset", "/step", "/step", "/step"]
        assert [body.get("action") for path, body in fake.log if path == "/step"][1:] == [
            "a", "b", WINS[env_name]]
        assert first.observation != second.observation


def test_restore_that_drifts_raises_envcrashed():
    env, fake = fake_env("alfworld")
    with env:
        env.reset("alfworld/3")
        env.step("a")
        fake.restart(world=" (another world)")
        with pytest.raises(EnvCrashed, match=r"did not reproduce .*steps \['reset', 0\]"):
            env.step("b")
        with pytest.raises(EpisodeOver):  # the episode was abandoned
            env.step("b")
        assert env.reset("alfworld/3")  # a new episode works


def test_restore_that_drifts_can_continue_when_asked():
    env, fake = fake_env("textcraft", recover_on_drift=True)
    with env:
        env.reset("textcraft/3")
        env.step("a")
        fake.restart(world=" (another world)")
        result = env.step("b")
        assert result.info["recovered"] == 1 and result.info["recovered_drift"] == ["reset", 0]


def test_transient_failures_are_retried():
    env, fake = fake_env("webshop")
    with env:
        fake.fail_next = [503, httpx.ReadTimeout]
        env.reset("webshop/2")  # two failed resets, then a fresh env
        fake.fail_next = [httpx.RemoteProtocolError]
        result = env.step("a")
        assert result.info["recovered"] == 1 and not result.invalid


def test_failures_beyond_the_retries_raise_envcrashed():
    env, fake = fake_env("sciworld", max_retries=2)
    with env:
        env.reset("sciworld/0")
        fake.fail_next = [httpx.ReadTimeout] * 10
        with pytest.raises(EnvCrashed, match=r"failed 3 times in a row.*rerun it from reset") as info:
            env.step("a")
        assert not isinstance(info.value, ServerUnavailable)


def test_unreachable_server_raises_server_unavailable():
    fake = FakeAgentGym("webshop")
    fake.fail_next = [httpx.ConnectError] * 10
    env = AgentGymEnv("webshop", "http://agentgym.test", transport=fake.transport(), **FAST)
    with pytest.raises(ServerUnavailable, match=r"unreachable: 4 attempts"):
        env.reset("webshop/1")
    env.close()


def test_wrong_server_or_bad_task_is_a_clear_error():
    fake = FakeAgentGym("webshop")  # a WebShop server, driven as a TextCraft one
    env = AgentGymEnv("textcraft", "http://agentgym.test", transport=fake.transport(), **FAST)
    with pytest.raises(EnvError, match=r"HTTP 422.*AgentGym TextCraft server"):
        env.reset("textcraft/1")
    env.close()
    fake = FakeAgentGym("babyai")
    env = AgentGymEnv("babyai", "http://agentgym.test", transport=fake.transport(), **FAST)
    with pytest.raises(EnvError, match="is a webshop task, not a babyai task"):
        env.reset("webshop/1")
    env.close()


# --- eef's AgentGym-protocol server, in process (no Java) -------------------------------------


class FakeWorld:
    """Stands in for eef's ScienceWorld inside SciWorldServer."""

    closed: list[FakeWorld] = []

    def __init__(self) -> None:
        self.instruction = ""
        self.score = 0

    def reset(self, task_id: str) -> str:
        self.instruction, self.score = f"Your task is {task_id}.", 0
        return "This room is called the hallway."

    def step(self, action: str) -> Any:
        from eef_tasks.envs.base import StepResult

        self.score += 25 if action == "progress" else 0
        return StepResult(f"did {action}", self.score / 100, self.score >= 100, {"score": self.score})

    def close(self) -> None:
        FakeWorld.closed.append(self)


def test_server_endpoints_and_env_cap():
    from fastapi.testclient import TestClient

    from eef_tasks.envs.agentgym_server import SciWorldServer, create_app

    server = SciWorldServer(max_envs=2, env_factory=FakeWorld)
    with TestClient(create_app(server)) as client:
        assert client.get("/").json() == "This is environment ScienceWorld."
        first = client.post("/create").json()["id"]
        answer = client.post("/reset", json={"id": first, "data_idx": LIFESPAN_IDX}).json()
        assert (answer["task_name"], answer["var_num"]) == ("lifespan-longest-lived", 0)
        assert answer["task_description"] == f"Your task is {LIFESPAN}."
        assert set(answer) == {"task_name", "var_num", "task_description", "observation", "reward",
                               "score", "deleted", "done"}
        step = client.post("/step", json={"id": first, "action": "progress"}).json()
        assert step == {"observation": "did progress", "reward": 25, "score": 25, "done": False}
        assert client.get("/observation", params={"id": first}).json() == "did progress"
        assert client.get("/detail", params={"id": first}).json()["score"] == 25
        assert client.post("/reset", json={"id": first, "data_idx": 10**6}).json()["error"].startswith(
            "data_idx 1000000 is out of range")
        assert client.post("/step", json={"id": 3, "action": "x"}).json() == {
            "error": "The id 3 is not valid."}
        assert client.post("/step", json={"id": first}).status_code == 422
        second = client.post("/create").json()["id"]
        third = client.post("/create").json()["id"]  # over the cap: the idle LRU env goes
        assert len({first, second, third}) == 3 and server.n_envs == 2
        assert client.post("/step", json={"id": first, "action": "x"}).json() == {
            "error": f"The task with environment {first} has been deleted."}
        assert client.post("/close", json={"id": second}).json() == {"closed": True}
        assert client.post("/close", json={"id": second}).json() == {"closed": False}
    assert server.n_envs == 0 and len(FakeWorld.closed) >= 3  # shutdown closed the rest


# --- the real server, in a subprocess (Java) ---------------------------------------------------

from game import HAVE_JAVA, needs_java  # noqa: E402



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m eef_tasks.envs.agentgym_server` on 127.0.0.1:<port>, in its own process group
    (the server and its JVMs), logging to a file."""

    def __init__(self, port: int, log_dir: Path, *extra: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"server-{port}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eef_tasks.envs.agentgym_server", "--host", "127.0.0.1",
             "--port", str(port), "--max-envs", "2", "--log-level", "warning", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=interrupt.die_with_parent,  # never outlives a killed test run (its JVMs follow)
        )

    def wait_ready(self, timeout_s: float = 60.0) -> ServerProcess:
        try:
            ag.wait_for_server(self.url, timeout_s)
        except ServerUnavailable:
            self.stop()
            raise AssertionError(f"the server did not start:\n{self.log_path.read_text()[-2000:]}")
        return self

    def kill9(self) -> None:
        """SIGKILL the server and its JVMs, as a crash would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down and the app closes its envs
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()  # whatever is left of the group
        self._log.close()


def play(env: AgentGymEnv, actions: list[str]) -> list[Any]:
    """Step through actions until the episode ends (gold paths may end with a spare 'wait1')."""
    results = []
    for action in actions:
        results.append(env.step(action))
        if results[-1].done:
            break
    return results


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> list[str]:
    if not HAVE_JAVA:
        pytest.skip("ScienceWorld needs Java and `pip install scienceworld==1.2.3`")
    from eef_tasks.experts.gold import gold_path

    return gold_path(LIFESPAN, cache_dir=tmp_path_factory.mktemp("gold-cache")).actions


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not HAVE_JAVA:
        pytest.skip("ScienceWorld needs Java and `pip install scienceworld==1.2.3`")
    proc = ServerProcess(free_port(), tmp_path_factory.mktemp("server-logs")).wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gold_episode(server, gold) -> dict[str, Any]:
    """One gold episode through the AgentGym protocol (shared by the tests that need it)."""
    with AgentGymEnv("sciworld", server.url, timeout_s=60) as env:
        initial = env.reset(LIFESPAN)
        results = play(env, gold)
        return {"initial": initial, "instruction": env.instruction, "results": results,
                "actions": gold[: len(results)]}


@needs_java
def test_gold_episode_succeeds_through_the_protocol(gold, gold_episode):
    results = gold_episode["results"]
    assert gold_episode["instruction"].startswith("Your task is to find the animal with the longest")
    assert "This room is called" in gold_episode["initial"]
    assert results[-1].success and results[-1].done and results[-1].info["score"] == 100
    assert not any(r.done for r in results[:-1]) and len(results) >= len(gold) - 1
    assert all(0.0 <= r.reward <= 1.0 for r in results)


@needs_java
def test_replay_reports_drift_against_the_record(server, gold_episode):
    recorded = [r.observation for r in gold_episode["results"]]
    gold = gold_episode["actions"]
    with AgentGymEnv("sciworld", server.url, timeout_s=60) as env:
        replay = env.replay(gold, recorded, task_id=f"sciworld/{LIFESPAN_IDX}")
        assert replay.success and replay.drift == [] and replay.all_applied
        tampered = list(recorded)
        tampered[1] = "You are somewhere else entirely."
        replay = env.replay(gold[:3], tampered)
        assert replay.drift == [1] and not replay.done and env.task_id == f"sciworld/{LIFESPAN_IDX}"
        assert same_observation(env.step(gold[3]).observation, recorded[3])  # and it goes on


@needs_java
def test_server_killed_mid_episode_is_restarted_and_the_episode_goes_on(gold, tmp_path):
    port = free_port()
    first = ServerProcess(port, tmp_path).wait_ready()
    try:
        env = AgentGymEnv("sciworld", first.url, timeout_s=30, max_retries=12, backoff_s=0.2,
                          max_backoff_s=1.0)
        env.reset(LIFESPAN)
        before = [env.step(action) for action in gold[:3]]
        old_id = env.env_id
        first.kill9()
        second = ServerProcess(port, tmp_path)  # not waited for: the client rides out the start
        try:
            rest = play(env, gold[3:])
            assert rest[0].info["recovered"] == 1 and env.recoveries == 1 and env.env_id != old_id
            assert all("recovered" not in r.info for r in rest[1:])
            assert rest[-1].success and not any(r.done for r in before)
            assert env.actions == gold[: 3 + len(rest)]
        finally:
            env.close()
            second.stop()
    finally:
        first.stop()


@needs_java
def test_restarted_server_that_drifts_raises_envcrashed(gold, tmp_path):
    port = free_port()
    first = ServerProcess(port, tmp_path).wait_ready()
    try:
        env = AgentGymEnv("sciworld", first.url, timeout_s=30, max_retries=12, backoff_s=0.2,
                          max_backoff_s=1.0)
        env.reset(LIFESPAN)
        env.step(gold[0])
        first.kill9()
        # the new server has no simplifications: doors start closed, so the replay differs
        second = ServerProcess(port, tmp_path, "--simplifications", "").wait_ready()
        try:
            with pytest.raises(EnvCrashed, match="did not reproduce the observations"):
                env.step(gold[1])
            with pytest.raises(EpisodeOver):
                env.step(gold[1])
        finally:
            env.close()
            second.stop()
    finally:
        first.stop()


def test_no_server_fails_fast_with_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = AgentGymEnv("sciworld", url, timeout_s=5, max_retries=3, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=rf"{url} is unreachable: 4 attempts") as info:
        env.reset(LIFESPAN)
    assert time.monotonic() - started < 5
    assert isinstance(info.value, EnvCrashed) and "docs/agentgym.md" in str(info.value)
    env.close()
    with pytest.raises(ServerUnavailable, match="no AgentGym server answered"):
        ag.wait_for_server(url, timeout_s=0.3)

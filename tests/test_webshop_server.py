"""eef's WebShop behind AgentGym's agentenv-webshop protocol: the endpoints' shapes, and eef's
AgentGym client against the real server process (a gold episode, a synthetic one, a server
killed and restarted mid-episode)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eef_tasks.envs import agentgym as ag
from eef_tasks.envs.agentgym import AgentGymEnv, ServerUnavailable
from eef_tasks.envs.webshop import WebShop
from eef_tasks.experts import run_expert
from eef_tasks.experts import webshop as experts


def test_endpoints_and_shapes():
    from fastapi.testclient import TestClient

    from eef_tasks.envs.agentgym_server import WebShopServer, create_webshop_app

    server = WebShopServer(max_envs=2)
    with TestClient(create_webshop_app(server)) as client:
        assert client.get("/").json() == "ok"
        first = client.post("/create").json()
        assert isinstance(first, int) and client.get("/list_envs").json() == [first]
        answer = client.post("/reset", json={"env_idx": first, "session_id": 0}).json()
        assert answer[1] is None and answer[0].startswith("WebShop [SEP] Instruction: [SEP] Find me")
        assert client.get("/instruction_text", params={"env_idx": first}).json().startswith(
            "Instruction: Find me double sided")
        assert client.get("/available_actions", params={"env_idx": first}).json() == {
            "has_search_bar": True, "clickables": ["search"]}
        step = client.post("/step", json={"env_idx": first, "action": "search[pillow]"}).json()
        assert set(step) == {"state", "reward", "done", "info"} and step["info"] is None
        assert step["state"].startswith("Instruction:") and step["reward"] == 0 and not step["done"]
        assert client.get("/observation", params={"env_idx": first}).json() == step["state"]
        state = client.get("/state", params={"env_idx": first}).json()
        assert set(state) == {"url", "html", "instruction_text"}
        assert client.post("/reset", json={"env_idx": first, "session_id": 6910}).json()[
            "error"].startswith("session_id 6910 is out of range")
        random_goal = client.post("/reset", json={"env_idx": first}).json()
        assert random_goal[0].startswith("WebShop [SEP]")  # no session_id: a random goal
        assert client.post("/step", json={"env_idx": 3, "action": "x"}).json() == {
            "error": "The id 3 is not valid."}
        assert client.post("/step", json={"env_idx": first}).status_code == 422
        second, third = client.post("/create").json(), client.post("/create").json()
        assert server.n_envs == 2  # over the cap: the least recently used idle env went
        assert client.post("/step", json={"env_idx": first, "action": "x"}).json() == {
            "error": f"The task with environment {first} has been deleted."}
        assert client.post("/close", json={"env_idx": second}).json() == {"closed": True}
        assert client.post("/close", json={"env_idx": second}).json() == {"closed": False}
        assert third in client.get("/list_envs").json()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m eef_tasks.envs.agentgym_server --env webshop` in its own process group."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_dir / f"webshop-{port}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eef_tasks.envs.agentgym_server", "--env", "webshop",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self) -> Server:
        ag.wait_for_server(self.url, 60)
        return self

    def kill9(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = Server(_free_port(), tmp_path_factory.mktemp("logs")).wait_ready()
    yield proc
    proc.stop()


def test_client_plays_the_same_episodes_as_the_in_process_env(server):
    local = WebShop()
    with AgentGymEnv("webshop", server.url, timeout_s=30) as remote:
        for task_id in ("webshop/0", "webshop/1500", "webshop/777"):
            actions, _ = experts.plan("gold", task_id)
            mine = local.replay(actions, task_id=task_id)
            theirs = remote.replay(actions, task_id=task_id)
            assert theirs.initial_observation == mine.initial_observation
            assert theirs.observations == mine.observations and theirs.reward == mine.reward == 1.0
            assert remote.instruction == local.instruction
        remote.reset("webshop/3")
        bad = remote.step("click[nothing here]")
        assert bad.invalid and bad.reward == 0 and not bad.done  # the page did not change
        assert remote.available_actions()["has_search_bar"] is True
        run = run_expert(remote, "webshop/1501", "synthetic", seed=2)
        assert run.meta["synthetic"] and run.meta["env_version"] is None
        assert run.reward == run_expert(local, "webshop/1501", "synthetic", seed=2).reward


def test_server_killed_mid_episode_is_restored_by_replay(tmp_path):
    port = _free_port()
    first = Server(port, tmp_path).wait_ready()
    second = None
    try:
        env = AgentGymEnv("webshop", first.url, timeout_s=30, max_retries=12, backoff_s=0.2,
                          max_backoff_s=1.0)
        actions, _ = experts.plan("gold", "webshop/5")
        env.reset("webshop/5")
        env.step(actions[0])
        first.kill9()
        second = Server(port, tmp_path)  # not waited for: the client rides out the start
        rest = [env.step(a) for a in actions[1:]]
        assert rest[0].info["recovered"] == 1 and env.recoveries == 1
        assert rest[-1].done and rest[-1].reward == 1.0
        env.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_no_server_is_a_clear_error():
    env = AgentGymEnv("webshop", f"http://127.0.0.1:{_free_port()}", timeout_s=5, max_retries=1,
                      backoff_s=0.05)
    with pytest.raises(ServerUnavailable, match="is unreachable"):
        env.reset("webshop/0")

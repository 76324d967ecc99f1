"""The pipeline is environment-generic: a run names a registered environment.

- the registry without a game: backends, task envs, the eval-task rule for every backend that plays
  ScienceWorld's tasks, a clear one-line error for an unknown environment;
- `eef run --preset tiny --env agentgym:sciworld` end to end through the real console script:
  expert data from eef's ScienceWorld, then every rollout, simulation and evaluation of both runs
  played through eef's AgentGym-protocol server (`python -m eef_tasks.envs.agentgym_server`, a
  real server process whose access log counts the requests it served).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eef_tasks import envs, store
from eef_tasks.envs import registry
from eef_tasks.envs.agentgym import wait_for_server
from eef_tasks.envs.base import EnvError
from eef_tasks.pipeline import PipelineError, RunConfig, preset_config

from game import needs_java  # noqa: E402

EEF = Path(sys.executable).with_name("eef")


def test_backends_name_the_task_env_they_play() -> None:
    assert registry.backend("scienceworld").task_env == "scienceworld"
    assert registry.backend("agentgym:sciworld").task_env == "scienceworld"  # the same task ids
    assert registry.backend("agentgym:webshop").task_env == "webshop"
    assert registry.backend("webshop").name == "webshop"  # eef's own WebShop
    assert registry.backend("webshop").task_env == "webshop"
    assert registry.backend("alfworld").name == "agentgym:alfworld"  # a bare name without a native one
    assert RunConfig(run_id="r", env="agentgym:sciworld").task_env == "scienceworld"
    with pytest.raises(EnvError, match="unknown environment 'nope'; registered: scienceworld, webshop, agentgym:sciworld"):
        registry.backend("nope")
    with pytest.raises(PipelineError, match="run settings, env: unknown environment 'nope'"):
        preset_config("tiny", "r", env="nope")
    assert registry.env_kwargs("agentgym:sciworld", "http://h:1") == {"base_url": "http://h:1"}
    with pytest.raises(EnvError, match="takes no server URL"):
        registry.env_kwargs("scienceworld", "http://h:1")
    assert envs.find_task("webshop/12").split == "test" and envs.find_task("webshop/2000").split == "train"
    assert envs.find_task("webshop/12").max_steps == 10


def test_eval_tasks_are_never_training_tasks_whichever_backend_plays_them() -> None:
    native = registry.eval_tasks("scienceworld", "dev", ["find-animal"])
    assert native and registry.eval_tasks("agentgym:sciworld", "dev", ["find-animal"]) == native
    dev = [s.task_id for s in registry.catalog("scienceworld", "dev", ["find-animal"])]
    leaked = [t for t in dev if registry.find_task(t).split == "train"]
    assert leaked and not set(leaked) & set(native)  # ETO's dev repeats train pairs: they stay train
    with pytest.raises(EnvError, match="must not be training tasks"):
        registry.check_eval_tasks([native[0], leaked[0]])
    with pytest.raises(EnvError, match="'dev' or 'test'"):
        registry.eval_tasks("agentgym:sciworld", "train")
    with pytest.raises(EnvError, match="webshop tasks have no names"):
        registry.eval_tasks("agentgym:webshop", "test", ["boil"])


def test_unknown_environment_is_one_line_before_anything_starts(tmp_path) -> None:
    proc = subprocess.run([str(EEF), "run", "--preset", "tiny", "--env", "nope", "--db", str(tmp_path / "x.duckdb")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: run settings, env: unknown environment 'nope'; registered: " + ", ".join(registry.BACKENDS)]
    assert not (tmp_path / "x.duckdb").exists()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sciworld_server(tmp_path):
    """eef's AgentGym SciWorld server in its own process group, access log on (log level debug)."""
    port, log = _free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eef_tasks.envs.agentgym_server", "--host", "127.0.0.1", "--port", str(port),
             "--max-envs", "4", "--log-level", "debug"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, 60)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the server's JVMs
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@needs_java
@pytest.mark.timeout(900)
def test_tiny_preset_end_to_end_on_agentgym_sciworld(tmp_path, sciworld_server) -> None:
    url, log = sciworld_server
    db = tmp_path / "eef.duckdb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EEF_TORCH_THREADS": "1", "EEF_GPU_LOCK": str(tmp_path / "slot.lock")}
    env.pop("EEF_AGENTGYM_URL", None)  # the URL comes from the run's settings only
    proc = subprocess.run(
        [str(EEF), "run", "--preset", "tiny", "--db", str(db), "--name", "ag", "--env", "agentgym:sciworld",
         "--env-url", url, "--set", f"adapters_dir={tmp_path / 'adapters'}", "--out", str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with store.reader(db) as con:
        configs = con.execute("SELECT run_id, method, config->>'$.config.env' FROM runs ORDER BY run_id").fetchall()
        assert configs == [("ag-eef", "eef", "agentgym:sciworld"), ("ag-rft", "rft", "agentgym:sciworld")]
        purposes = dict(con.execute("SELECT purpose, count(*) FROM trajectories GROUP BY ALL").fetchall())
        assert {"expert", "explore", "simulate", "eval"} <= set(purposes)
        policy_steps, simulated_prefix = con.execute(
            """SELECT sum(n_steps), sum(branch_step) FROM trajectories WHERE source = 'policy'""").fetchall()[0]
        task_envs = con.execute("SELECT DISTINCT env FROM tasks").fetchall()
        evals = con.execute("""SELECT run_id, iteration, count(*) FROM trajectories WHERE purpose = 'eval'
                               GROUP BY ALL ORDER BY ALL""").fetchall()
        cmp = con.execute("SELECT run_id, iteration, method, eval_split FROM run_comparison ORDER BY ALL").fetchall()
    assert task_envs == [("scienceworld",)]  # AgentGym's SciWorld plays eef's ScienceWorld task ids
    assert evals == [("ag-eef", 0, 1), ("ag-eef", 1, 1), ("ag-rft", 1, 1)]
    assert ("ag-eef", 1, "eef", "dev") in cmp and ("ag-rft", 1, "rft", "dev") in cmp
    # every policy action (simulations' replayed expert prefixes included) was a /step on the server
    served = log.read_text()
    steps_served = len(re.findall(r'"POST /step HTTP/1.1" 200', served))
    resets_served = len(re.findall(r'"POST /reset HTTP/1.1" 200', served))
    assert policy_steps > 0 and simulated_prefix > 0
    assert steps_served >= policy_steps
    assert resets_served >= sum(purposes.values()) - purposes["expert"]

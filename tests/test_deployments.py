"""Deployments: `eef serve` and prefect.yaml against a REAL local Prefect server.

A `prefect server start` subprocess (temporary PREFECT_HOME, SQLite) is started once for the
module; `eef serve` and a process worker run as further subprocesses, each in its own process
group, killed at the end whatever happens. The pytest process talks to the server through
`temporary_settings`, never through the user's profile.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from eef_tasks import interrupt, store
from eef_tasks.testing import synthetic_store
from eef_tasks.errors import UserError

import processes  # noqa: E402 - tests/processes.py

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EEF = str(BIN / "eef")
PREFECT = str(BIN / "prefect")
FLOW_NAMES = {"iteration", "eef", "rft", "evaluate", "compare", "experiment", "collect", "select"}


def base_env(home: Path) -> dict[str, str]:
    """The environment of a child process: no PREFECT_* setting of the caller, a private PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               HF_HUB_OFFLINE="1", PREFECT_LOGGING_LEVEL="INFO")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children outliving their leader too
    except ProcessLookupError:
        pass
    proc.wait(timeout=grace)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@dataclass
class Server:
    api_url: str
    home: Path


@contextmanager
def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=interrupt.die_with_parent)  # never outlives a killed test run
    try:
        yield proc
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = base_env(home) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_UI_ENABLED": "false",
    }
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    with spawn([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log, home) as proc:
        processes.wait_http(f"{api_url}/health", proc, log, 90, "`prefect server start`", on_failure=pytest.skip)
        yield Server(api_url, home)


@contextmanager
def client_of(server: Server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        yield client


def wait_for_deployments(server: Server, names: list[str], proc: subprocess.Popen, log: Path, timeout: float = 90):
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    found = {}
    with client_of(server) as client:
        while len(found) < len(names):
            assert proc.poll() is None, f"the serving process exited ({proc.returncode}):\n{tail(log)}"
            assert time.monotonic() < deadline, f"deployments not registered after {timeout} s:\n{tail(log)}"
            for name in names:
                if name not in found:
                    try:
                        found[name] = client.read_deployment_by_name(name)
                    except ObjectNotFound:
                        pass
            time.sleep(0.5)
    return found


def run_and_wait(server: Server, name: str, parameters: dict, timeout: float = 120):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        return run_deployment(name, parameters=parameters, timeout=timeout, poll_interval=1)


def example_counts(db: Path) -> dict[tuple[str, int, str], int]:
    with store.reader(db) as con:
        rows = con.execute("SELECT run_id, iteration, method, count(*) FROM training_examples "
                           "GROUP BY ALL ORDER BY ALL").fetchall()
    return {(run, it, method): n for run, it, method, n in rows}


# --- without a server ---------------------------------------------------------------------------------


def test_serve_refuses_without_a_server(tmp_path):
    env = base_env(tmp_path)
    proc = subprocess.run([EEF, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "PREFECT_API_URL is not set" in proc.stderr and "prefect server start" in proc.stderr
    assert "Traceback" not in proc.stderr

    env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"
    proc = subprocess.run([EEF, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "no Prefect server answers" in proc.stderr and env["PREFECT_API_URL"] in proc.stderr
    assert "Traceback" not in proc.stderr


def test_deployments_are_built_for_every_flow(tmp_path):
    from flows.serve import deployments

    built = deployments(interval=600, iteration_run="demo-eef", db=tmp_path / "s.duckdb")
    assert {d.flow_name for d in built} == FLOW_NAMES
    assert {d.name for d in built} == {"served"}
    by_flow = {d.flow_name: d for d in built}
    iteration = by_flow["iteration"]
    assert [s.schedule.interval.total_seconds() for s in iteration.schedules] == [600]
    assert iteration.parameters == {"params": {"db": str(tmp_path / "s.duckdb"), "run_id": "demo-eef"}}
    assert iteration.concurrency_limit == 1
    assert by_flow["eef"].parameters["params"]["run"]["run_id"] == "eef-1"  # the full form, defaults filled in
    assert all(d.schedules == [] for d in built if d.flow_name != "iteration")
    assert all("eef" in d.tags and d.description for d in built)
    for d in built:  # module entrypoints: served from any working directory
        module, _, attr = d.entrypoint.rpartition(".")
        assert getattr(importlib.import_module(module), attr).name == d.flow_name

    cron = deployments(cron="0 3 * * *", iteration_run="demo-eef")
    assert [s.schedule.cron for s in cron[0].schedules] == ["0 3 * * *"]
    assert deployments()[0].parameters == {}  # the flows' own defaults
    for kwargs, message in [({"interval": 60}, "--run"), ({"cron": "not a cron", "iteration_run": "r"}, "cron"),
                            ({"interval": 60, "cron": "0 3 * * *", "iteration_run": "r"}, "not both"),
                            ({"interval": 0, "iteration_run": "r"}, "positive")]:
        with pytest.raises(UserError, match=message):
            deployments(**kwargs)


def test_prefect_yaml_names_every_flow():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $EEF_HOME }}"}}]
    flows = {}
    for spec in config["deployments"]:
        path, _, attr = spec["entrypoint"].partition(":")
        assert (REPO / path).is_file(), spec["entrypoint"]
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert type(flow).__name__ == "Flow", spec["entrypoint"]
        flows[flow.name] = spec
        assert spec["work_pool"]["name"] == "eef-process" and spec["name"] == "pool"
    assert set(flows) == FLOW_NAMES
    iteration = flows["iteration"]
    assert iteration["schedules"] and not any(s.get("active", True) for s in iteration["schedules"])
    from flows.pipeline import IterationParams

    IterationParams(**iteration["parameters"]["params"])


# --- against the server ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_serve_and_work_pool_deployments_run_flows(server, tmp_path):
    db = tmp_path / "store.duckdb"
    synthetic_store.generate_store(db, n_tasks=30, n_iterations=1, seed=0, overwrite=True)
    env = base_env(server.home) | {"PREFECT_API_URL": server.api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}

    # `eef serve` from a directory outside the repository: registers <flow>/served and runs what is triggered
    log = tmp_path / "serve.log"
    cmd = [EEF, "serve", "--run", "demo-eef", "--interval", "3600", "--db", str(db)]
    with spawn(cmd, env, log, tmp_path) as serving:
        found = wait_for_deployments(server, [f"{name}/served" for name in sorted(FLOW_NAMES)], serving, log)
        iteration = found["iteration/served"]
        assert [(s.schedule.interval.total_seconds(), s.active) for s in iteration.schedules] == [(3600, True)]
        assert iteration.parameters == {"params": {"db": str(db), "run_id": "demo-eef"}}
        assert "params" in found["eef/served"].parameter_openapi_schema["properties"]  # a form in the UI

        flow_run = run_and_wait(server, "select/served", {
            "db": str(db), "run_id": "synthetic-run-1", "iterations": 1, "method": "eef"})
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{tail(log)}"
        counts = example_counts(db)
        assert set(counts) == {("synthetic-run-1", 0, "bc"), ("synthetic-run-1", 1, "eef")}
        assert all(n > 0 for n in counts.values())
        printed = log.read_text()
        assert f"Prefect API: {server.api_url}" in printed
        assert "iteration/served advances run 'demo-eef'" in printed
    with client_of(server) as client:  # a stopped `eef serve` pauses its schedule
        assert client.read_deployment_by_name("iteration/served").paused

    # prefect.yaml: a process work pool, `prefect deploy --all`, one run picked up by a worker
    def prefect_cli(*args: str, cwd: Path = REPO) -> None:
        proc = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    prefect_cli("work-pool", "create", "eef-process", "--type", "process")
    prefect_cli("--no-prompt", "deploy", "--all")
    with client_of(server) as client:
        pooled = client.read_deployment_by_name("iteration/pool")
        assert pooled.work_pool_name == "eef-process"
        assert [(s.schedule.interval.total_seconds(), s.active) for s in pooled.schedules] == [(21600, False)]
        assert client.read_deployment_by_name("eef/pool").entrypoint == "flows/pipeline.py:eef_flow"
    scheduled = run_and_wait(server, "select/pool", {
        "db": str(db), "run_id": "synthetic-run-1", "iterations": 1, "method": "rft"}, timeout=0)
    worker_log = tmp_path / "worker.log"
    with spawn([PREFECT, "worker", "start", "--pool", "eef-process", "--run-once"],
               env | {"EEF_HOME": str(REPO)}, worker_log, tmp_path) as worker:
        worker.wait(timeout=120)
    with client_of(server) as client:
        state = client.read_flow_run(scheduled.id).state
    assert state.is_completed(), f"{state}\n{tail(worker_log)}"
    assert example_counts(db)[("synthetic-run-1", 1, "rft")] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_stops_on_ctrl_c_and_sigterm(server, tmp_path, sig):
    """Ctrl-C (SIGINT to the group) or SIGTERM (the main process): schedules paused, one line,
    130 / 143, and no process of `eef serve` left."""
    db = tmp_path / "store.duckdb"
    env = base_env(server.home) | {"PREFECT_API_URL": server.api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    proc = processes.start([EEF, "serve", "--run", "demo-eef", "--interval", "3600", "--db", str(db)],
                           env, out, err, cwd=tmp_path)
    try:
        wait_for_deployments(server, [f"{name}/served" for name in sorted(FLOW_NAMES)], proc, err)
        processes.wait_for(lambda: "serving until Ctrl-C" in out.read_text(), proc, 60, "eef serve to serve")
        with client_of(server) as client:  # registered by this process (an earlier one paused it)
            processes.wait_for(lambda: not client.read_deployment_by_name("iteration/served").paused, proc, 60,
                               "the iteration schedule to be active")
        status, took, after, alive = processes.stop_and_check(proc, sig, err)
    finally:
        stop(proc)
    assert status == 128 + sig, after[-3000:]
    assert took < 30, f"took {took:.1f} s to stop"
    assert after.strip().splitlines() == [processes.LINE.format("eef serve")]
    assert alive == []
    with client_of(server) as client:
        assert client.read_deployment_by_name("iteration/served").paused

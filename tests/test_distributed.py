"""Rollouts on a real local Ray cluster (a head and a second worker node, `ray start`, on this
machine), fanned out by Prefect's Ray task runner under a real temporary Prefect server: the real
game, the real SmolLM2 checkpoint, real DuckDB files.

- The shards store exactly the trajectories a local run stores (same ids, same count; the
  simulation's replayed prefix is the expert's), and a rerun stores nothing twice.
- A Ray worker killed with SIGKILL in the middle of its shard: after the retry, no row is lost and
  none is duplicated.

Skipped without the `[ray]` extra (`pip install -e '.[ray]'`)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect_ray", reason="the [ray] extra is not installed")

from eef_tasks import store  # noqa: E402
from eef_tasks.distributed import ray_rollouts  # noqa: E402
from eef_tasks.engines import SamplingConfig  # noqa: E402
from eef_tasks.engines.hf import HFEngine  # noqa: E402
from eef_tasks.rollout import RolloutEpisode, traj_id_for_rollout  # noqa: E402

from game import needs_java  # noqa: E402
from test_agentgym import free_port  # noqa: E402
from test_rollout import FIND, _store_gold  # noqa: E402

pytestmark = [needs_java, pytest.mark.slow, pytest.mark.timeout(900)]

RAY = Path(sys.executable).with_name("ray")
SAMPLING = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=16, seed=1)


def _ray(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], check=True, capture_output=True, text=True, timeout=180, **kw)


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second worker node, one CPU each; stopped after the module."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="eef-ray-")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        _ray("start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false",
             "--disable-usage-stats", "--temp-dir", temp, env=env)
        _ray("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--disable-usage-stats", env=env)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def gold_store(tmp_path_factory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("gold") / "gold.duckdb"
    gold_id, _ = _store_gold(db)
    return db, gold_id


def _copy(db: Path, to: Path) -> Path:
    shutil.copy(db, to)
    return to


def _stored(db: Path, run_id: str) -> list[tuple]:
    with store.reader(db) as con:
        return con.execute("SELECT traj_id, purpose, branch_step FROM trajectories WHERE run_id = ? ORDER BY 1",
                           [run_id]).fetchall()


def test_ray_shards_store_what_a_local_run_stores(cluster, prefect_server, model_path, gold_store, tmp_path):
    """A local run stores exactly the deterministic ids `traj_id_for_rollout` gives its episodes
    (tests/test_rollout.py); the shards store the same ids, as many, with the same replay."""
    db, gold_id = gold_store
    on_ray = _copy(db, tmp_path / "ray.duckdb")
    factory = functools.partial(HFEngine, str(model_path), None, device="cpu", max_batch_size=8)
    explore = [RolloutEpisode(FIND, sample=s) for s in range(3)]
    sims = [RolloutEpisode(FIND, gold_id, 2)]
    common = dict(engine_factory=factory, sampling=SAMPLING, n_workers=2)
    for purpose, episodes, steps in (("explore", explore, 2), ("simulate", sims, 3)):
        summary = ray_rollouts(cluster, shards=2)(on_ray, "r", 1, episodes, purpose=purpose, max_steps=steps, **common)
        assert (summary.ran, summary.written, summary.errors) == (len(episodes), len(episodes), [])
    want = sorted([(traj_id_for_rollout("r", 1, "explore", e), "explore", 0) for e in explore]
                  + [(traj_id_for_rollout("r", 1, "simulate", sims[0]), "simulate", 2)])
    assert _stored(on_ray, "r") == want
    with store.reader(on_ray) as con:
        replayed = con.execute("SELECT action FROM steps WHERE traj_id = ? AND step < 2 ORDER BY step", [want[-1][0]]).fetchall()
        expert = con.execute("SELECT action FROM steps WHERE traj_id = ? AND step < 2 ORDER BY step", [gold_id]).fetchall()
        assert replayed == expert
        model_ids = con.execute("SELECT DISTINCT model_id FROM trajectories WHERE run_id = 'r'").fetchall()
        assert model_ids == [("smollm2-135m-instruct",)]
    # a rerun plans nothing and starts no shard
    again = ray_rollouts(cluster, shards=2)(on_ray, "r", 1, explore, purpose="explore", max_steps=2, **common)
    assert (again.already_stored, again.ran, again.written) == (3, 0, 0)


def _shard_workers() -> list[int]:
    """Pids of Ray workers running a rollout shard now (Ray titles them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::rollout shard"):
            pids.append(int(entry.name))
    return pids


def test_a_shard_whose_worker_is_killed_is_rerun_without_loss_or_duplicates(cluster, prefect_server, model_path,
                                                                             gold_store, tmp_path):
    db = _copy(gold_store[0], tmp_path / "kill.duckdb")
    factory = functools.partial(HFEngine, str(model_path), None, device="cpu", max_batch_size=8)
    episodes = [RolloutEpisode(FIND, sample=s) for s in range(4)]
    done: dict = {}

    def run() -> None:
        try:
            done["summary"] = ray_rollouts(cluster, shards=2)(
                db, "k", 1, episodes, purpose="explore", max_steps=3, engine_factory=factory, sampling=SAMPLING,
                n_workers=2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            done["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        workers = _shard_workers()
        if workers:
            time.sleep(3)  # well inside the shard: model loaded or loading, games starting
            if workers[0] in _shard_workers():
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
        time.sleep(0.2)
    thread.join(timeout=600)
    assert killed is not None, "no shard was seen running"
    assert "error" not in done, done.get("error")
    summary = done["summary"]
    assert summary.errors == []
    rows = _stored(db, "k")
    assert len(rows) == len({r[0] for r in rows}) == 4
    assert {r[0] for r in rows} == {traj_id_for_rollout("k", 1, "explore", e) for e in episodes}


def test_runner_setting_routes_rollout_phases_to_ray():
    from eef_tasks.pipeline import phases
    from eef_tasks.pipeline.settings import RunConfig
    from eef_tasks.rollout import run_rollouts

    assert phases.rollout_runner(RunConfig(run_id="a")) is run_rollouts
    on_ray = phases.rollout_runner(RunConfig(run_id="a", runner="ray", ray_shards=3))
    assert on_ray is not run_rollouts and on_ray.__qualname__.startswith("ray_rollouts")

"""Stopping cleanly (eef_tasks.interrupt), with real processes and real signals.

- children die with their parent, even when it is killed with SIGKILL: a Popen child with the
  parent-death signal, a multiprocessing worker started from a thread that has ended;
- `eef evaluate` (the real model, real ScienceWorld) stopped by Ctrl-C and `eef collect` (game
  JVMs in pool workers) stopped by SIGTERM while they work: they exit within seconds with one
  line and status 130 / 143, no process of theirs survives, and the same command run again ends
  with the rows of an uninterrupted run.
`eef run` (the flows, the temporary Prefect server) is stopped both ways in
tests/test_pipeline_flows.py, `eef serve` in tests/test_deployments.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from eef_tasks import store

from game import needs_java  # noqa: E402
from processes import LINE, has_descendant, start, stop_and_check, survivors, tree, wait_for  # noqa: E402

EEF = Path(sys.executable).with_name("eef")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "EEF_TORCH_THREADS": "1"}

ORPHANS = textwrap.dedent("""
    import multiprocessing as mp, subprocess, sys, threading, time
    from eef_tasks import interrupt

    def worker():
        interrupt.exit_with_parent(poll_s=0.1)
        time.sleep(600)

    if __name__ == "__main__":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 preexec_fn=interrupt.die_with_parent)
        workers = []
        # as a rollout slot does: a thread starts the worker and ends before it
        starter = threading.Thread(target=lambda: workers.append(mp.get_context("spawn").Process(target=worker)))
        starter.start(); starter.join()
        starter = threading.Thread(target=workers[0].start)
        starter.start(); starter.join()
        print(child.pid, workers[0].pid, flush=True)
        time.sleep(600)
""")


def test_children_die_with_a_killed_parent(tmp_path) -> None:
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=ENV,
                              start_new_session=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(1.0)
        children = [psutil.Process(p) for p in pids]
        assert len(survivors(children)) == 2  # the worker outlives the thread that started it
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while survivors(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert survivors(children) == []
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _trajectories(db: Path) -> list[tuple]:
    with store.reader(db) as con:
        return sorted(con.execute(
            "SELECT t.traj_id, t.purpose, t.reward, t.n_steps, count(s.step) FROM trajectories t "
            "LEFT JOIN steps s USING (traj_id) GROUP BY ALL").fetchall())


@needs_java
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_stops_evaluate_and_the_rerun_resumes(tmp_path) -> None:
    def args(db: Path) -> list[str]:
        return [str(EEF), "evaluate", "--db", str(db), "--run", "base-eval", "--split", "dev",
                "--tasks", "lifespan-shortest-lived", "--limit", "2", "--max-steps", "10",
                "--max-new-tokens", "48", "--workers", "2"]

    db, out, err = tmp_path / "eef.duckdb", tmp_path / "out.log", tmp_path / "err.log"
    proc = start(args(db), ENV, out, err)
    # inside the model phase: the games are up and the model is loaded
    wait_for(lambda: has_descendant(proc, "java")() and "Loading weights" in err.read_text(), proc, 300,
             "the evaluation to start generating")
    time.sleep(1.0)
    status, took, after, alive = stop_and_check(proc, signal.SIGINT, err)
    assert status == 130, after
    assert took < 30, f"took {took:.1f} s to stop"
    assert after.strip().splitlines() == [LINE.format("evaluate of base-eval iteration 0")]
    assert alive == []

    rerun = subprocess.run(args(db), capture_output=True, text=True, timeout=300, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reference = tmp_path / "reference.duckdb"
    clean = subprocess.run(args(reference), capture_output=True, text=True, timeout=300, env=ENV)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert _trajectories(db) == _trajectories(reference)  # greedy: the same episodes, once each


@needs_java
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_stops_collect_and_the_rerun_resumes(tmp_path) -> None:
    def args(db: Path) -> list[str]:
        return [str(EEF), "collect", "--db", str(db), "--expert", "synthetic", "--tasks", "lifespan-longest-lived",
                "--split", "train", "--limit", "6", "--seed", "0", "--seed", "1", "--seed", "2", "--workers", "2"]

    db, out, err = tmp_path / "eef.duckdb", tmp_path / "out.log", tmp_path / "err.log"
    proc = start(args(db), ENV, out, err)
    wait_for(has_descendant(proc, "java"), proc, 120, "the game JVMs to start")
    procs = tree(proc.pid)
    assert sum("java" in " ".join(p.cmdline()) for p in procs if p.is_running()) >= 1
    status, took, after, alive = stop_and_check(proc, signal.SIGTERM, err)
    assert status == 143, after
    assert took < 30, f"took {took:.1f} s to stop"
    assert after.strip().splitlines() == [LINE.format("collect of the synthetic expert on scienceworld")]
    assert alive == []

    rerun = subprocess.run(args(db), capture_output=True, text=True, timeout=300, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reference = tmp_path / "reference.duckdb"
    clean = subprocess.run(args(reference), capture_output=True, text=True, timeout=300, env=ENV)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert _trajectories(db) == _trajectories(reference)

"""The whole method through the Prefect flows, on the `tiny` preset: real ScienceWorld, the real
synthetic expert, real SmolLM2 training and rollouts, a real (temporary) Prefect server.

- `experiment` end to end: trajectories of every purpose, examples of each kind, an adapter per
  iteration, evaluation rows, artifacts, the comparison files.
- resume: `eef run` killed with SIGKILL in the middle of iteration 1 and run again ends with
  exactly the keys of the uninterrupted run, nothing duplicated, and what was stored before the
  kill untouched; no process of the killed run (temporary Prefect server included) survives it.
- stopping: the same after Ctrl-C (SIGINT to the process group) and SIGTERM (to `eef run` only)
  inside the explore phase, which moreover exit within seconds with one line and 130 / 143, and
  leave the flow and task runs marked crashed on the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eef_tasks import pipeline, store

from game import needs_java  # noqa: E402
from processes import LINE, cmdline, has_descendant, start, stop_and_check, survivors, tree, wait_for  # noqa: E402

pytestmark = [
    needs_java,
    pytest.mark.timeout(900),
]

NAME = "t"
RUNS = (f"{NAME}-eef", f"{NAME}-rft")
EEF = Path(sys.executable).with_name("eef")


def _eef_run_args(db: Path, work: Path) -> list[str]:
    return [str(EEF), "run", "--preset", "tiny", "--db", str(db), "--name", NAME,
            "--set", f"adapters_dir={work / 'adapters'}", "--out", str(work / "reports")]


def _rows(db: Path) -> dict[str, list[tuple]]:
    with store.reader(db) as con:
        q = lambda sql: sorted(con.execute(sql).fetchall())  # noqa: E731
        return {
            "trajectories": q("SELECT traj_id, run_id, iteration, purpose, branch_step FROM trajectories"),
            "steps": q("SELECT traj_id, step FROM steps"),
            "examples": q("SELECT run_id, iteration, method, state_kind, state_traj_id, state_step, task_id "
                          "FROM training_examples"),
            "phases": q("SELECT run_id, iteration, phase FROM run_phases"),
        }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted run of the `experiment` flow on the tiny preset (what `eef run --preset tiny`
    starts), in its own store, under a temporary Prefect server; returns the artifacts it left and
    the flow runs' (flow name, run name) by id."""
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import ExperimentParams, experiment_flow

    work = tmp_path_factory.mktemp("full")
    db = work / "eef.duckdb"
    with prefect_test_harness(server_startup_timeout=120):
        result = experiment_flow(ExperimentParams(
            db=str(db), preset="tiny", name=NAME, out_dir=str(work / "reports"),
            overrides={"adapters_dir": str(work / "adapters")},
        ))
        with get_client(sync_client=True) as client:
            artifacts = {(a.key, a.type): a for a in client.read_artifacts()}
            flows = {f.id: f.name for f in client.read_flows()}
            runs = {r.id: (flows[r.flow_id], r.name) for r in client.read_flow_runs()}
    return work, db, result, artifacts, runs


def test_experiment_runs_every_phase_and_reports(full_run) -> None:
    work, db, result, artifacts, _ = full_run
    assert result["rows"] >= 4 and Path(result["plot"]).is_file()
    keys = {key for key, _ in artifacts if key}
    assert {"t-eef-it0", "t-eef-it1", "t-rft-it1", "t-eef-summary", "t-rft-summary",
            "compare-t-eef-t-rft", "compare-t-eef-t-rft-plot"} <= keys
    assert artifacts[("t-eef-it1", "table")].data  # one row per phase
    assert "data:image/png;base64," in artifacts[("compare-t-eef-t-rft-plot", "markdown")].data
    progress = [a for (key, kind), a in artifacts.items() if kind == "progress"]
    assert progress and all(float(a.data) == 100.0 for a in progress)
    with store.reader(db) as con:
        purposes = dict(con.execute("SELECT purpose, count(*) FROM trajectories GROUP BY ALL").fetchall())
        assert {"expert", "explore", "simulate", "eval"} <= set(purposes)
        sims = con.execute(
            "SELECT count(*) FROM trajectories WHERE purpose = 'simulate' AND run_id = 't-rft'").fetchall()[0][0]
        assert sims == 0  # the baseline never simulates
        kinds = dict(con.execute(
            "SELECT method, list(DISTINCT state_kind) FROM training_examples GROUP BY ALL").fetchall())
        assert kinds["bc"] == ["expert_success"]
        assert "initial" in kinds["eef"] and "initial" in kinds["rft"]
        evals = con.execute("""SELECT run_id, iteration, count(*) FROM trajectories WHERE purpose = 'eval'
                               GROUP BY ALL ORDER BY ALL""").fetchall()
        # the rft run reuses the eef run's behaviour-cloning adapter (and its evaluation)
        assert evals == [("t-eef", 0, 1), ("t-eef", 1, 1), ("t-rft", 1, 1)]
        splits = con.execute("""SELECT DISTINCT k.split FROM trajectories t JOIN tasks k USING (task_id)
                                WHERE t.purpose = 'eval'""").fetchall()
        assert splits == [("dev",)]
        cmp = con.execute("SELECT run_id, iteration, method FROM run_comparison ORDER BY ALL").fetchall()
        assert ("t-eef", 1, "eef") in cmp and ("t-rft", 1, "rft") in cmp
    for run in RUNS:
        assert pipeline.next_iteration(db, run) is None
    for adapter in ("t-eef/bc-it0", "t-eef/eef-it1", "t-rft/rft-it1"):
        assert (work / "adapters" / adapter / "adapter_config.json").is_file(), adapter
    reports = sorted(p.name for p in (work / "reports").iterdir())
    assert {"compare-t-eef-t-rft.csv", "compare-t-eef-t-rft.md", "win-rate-t-eef-t-rft.png",
            "win-rate-t-eef-t-rft.svg"} <= set(reports)
    assert (work / "reports" / "win-rate-t-eef-t-rft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _table(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_the_ui_shows_every_number_of_every_iteration(full_run) -> None:
    """The artifacts as the Prefect UI reads them back from the server: per iteration table, every
    row has every column (the UI takes its columns from the first row) and the key numbers are
    there, equal to what the store holds; the run you trigger carries the comparison; run names."""
    from flows.artifacts import COLUMNS, KEY_METRICS

    _, db, _, artifacts, runs = full_run
    tables = {key: _table(a) for (key, kind), a in artifacts.items()
              if kind == "table" and re.fullmatch(r"t-(eef|rft)-it\d+", key or "")}
    with store.reader(db) as con:
        done = con.execute("SELECT DISTINCT run_id, iteration FROM run_phases ORDER BY ALL").fetchall()
        phases = {(r, i, p): json.loads(s) for r, i, p, s in
                  con.execute("SELECT run_id, iteration, phase, summary FROM run_phases").fetchall()}
        kinds = {(r, i, k): n for r, i, k, n in con.execute(
            "SELECT run_id, iteration, state_kind, count(*) FROM training_examples GROUP BY ALL").fetchall()}
        sims = dict(((r, i), n) for r, i, n in con.execute(
            "SELECT run_id, iteration, count(*) FROM trajectories WHERE purpose = 'simulate' GROUP BY ALL").fetchall())
        scores = {(r, i): (w, m) for r, i, w, m in con.execute(
            "SELECT run_id, iteration, win_rate, mean_reward FROM run_comparison").fetchall()}
    assert sorted(tables) == sorted(f"{r}-it{i}" for r, i in done)
    assert {"t-eef-it0", "t-eef-it1", "t-rft-it1"} <= set(tables)
    for key, rows in tables.items():
        run, iteration = key.rsplit("-it", 1)[0], int(key.rsplit("-it", 1)[1])
        assert all(list(row) == list(COLUMNS) for row in rows), key
        assert [row["metric"] for row in rows[: len(KEY_METRICS)]] == list(KEY_METRICS), key
        value = {row["metric"]: row["value"] for row in rows}
        for kind, metric in (("initial", "examples: initial states"), ("need_recover", "examples: need-recover states"),
                             ("expert_success", "examples: expert successes")):
            assert value[metric] == kinds.get((run, iteration, kind), 0), (key, metric)
        assert value["examples: total"] == sum(n for (r, i, _), n in kinds.items() if (r, i) == (run, iteration))
        assert value["simulations"] == sims.get((run, iteration), 0), key
        assert isinstance(value["need-recover states found so far"], int), key
        train = phases[(run, iteration, "train")]
        if train.get("reused") or train.get("carried_over"):
            assert value["final training loss"] is None
        else:
            assert value["final training loss"] == pytest.approx(train["final_loss"], abs=1e-4), key
        if phases[(run, iteration, "evaluate")].get("reused"):  # the rft run's BC: evaluated by t-eef
            assert (run, iteration) == ("t-rft", 0) and value["win rate %"] is None
        else:
            win, reward = scores[(run, iteration)]
            assert value["win rate %"] == pytest.approx(100 * win, abs=0.05), key
            assert value["mean reward"] == pytest.approx(reward, abs=5e-4), key
        walls = sum(s["wall_s"] for (r, i, _), s in phases.items() if (r, i) == (run, iteration))
        assert value["wall time s"] == pytest.approx(walls, abs=0.11), key
    assert tables["t-eef-it1"][KEY_METRICS.index("simulations")]["value"] > 0

    summary = artifacts[("t-eef-summary", "markdown")].data
    assert "\n| run | iteration | win rate % | mean reward |" in summary  # the results first
    by_name = {names: run_id for run_id, names in runs.items()}
    experiment = by_name[("experiment", "t")]
    page = artifacts[("experiment-t", "markdown")]
    assert page.flow_run_id == experiment  # on the page of the run a user triggers
    assert "data:image/png;base64," in page.data and "| run | iteration | win rate % | mean reward |" in page.data
    assert page.data.startswith("## Experiment t: EEF vs RFT\n\nexperiment t: t-eef (eef) win rate ")
    names = set(runs.values())
    assert {("iteration", "t-eef it0"), ("iteration", "t-eef it1"), ("iteration", "t-rft it1"),
            ("collect", "collect synthetic into eef.duckdb"), ("compare", "compare t-eef t-rft"),
            ("eef", "t-eef"), ("rft", "t-rft")} <= names


def _wait_for_phase(db: Path, run_id: str, iteration: int, phase: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if db.exists():
            try:
                with store.reader(db, wait_s=2) as con:
                    if con.execute("SELECT count(*) FROM run_phases WHERE run_id = $r AND iteration = $i AND phase = $p",
                                   {"r": run_id, "i": iteration, "p": phase}).fetchall()[0][0]:
                        return
            except store.StoreError:
                pass  # not created yet, or held by the writer: look again
        time.sleep(0.5)
    raise AssertionError(f"{run_id} never finished {phase} of iteration {iteration}")


def _phase_children(db: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"eef_tasks.pipeline .* --db {db}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _kill_flow_process(proc: subprocess.Popen, db: Path) -> None:
    """SIGKILL to `eef run` only: its phase child, workers, JVMs and temporary Prefect server must
    die with it."""
    try:
        procs = tree(proc.pid)  # eef run, the temporary Prefect server, the phase, its workers and JVMs
        assert any("uvicorn" in cmdline(p) for p in procs)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while (_phase_children(db) or survivors(procs)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _phase_children(db) == [], "a phase process outlived the killed flow"
        assert survivors(procs) == [], "processes outlived the killed flow"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers, e.g. the temporary Prefect server
        except ProcessLookupError:
            pass


def _stop_in_phase(args: list[str], env: dict, work: Path, sig: int, needle: str, where: str) -> None:
    """Start `eef run`, wait until a phase process matching `needle` plays its games, send `sig` as
    a terminal (SIGINT to the group) or `docker stop` (SIGTERM to `eef run`) would: the phase
    process, the flow (marked crashed on the server), then the temporary server stop; one line,
    130 / 143, no traceback, no survivor."""
    err = work / f"err-{sig}.log"
    proc = start(args, env, work / f"out-{sig}.log", err)
    try:
        wait_for(has_descendant(proc, needle), proc, 600, f"the phase process {needle!r}")
        wait_for(has_descendant(proc, "java"), proc, 120, "its games to start")
        time.sleep(1.0)
        assert any("uvicorn" in cmdline(p) for p in tree(proc.pid))
        status, took, after, alive = stop_and_check(proc, sig, err)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert status == 128 + sig, after[-3000:]
    assert took < 60, f"took {took:.1f} s to stop"
    assert after.strip().splitlines() == [LINE.format(where)]
    assert "Traceback" not in err.read_text()
    assert alive == [], "processes of the run survived it"
    states = _prefect_states(Path(env["PREFECT_HOME"]))
    assert "RUNNING" not in states["flow_run"] + states["task_run"], states
    assert "CRASHED" in states["flow_run"] and "CRASHED" in states["task_run"], states


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_killed_and_stopped_run_resumes_to_the_same_rows(full_run, tmp_path) -> None:
    """One store, stopped three ways in turn, each time resumed by the same command: SIGKILL to
    `eef run` once iteration 1's exploration is stored; Ctrl-C (SIGINT to the process group) in the
    simulations of that iteration; SIGTERM (to `eef run` only) in the baseline's exploration; the
    last rerun ends with exactly the rows of the uninterrupted run, nothing duplicated, and what
    was stored before each stop untouched. (One chain instead of three runs keeps CI short.)"""
    _, full_db, _, _, _ = full_run
    db = tmp_path / "eef.duckdb"
    args = _eef_run_args(db, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    # 1. SIGKILL after iteration 1's exploration is stored (simulation under way)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        _wait_for_phase(db, "t-eef", 1, "explore", proc, timeout=600)
        before = _rows(db)
        with store.reader(db) as con:
            explored = sorted(con.execute(
                "SELECT traj_id, reward, n_steps, meta::VARCHAR FROM trajectories WHERE purpose = 'explore'").fetchall())
    finally:
        _kill_flow_process(proc, db)
    assert ("t-eef", 1, "train") not in before["phases"]

    # 2. and 3. Ctrl-C, then SIGTERM, each in a later model phase, under a server of their own
    signalled = {**env, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    signalled.pop("PREFECT_API_URL", None)
    _stop_in_phase(args, signalled, tmp_path, signal.SIGINT, f"eef_tasks.pipeline simulate --db {db} --run t-eef",
                   "simulate of t-eef iteration 1")
    middle = _rows(db)
    assert set(before["trajectories"]) <= set(middle["trajectories"])
    assert ("t-eef", 1, "explore") in middle["phases"] and ("t-eef", 1, "simulate") not in middle["phases"]
    _stop_in_phase(args, signalled, tmp_path, signal.SIGTERM, f"eef_tasks.pipeline explore --db {db} --run t-rft",
                   "explore of t-rft iteration 1")
    late = _rows(db)
    assert set(middle["trajectories"]) <= set(late["trajectories"])
    assert ("t-eef", 1, "evaluate") in late["phases"] and ("t-rft", 1, "explore") not in late["phases"]

    # 4. the last rerun finishes like the uninterrupted run
    _rerun_ends_like_the_full_run(db, tmp_path, env, full_db, before, explored)


def _rerun_ends_like_the_full_run(db: Path, tmp_path: Path, env: dict, full_db: Path, before: dict,
                                  explored: list[tuple]) -> None:
    rerun = subprocess.run(_eef_run_args(db, tmp_path), capture_output=True, text=True, timeout=900, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "EEF vs RFT" in rerun.stdout and "t-eef" in rerun.stdout and "t-rft" in rerun.stdout
    after, full = _rows(db), _rows(full_db)
    for table in ("trajectories", "steps", "examples", "phases"):
        assert len(after[table]) == len(set(after[table])), f"duplicated {table} rows"
    assert after["trajectories"] == full["trajectories"]
    assert after["phases"] == full["phases"]
    assert set(before["trajectories"]) <= set(after["trajectories"])
    with store.reader(db) as con:
        # what was stored before the kill was kept, not redone
        assert sorted(con.execute(
            "SELECT traj_id, reward, n_steps, meta::VARCHAR FROM trajectories WHERE purpose = 'explore' "
            "AND traj_id IN (SELECT unnest($ids))", {"ids": [r[0] for r in explored]}).fetchall()) == explored
        # one example per important state, and the stored set is what selection gives now
        states = con.execute("""SELECT count(*), count(DISTINCT (run_id, iteration, method, state_kind,
                                       state_traj_id, state_step, task_id)) FROM training_examples""").fetchall()[0]
        assert states[0] == states[1]
    for run in RUNS:
        assert pipeline.next_iteration(db, run) is None


def _prefect_states(home: Path) -> dict[str, list[str]]:
    """Flow and task run states as the temporary server stored them (SQLite under PREFECT_HOME)."""
    import sqlite3

    with sqlite3.connect(home / "prefect.db") as con:
        return {table: sorted(r[0] for r in con.execute(f"SELECT state_type FROM {table}"))
                for table in ("flow_run", "task_run")}

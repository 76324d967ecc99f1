"""The `eef` console script, run as a user runs it: a real process on a real DuckDB file."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eef_tasks import store

DATA = Path(__file__).parent / "data"
EEF = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"


def eef(*args, check=True, timeout=120):
    proc = subprocess.run([EEF, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"eef {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def sql_json(db, query):
    return json.loads(eef("sql", "--db", db, "--format", "json", query).stdout)


def expert_and_simulation(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [
        {"traj_id": "e1", "task_id": "toy/1", "env": "toy", "split": "train", "instruction": "make tea",
         "source": "expert", "expert": "gold", "reward": 0.5,
         "steps": [{"action": "go kitchen", "observation": "kitchen"}, {"action": "boil", "observation": "hot"},
                   {"action": "drink", "observation": "done"}]},
        {"traj_id": "r1", "task_id": "toy/1", "run_id": "run", "source": "policy", "model_id": "m",
         "iteration": 1, "purpose": "explore", "reward": 1.0,
         "steps": [{"action": "go kitchen", "observation": "kitchen"}, {"action": "make tea", "observation": "tea"}]},
        {"traj_id": "s1", "task_id": "toy/1", "run_id": "run", "source": "policy", "model_id": "m",
         "iteration": 1, "purpose": "simulate", "branch_traj_id": "e1", "branch_step": 1, "reward": 0.0,
         "steps": [{"action": "go kitchen", "observation": "kitchen"}, {"action": "sleep", "observation": "zzz"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_new_user_flow(tmp_path):
    db = tmp_path / "store.duckdb"
    assert f"schema version {len(store.migration_files())}" in eef("init", "--db", db).stdout
    assert "already up to date" in eef("init", "--db", db).stdout
    assert "3 trajectories added" in eef("import", expert_and_simulation(tmp_path), "--db", db, "--sims", "2").stdout
    out = eef("import", DATA / "eto_sciworld_sample.json", "--db", db, "--env", "scienceworld",
              "--reward", "1", "--expert", "gpt-4").stdout
    assert "2 trajectories added" in out
    # M = 2: the failed expert e1 (T = 3) has checkpoint s1; s0 succeeded, s1 failed -> need-recover,
    # but nothing succeeded through s1 yet, so only the three initial states get examples
    out = eef("select", "--db", db, "--run", "run", "--iteration", "1", "--method", "eef", "--sims", "2").stdout
    assert "3 training examples (initial: 3)" in out
    rows = sql_json(db, "SELECT traj_id, state_kind, state_step FROM training_examples WHERE task_id = 'toy/1'")
    assert rows == [{"traj_id": "r1", "state_kind": "initial", "state_step": 0}]
    assert sql_json(db, "SELECT expert_traj_id, step FROM need_recover_states") == [
        {"expert_traj_id": "e1", "step": 1}]
    again = eef("select", "--db", db, "--run", "run", "--iteration", "1", "--method", "eef").stdout
    assert again == out
    assert sql_json(db, "SELECT count(*) AS n FROM training_examples") == [{"n": 3}]
    bc = eef("select", "--db", db, "--run", "run", "--iteration", "0", "--method", "bc").stdout
    assert "expert_success: 2" in bc  # the two imported ETO successes; e1 failed
    nat = eef("select", "--db", db, "--run", "nat-run", "--iteration", "0", "--method", "nat").stdout
    assert "3 training examples (expert_failure: 1, expert_success: 2)" in nat  # e1 kept, marked negative
    assert sql_json(db, "SELECT prompt_tag FROM training_examples WHERE method = 'nat' AND traj_id = 'e1'") == [
        {"prompt_tag": "negative"}]
    tagged = eef("example", "--db", db, "--traj", "e1", "--tag", "negative").stdout
    assert "NAT negative marker" in tagged and "make tea\n\nPlease generate a trajectory that fails" in tagged
    shown = eef("example", "--db", db, "--traj", "e1", "--from-step", "1").stdout
    assert "-- assistant step 0 (context)" in shown
    assert ">> assistant step 1 [SUPERVISED]" in shown and ">> Action: boil" in shown
    as_json = json.loads(eef("example", "--db", db, "--traj", "e1", "--from-step", "1", "--format", "json").stdout)
    assert [t["supervised"] for t in as_json if t["role"] == "assistant"] == [False, True, True]
    csv = eef("sql", "--db", db, "--format", "csv", "SELECT traj_id FROM trajectories ORDER BY 1").stdout
    assert csv.splitlines()[:2] == ["traj_id", "e1"]
    table = eef("sql", "--db", db, "SELECT split, n_trajectories FROM win_rates WHERE purpose = 'expert'").stdout
    assert "train" in table and "│" in table


def test_sql_is_read_only_and_reports_errors_without_traceback(tmp_path):
    db = tmp_path / "store.duckdb"
    eef("init", "--db", db)
    for statement in ("DELETE FROM tasks", "INSERT INTO runs VALUES ('x', 1, now(), NULL)",
                      "CREATE TABLE t (x INT)", "ATTACH 'other.duckdb'", "COPY tasks TO 'x.csv'",
                      "SELECT 1; DROP TABLE tasks"):
        proc = eef("sql", "--db", db, statement, check=False)
        assert proc.returncode == 1
        assert "read-only" in proc.stderr and "Traceback" not in proc.stderr
    proc = eef("sql", "--db", db, "SELECT * FROM read_csv('/etc/passwd')", check=False)
    assert proc.returncode == 1 and "disabled" in proc.stderr
    proc = eef("sql", "--db", db, "SELECT * FROM no_such_table", check=False)
    assert proc.returncode == 1 and "no_such_table" in proc.stderr and "Traceback" not in proc.stderr
    assert sql_json(db, "SELECT count(*) AS n FROM tasks") == [{"n": 0}]


def test_sql_waits_for_a_writer_then_names_it(tmp_path):
    db = tmp_path / "store.duckdb"
    eef("init", "--db", db)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = eef("sql", "--db", db, "--wait", "1", "SELECT 1", check=False)
        assert proc.returncode == 1
        assert f"locked by PID {holder.pid}" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert sql_json(db, "SELECT 1 AS one") == [{"one": 1}]


def test_bad_import_names_line_and_field_and_writes_nothing(tmp_path):
    db = tmp_path / "store.duckdb"
    eef("init", "--db", db)
    good = expert_and_simulation(tmp_path).read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good[0], good[1], good[2].replace('"reward": 0.0', '"reward": "lots"')]) + "\n")
    proc = eef("import", bad, "--db", db, check=False)
    assert proc.returncode == 1
    assert "line 3, field reward" in proc.stderr and "Traceback" not in proc.stderr
    assert sql_json(db, "SELECT count(*) AS n FROM trajectories") == [{"n": 0}]


def test_select_errors_are_clear(tmp_path):
    db = tmp_path / "store.duckdb"
    eef("init", "--db", db)
    proc = eef("select", "--db", db, "--run", "r", "--iteration", "2", "--method", "bc", check=False)
    assert proc.returncode == 1 and "iteration 0" in proc.stderr
    eef("select", "--db", db, "--run", "r", "--iteration", "1", "--method", "eef", "--sims", "3")
    proc = eef("select", "--db", db, "--run", "r", "--iteration", "1", "--method", "eef", "--sims", "4", check=False)
    assert proc.returncode == 1 and "M = 3" in proc.stderr


def test_export_import_round_trip_through_files(tmp_path):
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    eef("import", expert_and_simulation(tmp_path), "--db", a, "--sims", "2")
    eef("export", tmp_path / "out.jsonl", "--db", a)
    assert not (tmp_path / "out.jsonl.partial").exists()
    eef("import", tmp_path / "out.jsonl", "--db", b)
    query = "SELECT * EXCLUDE (created_at) FROM trajectories ORDER BY traj_id"
    assert sql_json(a, query) == sql_json(b, query)
    runs = "SELECT run_id, n_sims FROM runs ORDER BY run_id"  # the export carries each run's M
    assert sql_json(a, runs) == sql_json(b, runs)
    assert eef("export", "-", "--db", b, "--purpose", "simulate").stdout.count("\n") == 1


@pytest.mark.slow
def test_import_killed_midway_leaves_all_or_nothing(tmp_path):
    """kill -9 during a large import: the store holds none of the file or all of it, and a rerun
    completes it without duplicates."""
    n = 6000
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({
                "traj_id": f"e{i}", "task_id": f"toy/{i % 50}", "env": "toy", "split": "train",
                "instruction": f"task {i % 50}", "source": "expert", "expert": "gold",
                "reward": (i % 3) / 2, "steps": [{"action": f"a{k}", "observation": "o" * 200} for k in range(12)],
            }) + "\n")
    db = tmp_path / "store.duckdb"
    eef("init", "--db", db)
    proc = subprocess.Popen([EEF, "import", str(path), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wal = Path(f"{db}.wal")
    deadline = time.monotonic() + 120
    while proc.poll() is None and not wal.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the write-ahead log appears when the import starts writing
    killed_while_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_while_running, "the import finished before it could be killed: make the file larger"
    stored = sql_json(db, "SELECT count(*) AS n FROM trajectories")[0]["n"]
    assert stored in (0, n)
    steps = sql_json(db, "SELECT count(*) AS n FROM steps")[0]["n"]
    assert steps == stored * 12
    eef("import", path, "--db", db, timeout=300)
    assert sql_json(db, "SELECT count(*) AS n, count(DISTINCT traj_id) AS d FROM trajectories") == [{"n": n, "d": n}]
    assert sql_json(db, "SELECT count(*) AS n FROM steps") == [{"n": n * 12}]


def test_collect_then_see_failures_with_sql(tmp_path):
    db = tmp_path / "store.duckdb"
    args = ("collect", "--db", db, "--expert", "synthetic", "--tasks", "find-plant", "--split", "dev",
            "--limit", "2", "--seed", "0", "--seed", "1", "--workers", "2")
    out = eef(*args, timeout=300).stdout
    assert "4 trajectories requested, 0 already stored, 4 written" in out
    assert "4 already stored, 0 written" in eef(*args, timeout=300).stdout
    rows = sql_json(db, "SELECT expert, count(*) AS n, min(reward) >= 0 AS ok FROM trajectories GROUP BY expert")
    assert rows == [{"expert": "synthetic", "n": 4, "ok": True}]
    tasks = sql_json(db, "SELECT DISTINCT env, split FROM tasks")
    assert tasks == [{"env": "scienceworld", "split": "dev"}]


def test_collect_refuses_unknown_failure_modes(tmp_path):
    proc = eef("collect", "--db", tmp_path / "x.duckdb", "--expert", "synthetic", "--failure-modes",
               "wrong_turn,oops", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--failure-modes: unknown mode oops" in proc.stderr and "wrong_turn" in proc.stderr
    assert not (tmp_path / "x.duckdb").exists()  # refused before anything is written


def test_run_and_compare_refuse_bad_expert_and_cost_options(tmp_path):
    proc = eef("run", "--db", tmp_path / "x.duckdb", "--expert", "synthetic,oops", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--expert must be synthetic, synthetic-cheap, gold (several: comma-separated) or none" in proc.stderr
    proc = eef("run", "--db", tmp_path / "x.duckdb", "--extra", "eto,rft-x0", check=False)
    assert proc.returncode == 1 and "unknown extra run 'rft-x0'" in proc.stderr and "Traceback" not in proc.stderr
    proc = eef("compare", "--db", tmp_path / "x.duckdb", "--cost-plot", tmp_path / "c.png", check=False)
    assert proc.returncode == 1 and "--cost-plot goes with --cost" in proc.stderr
    assert not (tmp_path / "x.duckdb").exists()  # refused before anything is written

"""The store: migrations, view refresh, transactions and lock handling, on real DuckDB files."""

import subprocess
import sys
import time

import duckdb
import pytest

from eef_tasks import store


def table_names(con):
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def test_migrate_creates_contract_tables_and_is_idempotent(tmp_path):
    con = store.connect(tmp_path / "s.duckdb")
    applied = store.migrate(con)
    assert "0001_core_tables.sql" in applied
    assert {"tasks", "trajectories", "steps", "training_examples", "runs"} <= table_names(con)
    assert {"expert_checkpoints", "need_recover_states", "positive_pool", "state_candidates",
            "win_rates", "example_counts", "expert_summary", "budget"} <= table_names(con)
    assert store.migrate(con) == []
    assert store.schema_version(con) == len(store.migration_files())
    assert {"run_phases", "store_info"} <= table_names(con)


def test_contract_columns_and_constraints(tmp_path):
    con = store.connect(tmp_path / "s.duckdb")
    store.migrate(con)
    columns = {
        (table, column): nullable
        for table, column, nullable in con.execute(
            "SELECT table_name, column_name, is_nullable FROM information_schema.columns"
        ).fetchall()
    }
    for column in ("task_id", "env", "split", "instruction"):
        assert columns[("tasks", column)] == "NO"
    for column in ("traj_id", "task_id", "source", "iteration", "purpose", "branch_step",
                   "reward", "success", "n_steps"):
        assert columns[("trajectories", column)] == "NO"
    for column in ("run_id", "expert", "model_id", "branch_traj_id"):
        assert columns[("trajectories", column)] == "YES"
    con.execute("INSERT INTO tasks VALUES ('t', 'toy', 'train', 'go', NULL, NULL)")
    with pytest.raises(duckdb.ConstraintException):  # success must equal reward = 1
        con.execute("""INSERT INTO trajectories (traj_id, task_id, source, iteration, purpose,
                       branch_step, reward, success, n_steps)
                       VALUES ('x', 't', 'expert', 0, 'expert', 0, 0.5, true, 1)""")
    with pytest.raises(duckdb.ConstraintException):  # a simulation needs its expert prefix
        con.execute("""INSERT INTO trajectories (traj_id, task_id, run_id, source, iteration,
                       purpose, branch_step, reward, success, n_steps)
                       VALUES ('y', 't', 'r', 'policy', 1, 'simulate', 0, 1, true, 1)""")
    with pytest.raises(duckdb.ConstraintException):  # unknown task
        con.execute("""INSERT INTO trajectories (traj_id, task_id, source, iteration, purpose,
                       branch_step, reward, success, n_steps)
                       VALUES ('z', 'nope', 'expert', 0, 'expert', 0, 1, true, 0)""")


def test_edited_migration_is_refused(tmp_path, monkeypatch):
    con = store.connect(tmp_path / "s.duckdb")
    store.migrate(con)
    con.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(store.StoreError, match="forward-only"):
        store.migrate(con)


def test_changed_view_is_reapplied(tmp_path):
    con = store.connect(tmp_path / "s.duckdb")
    store.migrate(con)
    con.execute("UPDATE schema_views SET checksum = 'old' WHERE name = '50_win_rates'")
    con.execute("DROP VIEW win_rates")
    assert store.migrate(con) == ["views/50_win_rates.sql"]
    assert "win_rates" in table_names(con)


def test_transaction_rolls_back_everything_on_error(tmp_path):
    con = store.connect(tmp_path / "s.duckdb")
    store.migrate(con)
    with pytest.raises(duckdb.ConstraintException):
        with store.transaction(con):
            con.execute("INSERT INTO tasks VALUES ('a', 'toy', 'train', 'go', NULL, NULL)")
            con.execute("INSERT INTO tasks VALUES ('a', 'toy', 'train', 'again', NULL, NULL)")
    assert con.execute("SELECT count(*) FROM tasks").fetchall() == [(0,)]


def test_reader_refuses_missing_or_uninitialised_store(tmp_path):
    with pytest.raises(store.StoreError, match="eef init"):
        with store.reader(tmp_path / "missing.duckdb"):
            pass
    duckdb.connect(str(tmp_path / "plain.duckdb")).close()
    with pytest.raises(store.StoreError, match="not an eef store"):
        with store.reader(tmp_path / "plain.duckdb"):
            pass


def hold_write_lock(path, seconds):
    """A real second process holding the store's write lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep({seconds})"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_wait_gives_up_naming_the_holder(tmp_path):
    path = tmp_path / "s.duckdb"
    with store.writer(path):
        pass
    holder = hold_write_lock(path, 30)
    try:
        with pytest.raises(store.StoreLocked, match=f"PID {holder.pid}"):
            store.connect(path, read_only=True, wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()


def test_reader_waits_for_a_short_writer(tmp_path):
    path = tmp_path / "s.duckdb"
    with store.writer(path):
        pass
    holder = hold_write_lock(path, 1.5)
    try:
        started = time.monotonic()
        with store.reader(path, wait_s=30) as con:
            assert con.execute("SELECT count(*) FROM tasks").fetchall() == [(0,)]
        assert time.monotonic() - started > 0.2  # it really had to wait for the holder
    finally:
        holder.kill()
        holder.wait()


def test_dpo_phase_migration_keeps_run_phases_and_takes_dpo(tmp_path):
    """0006_dpo_phase rebuilds run_phases (DuckDB cannot change a CHECK): its rows survive, 'dpo' is a phase."""
    with store.writer(tmp_path / "eef.duckdb") as con:
        con.execute("INSERT INTO run_phases (run_id, iteration, phase, summary) VALUES ('r', 1, 'train', '{\"a\": 1}')")
        con.execute(store.read_sql("migrations/0006_dpo_phase"))  # again, on a store that has rows
        con.execute("INSERT INTO run_phases (run_id, iteration, phase) VALUES ('r', 1, 'dpo')")
        assert con.execute("SELECT phase, summary FROM run_phases ORDER BY phase").fetchall() == [
            ("dpo", None), ("train", '{"a": 1}')]
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO run_phases (run_id, iteration, phase) VALUES ('r', 1, 'dance')")

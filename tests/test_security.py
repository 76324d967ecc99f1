"""The promises of docs/security.md, tested as an attacker and a careless user would try them:
the real `eef` console script on real DuckDB files, the real ScienceWorld game, and a hypothesis
fuzz test of the importer over malformed records (never a traceback, never a partial write)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eef_tasks import store, trajectory_io
from eef_tasks.output import json_text, terminal_text
from eef_tasks.records import TrajectoryRecord, write_trajectories

EEF = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"
# FILE, line N, field F: problem -- F is a path like steps[0].reward, with odd names in JSON quotes
ERROR_LINE = re.compile(r'^(?P<file>.+), line (?P<line>\d+), field (?P<field>(?:[^\s"]|"(?:[^"\\]|\\.)*")+): '
                        r"(?P<problem>\S.*)$")


def eef(*args, check=True, timeout=120, **kw):
    proc = subprocess.run([EEF, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"eef {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc) -> str:
    """The single error line of a failed command (no traceback)."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def expert(**overrides):
    record = {"traj_id": "e1", "task_id": "toy/1", "env": "toy", "split": "train", "instruction": "make tea",
              "source": "expert", "expert": "gold", "reward": 0.5,
              "steps": [{"action": "go kitchen", "observation": "kitchen"},
                        {"action": "boil", "observation": "hot"}, {"action": "drink", "observation": "done"}]}
    record.update(overrides)
    return record


def simulation(**overrides):
    record = {"traj_id": "s1", "task_id": "toy/1", "run_id": "run", "source": "policy", "model_id": "m",
              "iteration": 1, "purpose": "simulate", "branch_traj_id": "e1", "branch_step": 1, "reward": 0.0,
              "steps": [{"action": "go kitchen", "observation": "kitchen"}, {"action": "sleep", "observation": "zzz"}]}
    record.update(overrides)
    return record


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def counts(con) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t in ("tasks", "trajectories", "steps", "runs")}


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "store.duckdb"
    with store.writer(path) as con:
        trajectory_io.import_records(con, [TrajectoryRecord.model_validate(expert())])
    return path


# --- 1. export never destroys the store ----------------------------------------------------------


def test_export_never_writes_over_its_own_store(db, tmp_path):
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.duckdb"
    link.symlink_to(db)
    hard = tmp_path / "hard.duckdb"
    os.link(db, hard)
    for target in (db, tmp_path / "sub" / ".." / db.name, link, hard):  # by any path or link, even --force
        message = one_line_error(eef("export", target, "--db", db, "--force", check=False))
        assert "is the store" in message
    assert one_line_error(eef("export", db, "--db", db, check=False))
    # the store is intact: every table still there
    with store.reader(db) as con:
        assert counts(con) == {"tasks": 1, "trajectories": 1, "steps": 3, "runs": 0}
        assert store.schema_version(con) == len(store.migration_files())


def test_export_refuses_existing_files_folders_and_missing_folders_and_leaves_nothing(db, tmp_path):
    existing = tmp_path / "old.jsonl"
    existing.write_text("keep me\n")
    assert "--force" in one_line_error(eef("export", existing, "--db", db, check=False))
    assert existing.read_text() == "keep me\n"
    eef("export", existing, "--db", db, "--force")
    assert json.loads(existing.read_text().splitlines()[0])["traj_id"] == "e1"
    folder = tmp_path / "out"
    folder.mkdir()
    assert "is a folder" in one_line_error(eef("export", folder, "--db", db, check=False))
    missing = tmp_path / "nope" / "x.jsonl"
    assert "does not exist" in one_line_error(eef("export", missing, "--db", db, check=False))
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    assert leftovers == []


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON output")
    return json.loads(text, parse_constant=refuse)


def test_export_round_trips_task_limits_and_meta_and_writes_strict_json(tmp_path):
    source = tmp_path / "a.duckdb"
    with store.writer(source) as con:
        trajectory_io.import_records(con, [TrajectoryRecord.model_validate(
            expert(task_max_steps=30, task_meta={"variation": 3, "name": "boil"}, meta={"tokens": 5}))])
        # a store written before the importer refused them may hold non-finite numbers in JSON
        con.execute("""INSERT INTO trajectories (traj_id, task_id, source, expert, iteration, purpose,
                       reward, success, n_steps, meta) VALUES ('old', 'toy/1', 'expert', 'x', 0, 'expert',
                       0.0, false, 0, '{"latency": NaN, "big": 1e999}')""")
    out = tmp_path / "out.jsonl"
    eef("export", out, "--db", source)
    rows = [strict_json(line) for line in out.read_text().splitlines()]
    assert rows[1]["meta"] == {"latency": None, "big": None}
    target = tmp_path / "b.duckdb"
    eef("import", out, "--db", target)
    with store.reader(target) as con:
        (max_steps, meta), = con.execute("SELECT max_steps, meta FROM tasks").fetchall()
        assert (max_steps, json.loads(meta)) == (30, {"variation": 3, "name": "boil"})
    as_json = eef("sql", "--db", source, "--format", "json",
                  "SELECT 'nan'::DOUBLE AS a, '-inf'::DOUBLE AS b, 1.5::DOUBLE AS c").stdout
    assert strict_json(as_json) == [{"a": None, "b": None, "c": 1.5}]


# --- 4. eef sql is read-only, bounded and timed ---------------------------------------------------


@pytest.mark.parametrize("statement", [
    "EXPLAIN ANALYZE COPY (SELECT 42) TO '{out}'",
    "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE CREATE TEMP MACRO m(x) AS x + 1",
    "explain /* hidden */ analyse -- comment\n CREATE TEMP TABLE t AS SELECT 1",
    "EXPLAIN (FORMAT json) COPY (SELECT 42) TO '{out}'",
    "EXPLAIN ANALYZE INSERT INTO runs VALUES ('x', 1, now(), NULL)",
])
def test_sql_looks_inside_explain(db, tmp_path, statement):
    out = tmp_path / "leak.csv"
    message = one_line_error(eef("sql", "--db", db, statement.format(out=out), check=False))
    assert "read-only" in message
    assert not out.exists()


def test_sql_still_explains_reads(db):
    assert "analyzed_plan" in eef("sql", "--db", db, "--format", "csv", "EXPLAIN ANALYZE SELECT * FROM tasks").stdout
    assert "physical_plan" in eef("sql", "--db", db, "--format", "csv", "EXPLAIN SELECT 1").stdout
    # a statement DuckDB cannot parse: its (multi-line) error as one line
    assert "syntax error" in one_line_error(eef("sql", "--db", db, "EXPLAIN EXPLAIN SELECT 1", check=False))


def test_sql_streams_and_bounds_huge_results_in_every_format(db):
    huge = "SELECT * FROM range(1000000000000) AS r(n)"
    started = time.monotonic()
    csv = eef("sql", "--db", db, "--format", "csv", "--max-rows", "5", huge)
    assert csv.stdout.splitlines() == ["n", "0", "1", "2", "3", "4"]
    assert "first 5 rows" in csv.stderr
    assert json.loads(eef("sql", "--db", db, "--format", "json", "--max-rows", "3", huge).stdout) == [
        {"n": 0}, {"n": 1}, {"n": 2}]
    table = eef("sql", "--db", db, "--max-rows", "4", huge).stdout
    assert "│     3 │" in table and "│     4 │" not in table
    # 0 means no rows, not "no limit"
    assert eef("sql", "--db", db, "--format", "csv", "--max-rows", "0", huge).stdout == "n\n"
    assert json.loads(eef("sql", "--db", db, "--format", "json", "--max-rows", "0", huge).stdout) == []
    assert "│ 0 " not in eef("sql", "--db", db, "--max-rows", "0", huge).stdout
    assert time.monotonic() - started < 60  # materialising 10^12 rows would never finish


def test_sql_queries_have_a_time_limit(db):
    started = time.monotonic()
    message = one_line_error(eef("sql", "--db", db, "--timeout", "1",
                                 "SELECT count(*) FROM range(100000000000000)", check=False))
    assert "--timeout 1 s" in message
    assert time.monotonic() - started < 30


def test_output_piped_to_head_exits_cleanly(db):
    for fmt in ("table", "csv"):
        proc = subprocess.Popen([EEF, "sql", "--db", str(db), "--format", fmt, "--max-rows", "200000",
                                 "SELECT * FROM range(200000)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, stderr
        assert stderr == ""


# --- 5. the importer lets no wrong data in ---------------------------------------------------------


def import_error(tmp_path, rows, db=None, **read) -> trajectory_io.ImportFileError:
    """Import `rows` (dicts, text lines, or bytes) into a store holding `expert()`; the error raised,
    after checking that nothing was written."""
    path = tmp_path / "in.jsonl"
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    else:
        jsonl(path, rows)
    db = db or tmp_path / "s.duckdb"
    with store.writer(db) as con:
        if counts(con)["trajectories"] == 0:
            trajectory_io.import_records(con, [TrajectoryRecord.model_validate(expert())])
        before = counts(con)
        with pytest.raises(trajectory_io.ImportFileError) as raised:
            if read:
                records = trajectory_io.read_conversations(path, **read)
            else:
                records = trajectory_io.read_eef_jsonl(path)
            trajectory_io.import_records(con, records)
        assert counts(con) == before
    message = str(raised.value)
    assert "\n" not in message and ERROR_LINE.match(message), message
    return raised.value


@pytest.mark.parametrize(("rows", "field", "problem"), [
    ([simulation(branch_traj_id="nope")], "branch_traj_id", "is not in the store"),
    ([expert(traj_id="e2", task_id="toy/2"), simulation(task_id="toy/1", branch_traj_id="e2")],
     "branch_traj_id", "belongs to task toy/2"),
    ([expert(traj_id="win", reward=1.0), simulation(branch_traj_id="win")], "branch_traj_id", "successful"),
    ([simulation(traj_id="r0", purpose="explore", branch_traj_id=None, branch_step=0), simulation(branch_traj_id="r0")],
     "branch_traj_id", "not an expert trajectory"),
    ([simulation(branch_step=4, steps=[{"action": "a", "observation": "o"}] * 5)],
     "branch_traj_id", "has only 3 actions"),
    ([simulation(run_id=None)], "(record)", "run_id is required"),
    ([{k: v for k, v in simulation().items() if k != "run_id"}], "(record)", "run_id is required"),
    ([simulation(run_id="ghost")], "run_id", "run 'ghost' is not registered"),
    ([simulation(run_n_sims=2), simulation(traj_id="s2", run_n_sims=3)], "run_n_sims", "M = 2"),
    ([expert(traj_id="e3", run_n_sims=2)], "(record)", "expert trajectories have none"),
    ([expert(traj_id="e3", reward=True)], "reward", "valid number"),
    ([expert(traj_id="e3", reward="1")], "reward", "valid number"),
    ([expert(traj_id="e3", iteration=2**40)], "iteration", "less than or equal"),
    ([expert(traj_id="e3", task_max_steps=2**40)], "task_max_steps", "less than or equal"),
    ([expert(traj_id="e3", meta={"a": 2**70})], "meta.a", "64 bits"),
    ([expert(traj_id="e3", meta={"s": "\ud800"})], "meta.s", "surrogate"),
    ([expert(traj_id="e3", steps=[{"action": "a\udfff", "observation": "o"}])], "steps[0].action", "surrogate"),
])
def test_records_breaking_the_selection_s_rules_are_refused(tmp_path, rows, field, problem):
    error = import_error(tmp_path, rows)
    assert error.field == field and problem in error.problem, str(error)
    assert error.line == len(rows)


@pytest.mark.parametrize(("line", "problem"), [
    ('{"traj_id": "e3", "task_id": "toy/1", "source": "expert", "reward": 0.5, '
     '"steps": [{"action": "a", "observation": "o", "reward": NaN}]}', "NaN is not a JSON number"),
    ('{"traj_id": "e3", "task_id": "toy/1", "source": "expert", "reward": 0.5, '
     '"steps": [{"action": "a", "observation": "o", "reward": -Infinity}]}', "-Infinity is not a JSON number"),
    ('{"traj_id": "e3", "task_id": "toy/1", "source": "expert", "reward": 0.5, "meta": {"x": 1e999}, '
     '"steps": []}', "finite"),
    ('{"traj_id": "e3", "task_id": "toy/1", "source": "expert", "reward": 0.5, "meta": '
     + '{"a": ' * 50_000 + "1" + "}" * 50_000 + ', "steps": []}', "nested deeper"),
    ('{"traj_id": "e3", "task_id": "toy/1", "source": "expert", "reward": 0.5, "meta": '
     + '{"a": ' * 100 + "1" + "}" * 100 + ', "steps": []}', "nested deeper"),
])
def test_numbers_and_nesting_the_store_cannot_hold_are_refused(tmp_path, line, problem):
    error = import_error(tmp_path, [expert(traj_id="ok"), line])
    assert error.line == 2 and problem in error.problem, str(error)


def test_invalid_utf8_names_its_line(tmp_path):
    good = json.dumps(expert(traj_id="ok")).encode()
    error = import_error(tmp_path, good + b"\n" + good.replace(b"make tea", b"make \xff tea") + b"\n")
    assert error.line == 2 and "not valid UTF-8" in error.problem
    array = b"[\n" + good + b",\n" + good.replace(b"make tea", b"make \xc3 tea") + b"\n]"
    error = import_error(tmp_path, array)
    assert error.line == 3 and "not valid UTF-8" in error.problem


def test_conversation_rewards_must_be_numbers(tmp_path):
    record = {"id": 1, "reward": "high", "conversations": [
        {"from": "human", "value": "make tea"}, {"from": "gpt", "value": "Action: boil"}]}
    error = import_error(tmp_path, [record], env="toy")
    assert (error.line, error.field) == (1, "reward")
    error = import_error(tmp_path, [{**record, "reward": True}], env="toy")
    assert error.field == "reward"


def test_duplicates_and_task_clashes_name_the_file_and_line(tmp_path):
    error = import_error(tmp_path, [expert(traj_id="a"), expert(traj_id="b"), expert(traj_id="a", reward=0.25)])
    assert (error.line, error.field) == (3, "traj_id") and "line 1" in error.problem
    error = import_error(tmp_path, [expert(traj_id="c", task_id="toy/5"), expert(traj_id="d", task_id="toy/5", split="dev")])
    assert (error.line, error.field) == (2, "task_id") and "line 1" in error.problem
    # against the store: e1 is stored with another reward; toy/1 with split train
    error = import_error(tmp_path, [expert(traj_id="x"), expert(reward=0.75)])
    assert (error.line, error.field) == (2, "traj_id") and "already stored" in error.problem
    error = import_error(tmp_path, [expert(traj_id="y", split="test")])
    assert (error.line, error.field) == (1, "task_id") and "already stored" in error.problem
    proc = eef("import", jsonl(tmp_path / "dup.jsonl", [expert(traj_id="a"), expert(traj_id="a", reward=0.1)]),
               "--db", tmp_path / "cli.duckdb", check=False)
    assert "dup.jsonl, line 2, field traj_id" in one_line_error(proc)


def test_cross_task_simulations_cannot_make_need_recover_states(tmp_path):
    """The issue's case: two simulations of another task's expert trajectory produced a
    need_recover_states row for one task from another task's data."""
    rows = [expert(traj_id="e2", task_id="toy/2", instruction="make coffee"),
            simulation(traj_id="s-ok", task_id="toy/1", branch_traj_id="e1", branch_step=1, reward=1.0),
            simulation(traj_id="s-x", task_id="toy/1", branch_traj_id="e2", branch_step=2)]
    error = import_error(tmp_path, rows)
    assert error.line == 3
    with store.reader(tmp_path / "s.duckdb") as con:
        assert con.execute("SELECT count(*) FROM need_recover_states").fetchall() == [(0,)]


def test_policy_rows_arrive_only_with_their_run_and_its_m(tmp_path):
    """Selection places a run's checkpoints by its M: an import never leaves policy rows of a run
    the store does not know, and never changes a known run's M."""
    path = jsonl(tmp_path / "sim.jsonl", [expert(), simulation()])
    db = tmp_path / "cli.duckdb"
    proc = eef("import", path, "--db", db, check=False)
    assert "sim.jsonl, line 2, field run_id: run 'run' is not registered" in one_line_error(proc)
    assert "--sims M" in proc.stderr
    with store.reader(db) as con:
        assert counts(con) == {"tasks": 0, "trajectories": 0, "steps": 0, "runs": 0}
    assert "2 trajectories added" in eef("import", path, "--db", db, "--sims", "2").stdout
    with store.reader(db) as con:
        assert con.execute("SELECT run_id, n_sims FROM runs").fetchall() == [("run", 2)]
    # a stored run keeps its M: a record saying otherwise is refused, --sims does not apply to it
    again = jsonl(tmp_path / "again.jsonl", [simulation(traj_id="s9", run_n_sims=4)])
    proc = eef("import", again, "--db", db, "--sims", "4", check=False)
    assert "again.jsonl, line 1, field run_n_sims: run 'run' is stored with M = 2" in one_line_error(proc)
    assert "1 trajectories added" in eef("import", jsonl(tmp_path / "ok.jsonl", [simulation(traj_id="s9")]),
                                         "--db", db).stdout


def test_the_writer_enforces_branch_rules_for_every_producer(tmp_path):
    with store.writer(tmp_path / "w.duckdb") as con:
        write_trajectories(con, [TrajectoryRecord.model_validate(expert(reward=1.0))])
        with pytest.raises(store.StoreError, match="successful expert trajectory"):
            write_trajectories(con, [TrajectoryRecord.model_validate(simulation())])
        assert counts(con)["trajectories"] == 1


def _version_2_store(path: Path, rows_sql: list[str]) -> None:
    con = duckdb.connect(str(path))
    con.execute("""CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
                   checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp);
                   CREATE TABLE schema_views (name VARCHAR PRIMARY KEY, checksum VARCHAR NOT NULL,
                   applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""")
    for version, name, file in store.migration_files()[:2]:
        text = file.read_text()
        con.execute(text)
        con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                    [version, name, hashlib.sha256(text.encode()).hexdigest()[:16]])
    con.execute("INSERT INTO tasks VALUES ('t', 'toy', 'train', 'x', NULL, NULL)")
    for sql in rows_sql:
        con.execute(sql)
    con.close()


def test_migration_0003_upgrades_good_stores_and_names_rows_that_break_its_rules(tmp_path):
    good = tmp_path / "good.duckdb"
    _version_2_store(good, [
        "INSERT INTO trajectories (traj_id, task_id, source, expert, iteration, purpose, reward, success, n_steps)"
        " VALUES ('e', 't', 'expert', 'gold', 0, 'expert', 0.5, false, 1)",
        "INSERT INTO steps VALUES ('e', 0, NULL, 'a', 'o', 0.25)"])
    assert "0003_import_rules.sql" in eef("init", "--db", good).stdout
    with store.reader(good) as con:
        assert counts(con) == {"tasks": 1, "trajectories": 1, "steps": 1, "runs": 0}
        assert con.execute("SELECT reward FROM steps").fetchall() == [(0.25,)]
    bad = tmp_path / "bad.duckdb"
    _version_2_store(bad, [
        "INSERT INTO trajectories (traj_id, task_id, run_id, source, model_id, iteration, purpose, reward, success,"
        " n_steps) VALUES ('orphan', 't', NULL, 'policy', 'm', 1, 'explore', 0, false, 1)",
        "INSERT INTO steps VALUES ('orphan', 0, NULL, 'a', 'o', 'nan')"])
    message = one_line_error(eef("init", "--db", bad, check=False))
    assert "0003_import_rules" in message and "orphan" in message and "nothing was changed" in message
    con = duckdb.connect(str(bad), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_migrations").fetchall() == [(2,)]
    assert con.execute("SELECT count(*) FROM trajectories").fetchall() == [(1,)]
    con.close()


# --- the fuzz test -----------------------------------------------------------------------------------

FIELDS = sorted(set(expert()) | set(simulation()) | {"task_max_steps", "task_meta", "meta", "success", "n_steps"})
ODD_TEXT = st.text(alphabet=st.sampled_from(["a", "é", "\x1b", "\ud800", "\udfff", "\n", "\x00", "\u202e", "1"]),
                   max_size=6)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | ODD_TEXT)
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(ODD_TEXT | st.sampled_from(FIELDS), children, max_size=3), max_leaves=8)


@st.composite
def malformed_files(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        record = draw(st.sampled_from([expert, simulation]))(traj_id=draw(st.sampled_from(["e1", "x", "s1", "y"])))
        for _ in range(draw(st.integers(0, 3))):
            field = draw(st.sampled_from(FIELDS + ["steps.0", "steps.0.reward", "steps.0.action", "extra"]))
            steps = record.get("steps")
            if field.startswith("steps."):
                if not (isinstance(steps, list) and steps and isinstance(steps[0], dict)):
                    continue
                step_field = field.split(".")[2] if field.count(".") == 2 else None
                if step_field:
                    steps[0][step_field] = draw(VALUES)
                else:
                    steps[0] = draw(VALUES)
            elif draw(st.booleans()):
                record.pop(field, None)
            else:
                record[field] = draw(VALUES)
        line = json.dumps(record).encode("utf-8", "surrogatepass")
        if draw(st.booleans()):  # corrupt a few bytes
            at = draw(st.integers(0, len(line)))
            line = line[:at] + draw(st.binary(min_size=1, max_size=3)) + line[at:]
        lines.append(line)
    return b"\n".join(lines) + b"\n"


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    con = store.connect(path)
    store.migrate(con)
    trajectory_io.import_records(con, [TrajectoryRecord.model_validate(expert())])
    yield con, path.parent
    con.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=malformed_files())
def test_fuzz_the_importer_never_tracebacks_and_never_writes_part_of_a_file(fuzz_store, data):
    con, folder = fuzz_store
    path = folder / "fuzz.jsonl"
    path.write_bytes(data)
    before = con.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM trajectories), "
                         "(SELECT count(*) FROM steps)").fetchall()
    try:
        records = trajectory_io.read_eef_jsonl(path)
        result = trajectory_io.import_records(con, records)
    except trajectory_io.ImportFileError as exc:
        event(f"refused: {exc.field.split('[')[0].split('.')[0]}")
        assert ERROR_LINE.match(str(exc)) and "\n" not in str(exc), str(exc)
        after = con.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM trajectories), "
                            "(SELECT count(*) FROM steps)").fetchall()
        assert after == before
    else:
        event("accepted")
        # whatever was accepted is stored whole: every new trajectory with all its steps
        assert result.trajectories_added + result.trajectories_skipped == len({r.traj_id for r in records})
        assert con.execute("SELECT count(*) FROM trajectories AS t WHERE n_steps <> "
                           "(SELECT count(*) FROM steps AS s WHERE s.traj_id = t.traj_id)").fetchall() == [(0,)]


# --- 6. the smaller ones ------------------------------------------------------------------------------


def test_example_shows_model_output_without_terminal_control_sequences(tmp_path):
    db = tmp_path / "s.duckdb"
    hostile = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\rover\u202eevil"
    path = jsonl(tmp_path / "in.jsonl", [expert(steps=[
        {"thought": hostile, "action": "look", "observation": hostile}])])
    eef("import", path, "--db", db)
    shown = eef("example", "--db", db, "--traj", "e1").stdout
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown and "\u202e" not in shown
    assert "\\x1b[2J" in shown and "\\u202e" in shown
    assert terminal_text("tab\tand\nnewline stay") == "tab\tand\nnewline stay"


def test_auto_format_reads_the_first_record_not_its_first_bytes(tmp_path):
    record = {"id": 7, "notes": "x" * 10_000, "reward": 1.0, "conversations": [
        {"from": "human", "value": "make tea"}, {"from": "gpt", "value": "Thought: go\nAction: boil"},
        {"from": "human", "value": "Observation: hot"}]}
    path = jsonl(tmp_path / "late.jsonl", [record])
    assert trajectory_io.detect_format(path) == "conversations"
    assert "1 trajectories added" in eef("import", path, "--db", tmp_path / "s.duckdb", "--env", "toy").stdout


def test_the_lock_message_does_not_call_a_reader_a_writer(db):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}, read_only=True); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(store.StoreLocked) as locked:
            store.connect(db, wait_s=0.5)
        message = str(locked.value)
        assert f"PID {holder.pid}" in message
        assert "allows one writing process" not in message and "reading" in message
    finally:
        holder.kill()
        holder.wait()


def test_json_text_is_strict():
    assert json_text({"a": float("nan"), "b": [float("inf"), 1.0]}) == '{"a": null, "b": [null, 1.0]}'


from game import needs_java  # noqa: E402


@needs_java
def test_the_game_s_meta_commands_are_invalid_actions_and_never_reach_the_game():
    from eef_tasks.envs.scienceworld import ScienceWorld

    with ScienceWorld() as env:
        env.reset("scienceworld/find-plant/3")
        moved = env.step("teleport to greenhouse")
        assert moved.info["score"] > 0 and not moved.info["invalid"]
        for command in ("reset task", "Reset  Task", " task ", "TASK", "help"):
            result = env.step(command)
            assert result.info["invalid"], (command, result.observation)
            assert result.observation == "No known action matches that input."
            assert result.info["score"] == moved.info["score"]
        # the goal progress survived: the game never saw `reset task`
        looked = env.step("look around")
        assert "greenhouse" in looked.observation and looked.info["score"] == moved.info["score"]
        # real actions that merely contain the words still reach the game
        assert not env.step("look at task").observation.startswith("You reset")

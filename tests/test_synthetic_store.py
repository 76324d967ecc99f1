"""The synthetic store generator: shape, constraints, determinism, and SQL == Python selection."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from eef_tasks import selection, store
from eef_tasks.testing import selection_reference
from eef_tasks.store import StoreError
from eef_tasks.testing.synthetic_store import generate_store

N_TASKS = 120
N_RUNS = 2
N_ITERATIONS = 3
N_SIMS = 5


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("synthetic") / "store.duckdb"
    counts = generate_store(path, n_tasks=N_TASKS, n_runs=N_RUNS, n_iterations=N_ITERATIONS,
                            n_sims=N_SIMS, seed=7)
    return path, counts


@pytest.fixture
def con(generated: tuple[Path, dict]):
    path, _ = generated
    connection = store.connect(path, read_only=True)
    try:
        yield connection
    finally:
        connection.close()


def scalar(con: duckdb.DuckDBPyConnection, sql: str):
    row = store.first_row(con, sql)
    assert row is not None
    return row[0]


def test_counts_match_the_store(generated: tuple[Path, dict], con) -> None:
    _, counts = generated
    assert counts["tasks"] == N_TASKS == scalar(con, "SELECT count(*) FROM tasks")
    assert counts["train_tasks"] + counts["dev_tasks"] + counts["test_tasks"] == N_TASKS
    assert counts["train_tasks"] > counts["dev_tasks"] > 0 and counts["test_tasks"] > 0
    assert counts["trajectories"] == scalar(con, "SELECT count(*) FROM trajectories")
    assert counts["trajectories"] == (
        counts["expert"] + counts["explore"] + counts["simulate"] + counts["eval"]
    )
    assert counts["steps"] == scalar(con, "SELECT count(*) FROM steps")
    assert counts["steps"] == scalar(con, "SELECT sum(n_steps) FROM trajectories")
    assert counts["runs"] == N_RUNS == scalar(con, "SELECT count(*) FROM runs")
    assert scalar(con, "SELECT count(*) FROM runs WHERE n_sims <> 5") == 0
    # explore: every training task once per run and iteration; eval: held-out tasks, iterations 0..I
    assert counts["explore"] == N_RUNS * N_ITERATIONS * counts["train_tasks"]
    assert counts["eval"] == N_RUNS * (N_ITERATIONS + 1) * (counts["dev_tasks"] + counts["test_tasks"])


def test_everything_is_labelled_synthetic(con) -> None:
    assert scalar(con, "SELECT count(*) FROM tasks WHERE env <> 'synthetic' "
                       "OR task_id NOT SIMILAR TO 'synthetic/[a-z-]+/[0-9]+'") == 0
    assert scalar(con, "SELECT count(*) FROM tasks WHERE NOT meta.synthetic::BOOLEAN") == 0
    assert scalar(con, "SELECT count(*) FROM trajectories WHERE source = 'expert' "
                       "AND expert IS DISTINCT FROM 'synthetic'") == 0
    assert scalar(con, "SELECT count(*) FROM trajectories WHERE source = 'policy' "
                       "AND (model_id NOT LIKE 'synthetic-policy/%' "
                       "OR run_id NOT LIKE 'synthetic-run-%')") == 0


def test_trajectory_rules(con) -> None:
    bad = {
        "success = (reward = 1)": "success <> (reward = 1)",
        "expert: no run, iteration 0": "source = 'expert' AND (run_id IS NOT NULL OR iteration <> 0 "
        "OR purpose <> 'expert')",
        "policy: a run": "source = 'policy' AND (run_id IS NULL OR purpose = 'expert')",
        "simulations branch": "(purpose = 'simulate') <> (branch_step > 0) "
        "OR (branch_step > 0) <> (branch_traj_id IS NOT NULL)",
        "simulations continue after the prefix": "purpose = 'simulate' AND n_steps <= branch_step",
        "lengths within the task's limit": "n_steps < 1 OR n_steps > "
        "(SELECT max_steps FROM tasks WHERE tasks.task_id = trajectories.task_id)",
        "eval on held-out tasks only": "purpose = 'eval' AND task_id IN "
        "(SELECT task_id FROM tasks WHERE split = 'train')",
        "explore/simulate on training tasks only": "purpose IN ('explore', 'simulate') AND task_id "
        "IN (SELECT task_id FROM tasks WHERE split <> 'train')",
    }
    for rule, condition in bad.items():
        assert scalar(con, f"SELECT count(*) FROM trajectories WHERE {condition}") == 0, rule


def test_expert_data_looks_like_gpt4_on_webshop(con) -> None:
    rate = scalar(con, "SELECT avg(success::INTEGER) FROM trajectories WHERE source = 'expert'")
    assert 0.2 < rate < 0.5
    assert scalar(con, "SELECT max(c) FROM (SELECT count(*) AS c FROM trajectories "
                       "WHERE source = 'expert' GROUP BY task_id)") > 1
    # some held-out tasks carry expert data too, which selection must ignore
    assert scalar(con, "SELECT count(*) FROM trajectories t JOIN tasks k USING (task_id) "
                       "WHERE t.source = 'expert' AND k.split <> 'train'") > 0


def test_steps_are_complete_and_consistent(con) -> None:
    assert scalar(con, """
        SELECT count(*) FROM trajectories t
        LEFT JOIN (SELECT traj_id, count(*) AS n, min(step) AS lo, max(step) AS hi
                   FROM steps GROUP BY traj_id) s USING (traj_id)
        WHERE coalesce(s.n, 0) <> t.n_steps OR s.lo <> 0 OR s.hi <> t.n_steps - 1""") == 0
    # the last step carries the trajectory's reward, the others 0
    assert scalar(con, """
        SELECT count(*) FROM steps s JOIN trajectories t USING (traj_id)
        WHERE s.reward IS DISTINCT FROM
              CASE WHEN s.step = t.n_steps - 1 THEN t.reward ELSE 0.0 END""") == 0
    assert scalar(con, "SELECT count(*) FROM steps WHERE action = '' OR observation = ''") == 0
    assert 0 < scalar(con, "SELECT count(*) FROM steps WHERE thought IS NULL") < scalar(
        con, "SELECT count(*) FROM steps")


def test_simulations_replay_the_expert_from_its_checkpoints(con) -> None:
    sims = con.execute("""
        SELECT s.branch_step, e.n_steps, e.success, e.task_id = s.task_id, k.split
        FROM trajectories s
        JOIN trajectories e ON e.traj_id = s.branch_traj_id
        JOIN tasks k ON k.task_id = e.task_id
        WHERE s.purpose = 'simulate'""").fetchall()
    assert sims
    for branch_step, expert_steps, expert_success, same_task, split in sims:
        assert not expert_success and same_task and split == "train"
        assert branch_step in selection_reference.checkpoints(expert_steps, N_SIMS)
    # the first branch_step actions and observations are the expert's
    assert scalar(con, """
        SELECT count(*) FROM trajectories t
        JOIN steps s ON s.traj_id = t.traj_id AND s.step < t.branch_step
        LEFT JOIN steps x ON x.traj_id = t.branch_traj_id AND x.step = s.step
        WHERE t.purpose = 'simulate'
          AND (x.action IS DISTINCT FROM s.action OR x.observation IS DISTINCT FROM s.observation
               OR x.thought IS DISTINCT FROM s.thought)""") == 0
    # every checkpoint of every failed training expert is simulated once per run and iteration
    experts = con.execute("""
        SELECT e.n_steps FROM trajectories e JOIN tasks k USING (task_id)
        WHERE e.source = 'expert' AND NOT e.success AND k.split = 'train'""").fetchall()
    expected = sum(len(selection_reference.checkpoints(n, N_SIMS)) for (n,) in experts)
    assert scalar(con, "SELECT count(*) FROM trajectories WHERE purpose = 'simulate'") == (
        expected * N_RUNS * N_ITERATIONS
    )


def test_every_run_explores_simulates_and_evaluates_each_iteration(con) -> None:
    rows = set(con.execute(
        "SELECT DISTINCT run_id, iteration, purpose FROM trajectories WHERE source = 'policy'"
    ).fetchall())
    for r in range(1, N_RUNS + 1):
        run = f"synthetic-run-{r}"
        assert (run, 0, "eval") in rows
        for i in range(1, N_ITERATIONS + 1):
            for purpose in ("explore", "simulate", "eval"):
                assert (run, i, purpose) in rows


def test_policy_improves_with_iterations_and_expert_prefix(con) -> None:
    by_iteration = dict(con.execute(
        "SELECT iteration, avg(success::INTEGER) FROM trajectories "
        "WHERE purpose IN ('explore', 'simulate') GROUP BY iteration").fetchall())
    assert by_iteration[N_ITERATIONS] > by_iteration[1]
    early, late = con.execute("""
        SELECT avg(t.success::INTEGER) FILTER (WHERE t.branch_step * 2 < e.n_steps),
               avg(t.success::INTEGER) FILTER (WHERE t.branch_step * 2 >= e.n_steps)
        FROM trajectories t JOIN trajectories e ON e.traj_id = t.branch_traj_id""").fetchall()[0]
    assert late > early


def test_sql_selection_equals_python_reference(generated: tuple[Path, dict]) -> None:
    path, _ = generated
    con = store.connect(path)
    try:
        splits, trajs = selection_reference.load(con)
        need_recover = 0
        for r in range(1, N_RUNS + 1):
            run = f"synthetic-run-{r}"
            plan = [(0, "bc")] + [(i, m) for i in range(1, N_ITERATIONS + 1) for m in ("eef", "rft")]
            for iteration, method in plan:
                result = selection.select_examples(con, run, iteration, method)
                rows = selection.fetch_examples(con, run, iteration, method)
                expected = selection_reference.select(splits, trajs, run, iteration, method, N_SIMS)
                assert rows == expected, (run, iteration, method)
                assert result.n_examples == len(rows) > 0
                need_recover += result.by_kind.get("need_recover", 0)
        assert need_recover > 0  # the store exercises EEF's need-recover states
    finally:
        con.close()


def test_same_seed_same_store_other_seed_other_store(tmp_path: Path) -> None:
    def digest(path: Path, seed: int) -> tuple:
        generate_store(path, n_tasks=25, n_runs=1, n_iterations=2, seed=seed)
        with store.reader(path) as con:
            return store.first_row(con, """
                SELECT (SELECT sum(hash(traj_id, task_id, reward, n_steps, branch_step))
                        FROM trajectories),
                       (SELECT sum(hash(traj_id, step, thought, action, observation)) FROM steps),
                       (SELECT sum(hash(task_id, split, instruction)) FROM tasks)""")

    first = digest(tmp_path / "a.duckdb", 3)
    assert first == digest(tmp_path / "b.duckdb", 3)
    assert first != digest(tmp_path / "c.duckdb", 4)


def test_refuses_to_generate_twice_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    counts = generate_store(path, n_tasks=10, n_runs=1, n_iterations=1)
    with pytest.raises(StoreError, match="already holds synthetic data"):
        generate_store(path, n_tasks=10, n_runs=1, n_iterations=1)
    again = generate_store(path, n_tasks=10, n_runs=1, n_iterations=1, overwrite=True)
    assert again["trajectories"] == counts["trajectories"]


def test_no_runs_or_iterations_gives_expert_data_only(tmp_path: Path) -> None:
    counts = generate_store(tmp_path / "e.duckdb", n_tasks=20, n_runs=0, n_iterations=0)
    assert counts["trajectories"] == counts["expert"] > 0
    assert counts["explore"] == counts["simulate"] == counts["eval"] == 0

"""The `budget` view (sql/views/90_budget.sql) on a real DuckDB file with hand-checked rows: episodes,
env steps (replayed prefix included), policy steps, tokens and wall time per run, iteration, method
and phase; unfinished phases; expert data and other runs left out."""

from __future__ import annotations

import json

from eef_tasks import store
from eef_tasks.records import StepRecord, TrajectoryRecord, write_trajectories
from store_builders import open_store


def _steps(n: int) -> list[StepRecord]:
    return [StepRecord(action=f"a{i}", observation=f"o{i}") for i in range(n)]


def _policy(run: str, it: int, purpose: str, task: str, n: int, tokens: tuple[int, int, int] | None,
            branch: tuple[str, int] | None = None, sample: int = 0) -> TrajectoryRecord:
    meta = None if tokens is None else dict(zip(("prompt_tokens", "prefill_tokens", "completion_tokens"), tokens))
    return TrajectoryRecord(
        traj_id=f"{run}/it{it}/{purpose}/{task}/{sample}", task_id=task, run_id=run, source="policy",
        model_id="m", iteration=it, purpose=purpose, reward=0.0, meta=meta, steps=_steps(n),
        branch_traj_id=branch[0] if branch else None, branch_step=branch[1] if branch else 0,
    )


def _phase_rows(con, phases) -> None:
    for run, it, phase, summary in phases:
        con.execute("""INSERT INTO run_phases (run_id, iteration, phase, started_at, summary)
                       VALUES ($r, $i, $p, current_timestamp, $s)""",
                    {"r": run, "i": it, "p": phase, "s": json.dumps(summary)})


def build_budget_store(db):
    """Two runs: r-eef (BC trained, iteration 1 explored twice from t1, simulated once from s_2 of
    e1, evaluated once; its simulate phase killed) and r-rft (one explore rollout, no tokens)."""
    con = open_store(db)
    try:
        con.execute("""INSERT INTO runs (run_id, n_sims, method) VALUES ('r-eef', 2, 'eef'), ('r-rft', 0, 'rft')""")
        expert = TrajectoryRecord(traj_id="e1", task_id="t1", env="toy", split="train", instruction="do it",
                                  source="expert", expert="gold", reward=0.0, steps=_steps(5))
        write_trajectories(con, [
            expert,
            _policy("r-eef", 1, "explore", "t1", 3, (100, 60, 12)),
            _policy("r-eef", 1, "explore", "t1", 4, (120, 70, 15), sample=1),
            # a simulation from s_2 of e1: 2 replayed expert actions + 3 of the policy
            _policy("r-eef", 1, "simulate", "t1", 5, (300, 90, 20), branch=("e1", 2)),
            _policy("r-eef", 1, "eval", "t1", 2, (50, 50, 8)),
            _policy("r-rft", 1, "explore", "t1", 6, None),  # no token counts recorded (NULL, not 0)
        ])
        phases = [
            ("r-eef", 0, "train", {"wall_s": 40.5, "n_examples": 7, "n_supervised_tokens": 900, "n_optimizer_steps": 2}),
            ("r-eef", 1, "explore", {"wall_s": 12.25}),
            ("r-eef", 1, "evaluate", {"wall_s": 3.0}),
            # r-eef iteration 1 simulate was killed: trajectories stored, no run_phases row
        ]
        _phase_rows(con, phases)
    finally:
        con.close()
    return db


def test_budget_rows_by_run_iteration_and_phase(tmp_path) -> None:
    db = build_budget_store(tmp_path / "eef.duckdb")
    with store.reader(db) as con:
        cols = ["run_id", "method", "iteration", "phase", "finished", "episodes", "env_steps", "policy_steps",
                "prompt_tokens", "prefill_tokens", "generated_tokens", "train_examples",
                "train_supervised_tokens", "train_optimizer_steps", "wall_s"]
        rows = con.execute(f"SELECT {', '.join(cols)} FROM budget ORDER BY run_id, iteration, phase").fetchall()
    got = [dict(zip(cols, r)) for r in rows]
    expected = [
        ("r-eef", "eef", 0, "train", True, 0, 0, 0, 0, 0, 0, 7, 900, 2, 40.5),
        ("r-eef", "eef", 1, "evaluate", True, 1, 2, 2, 50, 50, 8, None, None, None, 3.0),
        ("r-eef", "eef", 1, "explore", True, 2, 7, 7, 220, 130, 27, None, None, None, 12.25),
        ("r-eef", "eef", 1, "simulate", False, 1, 5, 3, 300, 90, 20, None, None, None, None),
        ("r-rft", "rft", 1, "explore", False, 1, 6, 6, None, None, None, None, None, None, None),
    ]
    assert got == [dict(zip(cols, e)) for e in expected]


ITERATION_COLUMNS = ["run_id", "method", "iteration", "explore_episodes", "simulate_episodes", "rollout_episodes",
                     "rollout_env_steps", "rollout_policy_steps", "rollout_prompt_tokens", "rollout_generated_tokens",
                     "rollout_wall_s", "eval_episodes", "eval_env_steps", "eval_generated_tokens", "eval_wall_s",
                     "train_examples", "train_supervised_tokens", "train_optimizer_steps", "train_wall_s", "wall_s",
                     "finished"]


def _rows(db, sql: str, cols: list[str]) -> list[dict]:
    with store.reader(db) as con:
        return [dict(zip(cols, r)) for r in con.execute(sql).fetchall()]


def test_iteration_budget_sums_the_phases_of_an_iteration(tmp_path) -> None:
    db = build_budget_store(tmp_path / "eef.duckdb")
    query = f"SELECT {', '.join(ITERATION_COLUMNS)} FROM iteration_budget ORDER BY run_id, iteration"
    expected = [
        # BC: training only, finished
        ("r-eef", "eef", 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, None, 7, 900, 2, 40.5, 40.5, True),
        # explore 2 episodes (3 + 4 steps, 27 tokens) + 1 simulation (5 steps, 3 the policy's, 20 tokens);
        # the simulate phase has not finished: no rollout or iteration wall time yet
        ("r-eef", "eef", 1, 2, 1, 3, 12, 10, 520, 47, None, 1, 2, 8, 3.0, None, None, None, None, None, False),
        # no token counts recorded: NULL, not 0
        ("r-rft", "rft", 1, 1, 0, 1, 6, 6, None, None, None, 0, 0, 0, None, None, None, None, None, None, False),
    ]
    assert _rows(db, query, ITERATION_COLUMNS) == [dict(zip(ITERATION_COLUMNS, e)) for e in expected]

    # the simulate phase finishes (12 s): the iteration's rollout and total wall times appear
    con = store.connect(db)
    try:
        _phase_rows(con, [("r-eef", 1, "simulate", {"wall_s": 12.0}), ("r-eef", 1, "select", {"wall_s": 0.5}),
                          ("r-eef", 1, "train", {"wall_s": 30.0, "n_examples": 2, "n_supervised_tokens": 80,
                                                 "n_optimizer_steps": 1})])
    finally:
        con.close()
    got = _rows(db, "SELECT rollout_wall_s, train_wall_s, wall_s, finished FROM iteration_budget "
                    "WHERE run_id = 'r-eef' AND iteration = 1", ["rollout_wall_s", "train_wall_s", "wall_s", "finished"])
    assert got == [{"rollout_wall_s": 24.25, "train_wall_s": 30.0, "wall_s": 12.25 + 12.0 + 0.5 + 30.0 + 3.0,
                    "finished": True}]


def test_run_budget_totals(tmp_path) -> None:
    db = build_budget_store(tmp_path / "eef.duckdb")
    cols = ["run_id", "method", "n_iterations", "rollout_episodes_per_iteration", "rollout_episodes",
            "rollout_env_steps", "rollout_generated_tokens", "eval_episodes", "train_supervised_tokens",
            "train_wall_s", "wall_s", "finished"]
    got = _rows(db, f"SELECT {', '.join(cols)} FROM run_budget ORDER BY run_id", cols)
    assert got == [dict(zip(cols, e)) for e in [
        # iteration 1 unfinished: no run wall time; BC's training counted
        ("r-eef", "eef", 1, 3.0, 3, 12, 47, 1, 900, 40.5, None, False),
        ("r-rft", "rft", 1, 1.0, 1, 6, None, 0, None, None, None, False),
    ]]

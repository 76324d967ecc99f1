"""Expert cost (views expert_cost, example_cost, run_expert_cost; eef_tasks/expert_cost.py; `eef compare
--cost`) on a hand-built store, every number checked by hand.

Costs are the synthetic experts' stated model (eef_tasks/experts/synthetic.py): a trajectory of n
actions reads 600 n + 150 n (n - 1) / 2 prompt tokens and writes 30 n; `synthetic` is priced $30 / $60
per 1M tokens, `synthetic-cheap` $0.50 / $1.50.

  task  split  trajectory  expert           steps  outcome  prompt  completion  cost $
  t1    train  b1          synthetic        4      success  3300    120         0.1062
  t1    train  b2          synthetic        2      failure  1350    60          0.0441
  t2    train  b3          synthetic        3      failure  2250    90          0.0729
  t2    train  c1          synthetic-cheap  3      success  2250    90          0.00126
  t1    train  c2          synthetic-cheap  1      failure  600     30          0.000345
  t1    train  g1          gold             5      success  (no cost in meta)
  d     dev    dx          synthetic        2      success  1350    60          0.0441
Run run-1 (made by `eef select`: its training tasks are every train task, t1 and t2), M = 1:
  iteration 0, bc: b1, c1, g1 -> 3 examples, expert cost 0.1062 + 0.00126 = 0.10746 (g1 has none), per
  example 0.03582;
  iteration 1, eef: a simulation s of b2 from s1 (M = 1: b2's checkpoint) succeeds: it is t1's s0
  example (1 expert action after s0, against b1's 4 and g1's 5); t2's is c1 (no simulation of b3 ran);
  a failed rollout from s0 of t2 adds no example: 2 examples using b2 and c1, 0.0441 + 0.00126 = 0.04536,
  per example 0.02268.
Run r-t1 (registered with training tasks [t1]): b1, b2, c2, g1: 4 trajectories, 0.150645.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from store_builders import RUN, insert_tasks, insert_trajectories, open_store, select_checked
from test_selection_properties import MAX_ITERATION, RUNS, Spec, stores

from eef_tasks import expert_cost, selection
from eef_tasks.experts.synthetic import SYNTHETIC_EXPERTS


def _cost(expert: str, n_steps: int) -> dict:
    return {"synthetic": True, **SYNTHETIC_EXPERTS[expert].cost.meta(n_steps)}


def cost_store(b) -> None:
    b.task("d", split="dev")
    b.expert("b1", "t1", 4, True, expert="synthetic", meta=_cost("synthetic", 4))
    b.expert("b2", "t1", 2, False, expert="synthetic", meta=_cost("synthetic", 2))
    b.expert("b3", "t2", 3, False, expert="synthetic", meta=_cost("synthetic", 3))
    b.expert("c1", "t2", 3, True, expert="synthetic-cheap", meta=_cost("synthetic-cheap", 3))
    b.expert("c2", "t1", 1, False, expert="synthetic-cheap", meta=_cost("synthetic-cheap", 1))
    b.expert("g1", "t1", 5, True)
    b.expert("dx", "d", 2, True, expert="synthetic", meta=_cost("synthetic", 2))


def _rows(con, sql: str) -> list[tuple]:
    return [tuple(round(v, 8) if isinstance(v, float) else v for v in row) for row in con.execute(sql).fetchall()]


def test_expert_cost_per_expert(con, build):
    cost_store(build)
    assert _rows(con, "SELECT * FROM expert_cost ORDER BY expert") == [
        # env, expert, n, successes, costed, prompt, completion, tokens, cost, per trajectory, per success, stated
        ("toy", "gold", 1, 1, 0, None, None, None, None, None, None, None),
        ("toy", "synthetic", 4, 2, 4, 8250, 330, 8580, 0.2673, 0.066825, 0.13365, True),
        ("toy", "synthetic-cheap", 2, 1, 2, 2850, 120, 2970, 0.001605, 0.0008025, 0.001605, True),
    ]


def test_cost_per_training_example(con, build):
    cost_store(build)
    select_checked(con, RUN, 0, "bc", n_sims=1)
    build.simulation("s", "b2", 1, iteration=1, success=True, extra=2)
    build.rollout("r2", "t2", iteration=1, success=False)
    examples = select_checked(con, RUN, 1, "eef")
    assert sorted((e.task_id, e.traj_id) for e in examples) == [("t1", "s"), ("t2", "c1")]
    assert _rows(con, "SELECT * FROM example_cost ORDER BY iteration") == [
        # run, iteration, method, examples, with expert actions, expert trajectories, costed, cost, per example
        (RUN, 0, "bc", 3, 3, 3, 2, 0.10746, 0.03582),
        (RUN, 1, "eef", 2, 2, 2, 2, 0.04536, 0.02268),
    ]


def test_a_runs_expert_spend_is_its_training_tasks_data(con, build):
    cost_store(build)
    select_checked(con, RUN, 0, "bc", n_sims=1)
    con.execute("INSERT INTO runs (run_id, n_sims, method, config) VALUES ('r-t1', 0, 'rft', $c)",
                {"c": json.dumps({"config": {"train_tasks": ["t1"]}})})
    assert _rows(con, "SELECT * FROM run_expert_cost ORDER BY run_id, expert NULLS LAST") == [
        # run, method, expert, train tasks, trajectories, successes, costed, tokens, cost
        ("r-t1", "rft", "gold", 1, 1, 1, 0, None, None),
        ("r-t1", "rft", "synthetic", 1, 2, 1, 2, 4830, 0.1503),
        ("r-t1", "rft", "synthetic-cheap", 1, 1, 0, 1, 630, 0.000345),
        ("r-t1", "rft", None, 1, 4, 2, 3, 5460, 0.150645),
        (RUN, None, "gold", 2, 1, 1, 0, None, None),
        (RUN, None, "synthetic", 2, 3, 1, 3, 7170, 0.2232),
        (RUN, None, "synthetic-cheap", 2, 2, 1, 2, 2970, 0.001605),
        (RUN, None, None, 2, 6, 3, 5, 10140, 0.224805),
    ]


def test_cost_table_is_win_rate_per_dollar(con, build, db_path, tmp_path):
    cost_store(build)
    select_checked(con, RUN, 0, "bc", n_sims=1)
    build.rollout("ev0", "d", iteration=0, success=False, purpose="eval")
    build.rollout("ev1", "d", iteration=1, success=True, purpose="eval")
    con.close()
    table = expert_cost.cost_table(db_path)
    assert table.columns == list(expert_cost.COLUMNS)
    row = table.row(0, named=True)
    assert (row["run_id"], row["experts"], row["n_expert_trajectories"], row["expert_tokens"]) == (
        RUN, "gold,synthetic,synthetic-cheap", 6, 10140)
    assert (row["best_iteration"], row["win_rate"]) == (1, 1.0)
    assert row["expert_cost_usd"] == pytest.approx(0.224805)
    assert row["win_rate_per_usd"] == pytest.approx(100 / 0.224805)
    headers, cells = expert_cost.display_rows(table)
    assert dict(zip(headers, cells[0], strict=True))["win rate % per $"] == "444.83"
    plot = expert_cost.cost_plot(table, tmp_path / "cost.svg")
    assert plot.read_text().lstrip().startswith("<?xml")


# --- a run that learns from some experts only (runs.experts, macro uses_expert) ----------------------


def test_a_run_learns_only_from_its_experts(con, build):
    """Run 'big' learns from `synthetic` only, run-1 from every expert: the same store, two expert sources.
    Beside the table above, c3: synthetic-cheap, t2, 4 steps, failed (0.00183 $)."""
    cost_store(build)
    build.expert("c3", "t2", 4, False, expert="synthetic-cheap", meta=_cost("synthetic-cheap", 4))
    con.execute("INSERT INTO runs (run_id, n_sims, method, experts) VALUES ('big', 1, 'eef', ['synthetic'])")
    select_checked(con, RUN, 0, "bc", n_sims=1)
    assert sorted(e.traj_id for e in select_checked(con, "big", 0, "bc")) == ["b1"]  # not c1, not g1
    assert sorted(e.traj_id for e in select_checked(con, RUN, 0, "bc")) == ["b1", "c1", "g1"]
    assert sorted(e.traj_id for e in select_checked(con, "big", 0, "sft-all")) == ["b1", "b2", "b3"]
    # M = 1: l = max(1, T // 2), the failed experts' checkpoint s_l; c3 (synthetic-cheap) is run-1's only
    # (c2 has one action: no state 0 < k < 1)
    assert con.execute("SELECT run_id, expert_traj_id, step FROM expert_checkpoints ORDER BY ALL").fetchall() == [
        ("big", "b2", 1), ("big", "b3", 1), (RUN, "b2", 1), (RUN, "b3", 1), (RUN, "c3", 2)]
    # ETO: a failed exploration of t2 pairs with c1 for run-1; 'big' has no expert success on t2
    build.rollout("x-big", "t2", iteration=1, success=False, run_id="big")
    build.rollout("x-all", "t2", iteration=1, success=False)
    assert con.execute("SELECT run_id, chosen_traj_id, rejected_traj_id FROM eto_pairs ORDER BY ALL").fetchall() == [
        (RUN, "c1", "x-all")]
    assert _rows(con, "SELECT run_id, n_trajectories, n_success, cost_usd FROM run_expert_cost "
                      "WHERE expert IS NULL ORDER BY run_id") == [("big", 3, 1, 0.2232), (RUN, 7, 3, 0.226635)]


# --- property: a run restricted to some experts selects as if the others' data were not there ---------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=stores())
def test_a_run_with_some_experts_selects_as_from_a_store_of_theirs_only(spec: Spec):
    """Every other expert trajectory is relabelled `synthetic`; run A learns from `synthetic` only. Its
    training sets (bc, sft-all, eef, rft at every iteration) in that store equal those of the same run,
    unrestricted, in a store without the other experts' trajectories."""
    experts = [t for t in spec.trajs if t.source == "expert"]
    chosen = [t.traj_id for t in experts[::2]]
    dropped = {t.traj_id for t in experts[1::2]}
    run, n_sims = RUNS[0], spec.n_sims[RUNS[0]]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, trajs, restricted in (("all", spec.trajs, True),
                                        ("theirs", [t for t in spec.trajs if t.traj_id not in dropped], False)):
            con = open_store(Path(tmp) / f"{name}.duckdb")
            try:
                insert_tasks(con, spec.splits)
                insert_trajectories(con, trajs)
                con.execute("UPDATE trajectories SET expert = 'synthetic' WHERE list_contains($ids, traj_id)",
                            {"ids": chosen})
                selection.ensure_run(con, run, n_sims)
                if restricted:
                    con.execute("UPDATE runs SET experts = ['synthetic'] WHERE run_id = $r", {"r": run})
                rows = []
                for iteration, method in [(0, "bc"), (0, "sft-all"), *((i, m) for i in range(1, MAX_ITERATION + 1)
                                                                        for m in ("eef", "rft"))]:
                    selection.select_examples(con, run, iteration, method)
                    rows.append(selection.fetch_examples(con, run, iteration, method))
                results.append(rows)
            finally:
                con.close()
    assert results[0] == results[1]

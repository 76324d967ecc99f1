"""The whole method on eef's WebShop through the Prefect flows: the `experiment` flow (what
`eef run --preset tiny --env webshop` starts) under a temporary Prefect server, with the real
synthetic expert, the real 1,000-product shop, real SmolLM2 training and rollouts.

It checks that WebShop trajectories of every purpose are stored (expert, explore, simulate from
the failed expert trajectories' checkpoints, eval on dev goals), that the selection wrote examples
of each method, that win rates exist for each evaluated iteration, and that the store's views answer
through the real `eef sql` script unchanged. ScienceWorld's run of the same flow (resume, stopping,
artifacts) is tests/test_pipeline_flows.py.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eef_tasks import pipeline, store

pytestmark = pytest.mark.timeout(3600)

NAME = "ws"
EEF = Path(sys.executable).with_name("eef")


@pytest.fixture(scope="module")
def webshop_run(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import ExperimentParams, experiment_flow

    work = tmp_path_factory.mktemp("webshop")
    db = work / "eef.duckdb"
    patch = pytest.MonkeyPatch()
    patch.setenv("EEF_GPU_LOCK", str(work / "slot.lock"))  # this run's own model slot
    patch.setenv("HF_HUB_OFFLINE", "1")
    try:
        with prefect_test_harness(server_startup_timeout=120):
            result = experiment_flow(ExperimentParams(
                db=str(db), preset="tiny", name=NAME, out_dir=str(work / "reports"),
                overrides={"env": "webshop", "adapters_dir": str(work / "adapters")},
            ))
    finally:
        patch.undo()
    return work, db, result


def _sql(db: Path, query: str) -> list[dict[str, str]]:
    """Rows of `eef sql --format csv` (the real console script)."""
    proc = subprocess.run([str(EEF), "sql", "--db", str(db), "--format", "csv", query],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    return list(csv.DictReader(io.StringIO(proc.stdout)))


# Opt-in: one run of the tiny preset on WebShop trains four adapters on ~2k-token chats; on this
# project's 2-core machine it took 28 min under load, more than the CI budget leaves (the
# ScienceWorld tiny run in test_pipeline_flows.py covers the same flow in CI).
@pytest.mark.skipif(os.environ.get("EEF_TEST_WEBSHOP_E2E") != "1",
                    reason="opt-in (EEF_TEST_WEBSHOP_E2E=1): the tiny WebShop run does not fit the CI budget")
def test_tiny_preset_on_webshop_end_to_end(webshop_run) -> None:
    work, db, result = webshop_run
    assert Path(result["plot"]).is_file() and Path(result["table"]).is_file()
    with store.reader(db) as con:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        assert q("SELECT run_id, method, config->>'$.config.env' FROM runs ORDER BY run_id") == [
            (f"{NAME}-eef", "eef", "webshop"), (f"{NAME}-rft", "rft", "webshop")]
        assert q("SELECT DISTINCT env FROM tasks") == [("webshop",)]
        # the synthetic expert on the first two train goals, seeds 0 and 1: one success, three
        # failures with prefixes (stop_paging, gives_up; search_loop)
        experts = q("""SELECT task_id, expert, success, meta->>'mode' FROM trajectories
                       WHERE source = 'expert' ORDER BY traj_id""")
        assert [(t, e) for t, e, _, _ in experts] == [
            ("webshop/1500", "synthetic"), ("webshop/1500", "synthetic"),
            ("webshop/1501", "synthetic"), ("webshop/1501", "synthetic")]
        assert sum(s for _, _, s, _ in experts) == 1
        # observations are WebShop's pages: a search leads to a results page
        first = q("""SELECT s.action, s.observation FROM steps s JOIN trajectories t USING (traj_id)
                     WHERE t.source = 'expert' AND s.step = 0 ORDER BY s.traj_id LIMIT 1""")[0]
        assert first[0].startswith("search[") and "Page 1 (Total results: " in first[1]
        purposes = dict(q("SELECT purpose, count(*) FROM trajectories GROUP BY ALL"))
        assert {"expert", "explore", "simulate", "eval"} <= set(purposes)
        # simulations: eef only, from failed expert trajectories, their prefix the expert's actions
        sims = q("""SELECT t.run_id, t.branch_traj_id, t.branch_step, e.success,
                           (SELECT list(action ORDER BY step) FROM steps WHERE traj_id = t.traj_id AND step < t.branch_step),
                           (SELECT list(action ORDER BY step) FROM steps WHERE traj_id = e.traj_id AND step < t.branch_step)
                    FROM trajectories t JOIN trajectories e ON e.traj_id = t.branch_traj_id
                    WHERE t.purpose = 'simulate'""")
        assert sims and {run for run, *_ in sims} == {f"{NAME}-eef"}
        assert all(step > 0 and not success and mine == theirs for _, _, step, success, mine, theirs in sims)
        # the replayed prefixes' observations are the ones the shop returned during the replay
        replayed = q("""SELECT s.observation FROM steps s JOIN trajectories t USING (traj_id)
                        WHERE t.purpose = 'simulate' AND s.step < t.branch_step""")
        assert replayed and all(" [SEP] " in obs for obs, in replayed)
        evals = q("""SELECT run_id, iteration, count(*) FROM trajectories t JOIN tasks k USING (task_id)
                     WHERE purpose = 'eval' AND k.split = 'dev' GROUP BY ALL ORDER BY ALL""")
        assert evals == [(f"{NAME}-eef", 0, 1), (f"{NAME}-eef", 1, 1), (f"{NAME}-rft", 1, 1)]
        kinds = dict(q("SELECT method, list(DISTINCT state_kind) FROM training_examples GROUP BY ALL"))
        assert kinds["bc"] == ["expert_success"]
        assert "initial" in kinds["eef"] and "initial" in kinds["rft"]
    for run in (f"{NAME}-eef", f"{NAME}-rft"):
        assert pipeline.next_iteration(db, run) is None
    for adapter in (f"{NAME}-eef/bc-it0", f"{NAME}-eef/eef-it1", f"{NAME}-rft/rft-it1"):
        assert (work / "adapters" / adapter / "adapter_config.json").is_file(), adapter

    # the store's views, unchanged, through `eef sql`
    rates = _sql(db, "SELECT run_id, iteration, split, win_rate, mean_reward FROM win_rates "
                     "WHERE purpose = 'eval' ORDER BY run_id, iteration")
    assert [(r["run_id"], r["iteration"], r["split"]) for r in rates] == [
        (f"{NAME}-eef", "0", "dev"), (f"{NAME}-eef", "1", "dev"), (f"{NAME}-rft", "1", "dev")]
    assert all(0.0 <= float(r["win_rate"]) <= 1.0 and 0.0 <= float(r["mean_reward"]) <= 1.0 for r in rates)
    comparison = _sql(db, "SELECT run_id, iteration, method FROM run_comparison ORDER BY ALL")
    assert {(r["run_id"], r["method"]) for r in comparison} >= {(f"{NAME}-eef", "eef"), (f"{NAME}-rft", "rft")}
    counts = _sql(db, "SELECT method, state_kind, sum(n_examples) AS n FROM example_counts GROUP BY ALL ORDER BY ALL")
    assert {r["method"] for r in counts} == {"bc", "eef", "rft"}
    checkpoints = _sql(db, f"SELECT * FROM expert_checkpoints WHERE run_id = '{NAME}-eef'")
    assert len(checkpoints) == len(sims)  # M = 1: one checkpoint per failed expert trajectory
    _sql(db, "SELECT run_id, iteration, expert_traj_id, step FROM need_recover_states")  # may be empty
    summary = _sql(db, "SELECT task_id, n_failed FROM expert_summary ORDER BY task_id")
    assert [r["task_id"] for r in summary] == ["webshop/1500", "webshop/1501"]
    assert _sql(db, "SELECT phase, sum(episodes) AS n FROM budget GROUP BY ALL")


@pytest.mark.parametrize("preset", ["tiny", "demo", "paper"])
def test_every_preset_makes_a_webshop_run(preset) -> None:
    """The README's presets with `--env webshop`: valid settings, no ScienceWorld task names, room
    in each chat for a WebShop results page; ScienceWorld's settings unchanged by it."""
    from eef_tasks.envs import registry
    from eef_tasks.pipeline import preset_config
    from eef_tasks.pipeline.presets import settings_of

    config = preset_config(preset, "p", env="webshop")
    assert config.env == "webshop" and config.task_names == []
    assert config.train.max_length >= 2048
    assert registry.eval_tasks(config.env, config.eval_split, config.task_names, config.eval_limit)
    assert preset_config(preset, "p").task_names == settings_of(preset).get("task_names", [])

"""The Prefect UI's iteration table, built from phase summaries shaped as the phases write them
(eef_tasks.pipeline.phases): every row has every column, the key numbers come first, always.
(The tables a real run leaves on a real Prefect server are checked in test_pipeline_flows.py.)"""

from __future__ import annotations

import re

import polars as pl

from flows import artifacts
from flows.artifacts import COLUMNS, KEY_METRICS, iteration_rows

ROLLOUT = {"requested": 6, "already_stored": 0, "written": 6, "successes": 2, "errors": 0, "failed": [],
           "completion_tokens": 900, "prefill_tokens": 4000, "generate_s": 3.2, "adapter": "a/eef-it0"}
ITERATION_1 = {
    "explore": {**ROLLOUT, "wall_s": 10.0},
    "simulate": {**ROLLOUT, "requested": 4, "successes": 1, "wall_s": 8.0},
    "select": {"method": "eef", "n_examples": 5, "by_kind": {"initial": 3, "need_recover": 2},
               "need_recover_states": 2, "wall_s": 0.5},
    "train": {"adapter": "a/eef-it1", "n_examples": 5, "n_supervised_tokens": 700, "n_optimizer_steps": 6,
              "final_loss": 1.234567, "train_s": 20.0, "wall_s": 25.0},
    "evaluate": {**ROLLOUT, "n_eval": 4, "win_rate": 0.25, "mean_reward": 0.41234, "split": "dev", "wall_s": 6.5},
}


def _by_metric(rows: list[dict]) -> dict[str, dict]:
    return {row["metric"]: row for row in rows}


def test_every_row_has_every_column_and_the_key_numbers_come_first() -> None:
    rows = iteration_rows("r-eef", 1, ITERATION_1)
    assert all(tuple(row) == COLUMNS for row in rows)
    assert [row["metric"] for row in rows[: len(KEY_METRICS)]] == list(KEY_METRICS)
    value = {m: row["value"] for m, row in _by_metric(rows).items()}
    assert value["examples: initial states"] == 3 and value["examples: need-recover states"] == 2
    assert value["examples: expert successes"] == 0 and value["examples: total"] == 5
    assert value["need-recover states found so far"] == 2
    assert value["simulations"] == 4 and value["simulations that succeeded"] == 1
    assert value["final training loss"] == 1.2346
    assert value["win rate %"] == 25.0 and value["mean reward"] == 0.412
    assert value["wall time s"] == 50.0
    assert value["explore rollouts"] == 6 and value["wall time s: train"] == 25.0


def test_behaviour_cloning_and_the_baseline_say_why_a_number_is_missing() -> None:
    bc = iteration_rows("r-eef", 0, {
        "select": {"method": "bc", "n_examples": 7, "by_kind": {"expert_success": 7}, "need_recover_states": 0,
                   "wall_s": 0.2},
        "train": ITERATION_1["train"], "evaluate": ITERATION_1["evaluate"]})
    row = _by_metric(bc)
    assert row["examples: expert successes"]["value"] == 7
    assert row["simulations"]["value"] == 0 and "iteration 0" in row["simulations"]["note"]
    rft = iteration_rows("r-rft", 1, {p: s for p, s in ITERATION_1.items() if p != "simulate"}, "rft")
    assert "M = 0" in _by_metric(rft)["simulations"]["note"]
    reused = iteration_rows("r-rft", 0, {
        "select": {"method": "bc", "n_examples": 7, "by_kind": {"expert_success": 7}, "wall_s": 0.1},
        "train": {"adapter": "a/bc-it0", "reused": True, "wall_s": 0.0},
        "evaluate": {"adapter": "a/bc-it0", "reused": True, "wall_s": 0.0}})
    row = _by_metric(reused)
    assert row["win rate %"]["value"] is None and "evaluated by the run that trained it" in row["win rate %"]["note"]
    assert row["final training loss"]["value"] is None and "reuses" in row["final training loss"]["note"]
    for rows in (bc, rft, reused):
        assert all(tuple(r) == COLUMNS for r in rows)
        assert [r["metric"] for r in rows[: len(KEY_METRICS)]] == list(KEY_METRICS)


def test_run_names_and_headline() -> None:
    assert artifacts.compare_run_name(["a-eef", "a-rft"]) == "compare a-eef a-rft"
    assert artifacts.compare_run_name([]) == "compare all runs"
    assert artifacts.collect_run_name("synthetic", "/x/data/eef.duckdb") == "collect synthetic into eef.duckdb"
    assert artifacts.iteration_run_name("/nonexistent/eef.duckdb", "r-eef") == "r-eef"
    df = pl.DataFrame({"run_id": ["a-eef", "a-eef", "a-rft"], "method": ["eef", "eef", "rft"],
                       "iteration": [0, 1, 1], "win_rate": [0.0, 0.5, None], "mean_reward": [0.1, 0.6, None],
                       "n_eval_tasks": [2, 2, None], "eval_split": ["dev", "dev", None]})
    line = artifacts.headline(df, "a")
    assert line == ("experiment a: a-eef (eef) win rate 50.0 %, mean reward 0.600 at iteration 1 on 2 dev tasks; "
                    "a-rft: not evaluated")


def _texts(schema) -> list[str]:
    """Every description in a JSON schema (what the Custom-run form shows under a field)."""
    if isinstance(schema, dict):
        own = [v for k, v in schema.items() if k == "description" and isinstance(v, str)]
        return own + [t for v in schema.values() for t in _texts(v)]
    if isinstance(schema, list):
        return [t for v in schema for t in _texts(v)]
    return []


def test_forms_show_their_descriptions_as_written() -> None:
    """The UI renders a form's descriptions as HTML: a `<name>` in them vanishes; nor do they
    name code a UI user cannot see."""
    from prefect.utilities.callables import parameter_schema

    from flows import collect, pipeline, selection
    from flows.serve import deployments

    flows = [pipeline.iteration_flow, pipeline.eef_flow, pipeline.rft_flow, pipeline.evaluate_flow,
             pipeline.compare_flow, pipeline.experiment_flow, pipeline.baseline_flow, collect.collect_flow,
             selection.select_flow]
    texts = [d.description for d in deployments(db="data/eef.duckdb")]
    texts += [t for f in flows for t in _texts(parameter_schema(f.fn).model_dump())]
    assert len(texts) > 100  # every field of every form
    for text in texts:
        assert not re.search(r"<[A-Za-z/]", text), text
        assert "RunConfig" not in text and "eef_tasks" not in text and "PRESETS" not in text, text

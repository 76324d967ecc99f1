"""What the flows show in the Prefect UI: the per-iteration table, the summaries, run names.

The story: an iteration's phase summaries become one table row per metric — the numbers a user
opens the page for first (examples by kind, need-recover states, simulations, final loss, win
rate, mean reward, wall time), then the details — and every row has the same four columns,
because Prefect's UI takes a table's columns from its first row. The run's markdown summary and
the experiment's headline come from the store's `run_comparison` view (`eef_tasks.report`).

The builders are plain functions (tested without Prefect); `publish_*` write the artifacts from
inside a flow run.
"""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from eef_tasks import report, store

COLUMNS = ("metric", "value", "phase", "note")

# the rows every iteration table starts with, in this order (the test checks them by these names)
KEY_METRICS = (
    "examples: initial states",
    "examples: need-recover states",
    "examples: expert successes",
    "examples: total",
    "need-recover states found so far",
    "simulations",
    "simulations that succeeded",
    "final training loss",
    "win rate %",
    "mean reward",
    "wall time s",
)


def artifact_key(text: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _row(metric: str, value, phase: str, note: str = "") -> dict:
    return {"metric": metric, "value": value, "phase": phase, "note": note}


def _not_run(phase: str, iteration: int, method: str) -> str:
    if iteration == 0:
        return f"no {phase} phase in iteration 0 (behaviour cloning)"
    if phase == "simulate":
        return "no simulate phase: M = 0" + (" (the RFT baseline)" if method == "rft" else "")
    return f"no {phase} phase"


def iteration_rows(run_id: str, iteration: int, summaries: dict[str, dict], method: str = "eef") -> list[dict]:
    """One row per metric of one iteration (`summaries`: phase -> the phase's summary), each row
    with every column of COLUMNS; KEY_METRICS first, in their order, always present."""
    select, train, evaluate = (summaries.get(p) for p in ("select", "train", "evaluate"))
    simulate, explore = summaries.get("simulate"), summaries.get("explore")
    rows: list[dict] = []

    if select is None:
        rows += [_row(m, None, "select", "no select phase") for m in KEY_METRICS[:5]]
    else:
        kinds = select.get("by_kind") or {}
        what = "behaviour cloning: the expert's successes" if select.get("method") == "bc" else \
            f"{select.get('method', method)} selection"
        rows += [
            _row("examples: initial states", kinds.get("initial", 0), "select", what),
            _row("examples: need-recover states", kinds.get("need_recover", 0), "select"),
            _row("examples: expert successes", kinds.get("expert_success", 0), "select"),
            _row("examples: total", select.get("n_examples", sum(kinds.values())), "select"),
            _row("need-recover states found so far", select.get("need_recover_states", 0), "select",
                 f"distinct expert states, iterations 0..{iteration}"),
        ]

    if simulate is None:
        note = _not_run("simulate", iteration, method)
        rows += [_row("simulations", 0, "simulate", note), _row("simulations that succeeded", 0, "simulate", note)]
    else:
        rows += [
            _row("simulations", simulate.get("requested"), "simulate",
                 "from checkpoints of failed expert trajectories"),
            _row("simulations that succeeded", simulate.get("successes"), "simulate",
                 "this phase's new rollouts" if simulate.get("already_stored") else ""),
        ]

    if train is None:
        rows.append(_row("final training loss", None, "train", "no train phase"))
    elif train.get("reused"):
        rows.append(_row("final training loss", None, "train", f"reuses the adapter {train.get('adapter')}"))
    elif train.get("carried_over"):
        rows.append(_row("final training loss", None, "train",
                         f"no examples to train on: keeps {train.get('adapter')}"))
    else:
        skipped = f", {train['n_skipped']} skipped (see eef-train.json)" if train.get("n_skipped") else ""
        rows.append(_row("final training loss", _round(train.get("final_loss"), 4), "train",
                         f"{train.get('n_examples')} examples{skipped}"))

    if evaluate is None or evaluate.get("reused"):
        note = "no evaluate phase" if evaluate is None else \
            f"reuses {evaluate.get('adapter')}, evaluated by the run that trained it"
        rows += [_row("win rate %", None, "evaluate", note), _row("mean reward", None, "evaluate", note)]
    else:
        on = f"{evaluate.get('n_eval')} {evaluate.get('split', '')} tasks".replace("  ", " ")
        rows += [
            _row("win rate %", _round(100 * evaluate["win_rate"], 1) if evaluate.get("win_rate") is not None
                 else None, "evaluate", on),
            _row("mean reward", _round(evaluate.get("mean_reward"), 3), "evaluate", on),
        ]

    walls = {p: s.get("wall_s") for p, s in summaries.items()}
    total = sum(w for w in walls.values() if isinstance(w, (int, float)))
    rerun = [p for p, s in summaries.items() if s.get("skipped")]
    rows.append(_row("wall time s", round(total, 1), "all",
                     "phases finished earlier: " + ", ".join(rerun) if rerun else "sum of the phases"))

    # details, after the key numbers
    dpo = summaries.get("dpo")  # eef+dpo, eto: DPO after (or, eto, instead of) SFT
    if dpo is not None:
        rows.append(_row("DPO pairs", dpo.get("n_pairs"), "dpo", f"pairs of {dpo.get('pairs_from')}, "
                         f"from the adapter {dpo.get('sft_adapter')}"))
        rows.append(_row("final DPO loss", _round(dpo.get("final_loss"), 4), "dpo",
                         "no pairs: keeps the adapter it started from" if dpo.get("carried_over") else ""))
    if explore is not None:
        rows += [
            _row("explore rollouts", explore.get("requested"), "explore", "from s0 of the training tasks"),
            _row("explore rollouts that succeeded", explore.get("successes"), "explore"),
        ]
    for phase in ("explore", "simulate", "evaluate"):
        s = summaries.get(phase)
        if s is not None and "errors" in s:
            rows.append(_row(f"{phase}: failed episodes", s.get("errors"), phase, "crashed games, retried on rerun"))
    if train is not None and not (train.get("reused") or train.get("carried_over")):
        for key, metric in (("n_optimizer_steps", "optimizer steps"),
                            ("n_supervised_tokens", "supervised tokens"), ("train_s", "training time s")):
            if key in train:
                rows.append(_row(metric, _round(train[key], 1), "train"))
    for phase, wall in walls.items():
        rows.append(_row(f"wall time s: {phase}", wall, phase, "recorded earlier" if summaries[phase].get("skipped")
                         else ""))
    adapter = (dpo or {}).get("adapter") or (train or {}).get("adapter") or (evaluate or {}).get("adapter")
    if adapter:
        rows.append(_row("adapter", adapter, "train", f"run {run_id}, iteration {iteration}"))
    return rows


def _round(value, digits: int):
    return round(value, digits) if isinstance(value, (int, float)) else value


def embedded_png(png: Path, title: str = "win rate per iteration") -> str:
    """A markdown image with the PNG inside it (the UI shows it; no file server needed)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(Path(png).read_bytes()).decode()})"


def summary_markdown(df: pl.DataFrame) -> str:
    """The comparison table (win rate and mean reward first) under the win-rate plot, when there is
    one to draw (none before the first evaluation)."""
    markdown = report.comparison_markdown(df)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return embedded_png(report.win_rate_plot(df, Path(tmp) / "win-rate.png")) + "\n\n" + markdown
    except store.StoreError:
        return markdown


def comparison_page(df: pl.DataFrame, plot: Path, files: list[str], heading: str = "Win rate per iteration",
                    lead: str = "") -> str:
    """The compare artifact (and the experiment run's): heading, a lead line, plot, table, where the
    files are."""
    listed = ", ".join(f"`{f}`" for f in files)
    lead = f"{lead}\n\n" if lead else ""
    return f"## {heading}\n\n{lead}{embedded_png(plot)}\n\n{report.comparison_markdown(df)}\nFiles: {listed}\n"


def headline(df: pl.DataFrame, name: str) -> str:
    """One line: each run's last evaluated iteration with its win rate and mean reward."""
    parts = []
    for run_id in df["run_id"].unique(maintain_order=True).to_list():
        rows = df.filter((pl.col("run_id") == run_id) & pl.col("win_rate").is_not_null()).sort("iteration")
        if rows.is_empty():
            parts.append(f"{run_id}: not evaluated")
            continue
        last = rows.row(-1, named=True)
        parts.append(f"{run_id} ({last['method']}) win rate {100 * last['win_rate']:.1f} %, mean reward "
                     f"{last['mean_reward']:.3f} at iteration {last['iteration']} on {last['n_eval_tasks']} "
                     f"{last['eval_split']} tasks")
    return f"experiment {name}: " + "; ".join(parts)


# --- publishing (inside a flow run) -----------------------------------------------------------------


def publish_iteration(db: str, run_id: str, iteration: int, summaries: dict[str, dict], method: str) -> None:
    """The iteration's table artifact `<run>-it<i>` and the run's markdown summary `<run>-summary`."""
    create_table_artifact(
        iteration_rows(run_id, iteration, summaries, method), key=artifact_key(f"{run_id}-it{iteration}"),
        description=f"Run {run_id}, iteration {iteration}: the key numbers first, then each phase's details.")
    create_markdown_artifact(
        summary_markdown(report.comparison(db, [run_id])), key=artifact_key(f"{run_id}-summary"),
        description=f"Run {run_id}: win rate, mean reward, examples and simulations per iteration.")


# --- flow-run names (what the runs list shows next to the flow's name) ------------------------------


def current_params(model):
    """The running flow's `params`, validated as `model` (a deployment's run passes a dict)."""
    from prefect.runtime import flow_run

    value = flow_run.parameters.get("params")
    return value if isinstance(value, model) else model.model_validate(value or {})


def iteration_run_name(db: str, run_id: str) -> str:
    """`<run> it<i>`: the iteration this flow run is about to do; `<run> done` on a finished run."""
    from eef_tasks import pipeline

    try:
        iteration = pipeline.next_iteration(db, run_id)
    except Exception:  # noqa: BLE001 - an unknown run or store: the flow itself says what is wrong
        return run_id
    return f"{run_id} done" if iteration is None else f"{run_id} it{iteration}"


def compare_run_name(run_ids: list[str]) -> str:
    return "compare " + (" ".join(run_ids) if run_ids else "all runs")


def collect_run_name(expert: str, db: str) -> str:
    return f"collect {expert} into {Path(db).name}"

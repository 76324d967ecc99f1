"""Comparison of runs (methods x iterations): the `run_comparison` view as a table, and its plot.

Plain functions over the store, used by `eef compare` and by the flows' Prefect artifacts:
- `comparison(db, run_ids)`: the view's rows as a polars frame, one row per (run, iteration);
- `comparison_markdown(df)`: the same as a markdown table;
- `win_rate_plot(db_or_df, path)`: win rate and mean reward per iteration, one line per run;
- `best_iteration(df, run_id)`: the reported model, the best iteration on the dev split;
- `run_totals(db, run_ids)`: the view `run_budget`, what each run spent in all.

What the columns mean, and how several eval samples of one task are counted, is written in the
header of `sql/views/80_run_comparison.sql`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import polars as pl

from eef_tasks import store
from eef_tasks.store import StoreError

VIEW = "80_run_comparison"
PLOT_FORMATS = {".png": "png", ".svg": "svg"}

# the iteration's budget (view iteration_budget) after run_comparison's columns
BUDGET_COLUMNS = (
    "rollout_episodes", "rollout_env_steps", "rollout_generated_tokens", "rollout_wall_s",
    "eval_episodes", "train_supervised_tokens", "train_wall_s", "wall_s",
)

_QUERY = f"""
SELECT
    comparison.*,
    {", ".join(f"spent.{column}" for column in BUDGET_COLUMNS)}
FROM run_comparison AS comparison
LEFT JOIN iteration_budget AS spent
    ON  spent.run_id = comparison.run_id
    AND spent.iteration = comparison.iteration
WHERE $run_ids::VARCHAR[] IS NULL
   OR list_contains($run_ids::VARCHAR[], comparison.run_id)
ORDER BY comparison.run_id, comparison.iteration
"""

_TOTALS_QUERY = """
SELECT *
FROM run_budget
WHERE $run_ids::VARCHAR[] IS NULL
   OR list_contains($run_ids::VARCHAR[], run_id)
ORDER BY run_id
"""


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> pl.DataFrame:
    """A query's result as a polars frame, parameters bound by DuckDB (never formatted in)."""
    try:
        return con.sql(sql, params=params).pl()
    except TypeError:  # DuckDB versions whose con.sql takes no parameters
        return pl.from_arrow(con.execute(sql, params).fetch_arrow_table())


def query_frame(db: str | Path, sql: str, params: dict) -> pl.DataFrame:
    """A query over the store's views; a store whose views are older than this eef is migrated
    first (briefly taking the write lock), otherwise the store is only read."""
    with store.reader(db) as con:
        todo, stale = store.pending(con)
        frame = None if (todo or stale) else _frame(con, sql, params)
    if frame is None:
        with store.writer(db) as con:  # migrates, then reads
            frame = _frame(con, sql, params)
    return frame


def run_totals(db: str | Path, run_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per run of the view `run_budget` (what the whole run spent), ordered by run."""
    return query_frame(db, _TOTALS_QUERY, {"run_ids": list(dict.fromkeys(run_ids)) if run_ids else None})


def comparison(db: str | Path, run_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per (run_id, iteration) of `run_comparison`, ordered by run and iteration, with the
    iteration's budget (BUDGET_COLUMNS of the view iteration_budget) after the view's columns.

    `run_ids` keeps only those runs; a run with no iterations in the store is an error that names
    the runs there are. A store whose views are older than this eef is migrated first (briefly
    taking the write lock); otherwise the store is only read.
    """
    run_ids = list(dict.fromkeys(run_ids)) if run_ids else None
    frame = query_frame(db, _QUERY, {"run_ids": run_ids})
    if run_ids:
        found = set(frame["run_id"].to_list())
        missing = [run for run in run_ids if run not in found]
        if missing:
            with store.reader(db) as con:
                known = [row[0] for row in con.execute(
                    "SELECT DISTINCT run_id FROM run_comparison ORDER BY run_id"
                ).fetchall()]
            raise StoreError(
                f"no iterations of run(s) {', '.join(map(repr, missing))} in {db} (no policy "
                f"trajectories or training examples); runs there: {', '.join(known) or 'none'}"
            )
    return frame


# --- the table ---------------------------------------------------------------------------------


def _count(value) -> str:
    return "-" if value is None else str(value)


def _percent(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _reward(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _seconds(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0f}"


def _iteration(value) -> str:
    return "0 (BC)" if value == 0 else str(value)


# (column of the view, header, formatter): what `eef compare` and the markdown table show
DISPLAY: list[tuple[str, str, Callable[[object], str]]] = [
    ("run_id", "run", str),
    ("method", "method", _count),
    ("n_sims", "M", _count),
    ("iteration", "iteration", _iteration),
    ("n_examples", "examples", _count),
    ("n_initial", "initial", _count),
    ("n_need_recover", "need-recover", _count),
    ("n_expert_success", "expert success", _count),
    ("n_need_recover_found", "need-recover found", _count),
    ("n_simulations", "simulations", _count),
    ("n_explore", "explore", _count),
    ("explore_win_rate", "explore win %", _percent),
    ("eval_split", "eval split", _count),
    ("n_eval_tasks", "eval tasks", _count),
    ("win_rate", "win rate %", _percent),
    ("mean_reward", "mean reward", _reward),
    # the iteration's budget (view iteration_budget): rollouts are explore + simulate
    ("rollout_episodes", "rollout episodes", _count),
    ("rollout_env_steps", "rollout env steps", _count),
    ("rollout_generated_tokens", "rollout gen tokens", _count),
    ("rollout_wall_s", "rollout s", _seconds),
    ("train_supervised_tokens", "train tokens", _count),
    ("wall_s", "wall s", _seconds),
    ("search", "search", _count),
    ("n_dpo_pairs", "DPO pairs", _count),
]


def display_rows(df: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of DISPLAY's columns ('-' for no value)."""
    headers = [header for _, header, _ in DISPLAY]
    rows = [
        [fmt(record[column]) for column, _, fmt in DISPLAY]
        for record in df.iter_rows(named=True)
    ]
    return headers, rows


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


# the markdown table (Prefect artifacts) leads with the results: a browser cuts a wide table at its right
MARKDOWN_FIRST = ("run", "iteration", "win rate %", "mean reward")


def comparison_markdown(df: pl.DataFrame) -> str:
    """A markdown table of the comparison (for Prefect artifacts), with the best dev iterations:
    DISPLAY's columns, MARKDOWN_FIRST's first."""
    headers, rows = display_rows(df)
    order = [headers.index(h) for h in MARKDOWN_FIRST] + [i for i, h in enumerate(headers) if h not in MARKDOWN_FIRST]
    headers, rows = [headers[i] for i in order], [[row[i] for i in order] for row in rows]
    text_columns = {"run", "method", "eval split"}
    lines = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join(":---" if h in text_columns else "---:" for h in headers) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    if df.is_empty():
        lines.append("\n_No runs to compare._")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append("Win rates in % (share of tasks with reward 1, a task's samples averaged first: view "
                 "win_rates); eval split is dev when the iteration was evaluated on dev, else test.")
    lines.append("")
    lines += [f"- {_md_cell(line)}" for line in best_iteration_lines(df)]
    return "\n".join(lines) + "\n"


# --- model choice ------------------------------------------------------------------------------


def best_iteration(df: pl.DataFrame, run_id: str) -> int | None:
    """The iteration of `run_id` with the highest dev win rate (ties: the earlier iteration).

    METHOD.md step 2.8: the reported model is the best iteration on the dev split. None when the
    run has no dev evaluation (test results are never used to choose).
    """
    rows = df.filter(pl.col("run_id") == run_id)
    if rows.is_empty():
        raise StoreError(f"run {run_id!r} is not in the comparison")
    dev = pl.col("dev_win_rate").cast(pl.Float64)
    evaluated = rows.filter(dev.is_not_null() & dev.is_not_nan())
    if evaluated.is_empty():
        return None
    best = evaluated.sort(["dev_win_rate", "iteration"], descending=[True, False]).row(0, named=True)
    return int(best["iteration"])


def best_iteration_lines(df: pl.DataFrame) -> list[str]:
    """One sentence per run: its best dev iteration and that iteration's dev and test results."""
    lines = []
    for run_id in df["run_id"].unique(maintain_order=True).to_list():
        rows = df.filter(pl.col("run_id") == run_id)
        method = rows["method"][0]
        iteration = best_iteration(df, run_id)
        if iteration is None:
            lines.append(f"{run_id} ({method}): no dev evaluation, no best iteration")
            continue
        row = rows.filter(pl.col("iteration") == iteration).row(0, named=True)
        text = (f"{run_id} ({method}): best iteration on dev {_iteration(iteration)}, "
                f"dev win rate {_percent(row['dev_win_rate'])} %, mean reward "
                f"{_reward(row['dev_mean_reward'])}")
        if row["test_win_rate"] is not None:
            text += (f"; test win rate {_percent(row['test_win_rate'])} %, mean reward "
                     f"{_reward(row['test_mean_reward'])}")
        lines.append(text)
    return lines


# --- the plot ----------------------------------------------------------------------------------


def check_plot_path(path: str | Path) -> str:
    """The image format of `path` from its suffix ('png' or 'svg'), or a UserError."""
    fmt = PLOT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise StoreError(f"plot file {path}: the name must end in .png or .svg")
    return fmt


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
_LINESTYLES = {"eef": "-", "rft": "--"}


def win_rate_plot(
    db_or_df: str | Path | pl.DataFrame,
    path: str | Path,
    run_ids: Sequence[str] | None = None,
    *,
    split: str | None = None,
) -> Path:
    """Plot win rate (top) and mean reward (bottom) per iteration, one line per run.

    `db_or_df` is a store or a frame from `comparison`. `split` None plots the headline
    evaluation (dev, else test); 'dev' or 'test' plots that split. The format follows the suffix
    of `path` (.png or .svg); the file is written next to it and renamed into place.
    """
    fmt = check_plot_path(path)
    if split not in (None, "dev", "test"):
        raise StoreError(f"split must be dev or test, not {split!r}")
    if isinstance(db_or_df, pl.DataFrame):
        df = db_or_df
        if run_ids:
            df = df.filter(pl.col("run_id").is_in(list(run_ids)))
    else:
        df = comparison(db_or_df, run_ids)
    win_col, reward_col = ("win_rate", "mean_reward") if split is None else (
        f"{split}_win_rate", f"{split}_mean_reward")
    points = df.filter(pl.col(win_col).is_not_null()).sort(["run_id", "iteration"])
    if points.is_empty():
        where = "dev or test" if split is None else split
        raise StoreError(f"nothing to plot: no eval trajectories on {where} tasks for these runs")

    # the Agg canvas on a bare Figure: files only, no pyplot and no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_win, ax_reward = fig.subplots(2, 1, sharex=True)
    for index, run_id in enumerate(points["run_id"].unique(maintain_order=True).to_list()):
        rows = points.filter(pl.col("run_id") == run_id)
        method = rows["method"][0]
        style = {
            "marker": _MARKERS[index % len(_MARKERS)],
            "linestyle": _LINESTYLES.get(method, "-."),
            "color": f"C{index % 10}",
            "label": f"{run_id} ({method})",
        }
        iterations = rows["iteration"].to_list()
        ax_win.plot(iterations, [100 * v for v in rows[win_col].to_list()], **style)
        ax_reward.plot(iterations, rows[reward_col].to_list(), **style)

    ticks = sorted(set(points["iteration"].to_list()))
    ax_reward.set_xticks(ticks, ["BC" if t == 0 else str(t) for t in ticks])
    ax_reward.set_xlabel("iteration (0 = behaviour cloning)")
    ax_win.set_ylabel("win rate (%)")
    ax_win.set_ylim(-2, 102)
    ax_reward.set_ylabel("mean reward")
    ax_reward.set_ylim(-0.02, 1.02)
    for ax in (ax_win, ax_reward):
        ax.grid(True, alpha=0.3)
    which = "dev split, else test" if split is None else f"{split} split"
    ax_win.set_title(f"Evaluation per iteration ({which})")
    ax_win.legend(title="run (method)", loc="best", fontsize="small")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    metadata = {"Date": None} if fmt == "svg" else None
    fig.savefig(partial, format=fmt, dpi=150, metadata=metadata)
    partial.replace(path)
    return path

"""Win rate per unit of expert cost (`eef compare --cost`): what each run's expert data cost (view
`run_expert_cost`) beside the win rate of its reported iteration (the best on dev, METHOD.md step
2.8, from `report.comparison`), and the plot of win rate against expert spend.

`cost_table(db, run_ids)` has one row per run:
  run_id, method, experts            the run and the experts whose data it learns from (comma-separated)
  n_expert_trajectories, expert_tokens, expert_cost_usd
                                     every expert trajectory on the run's training tasks (failures
                                     included: they were paid for) and their tokens and cost
  best_iteration, win_rate, mean_reward
                                     the run's best dev iteration and its headline evaluation (NULL
                                     without a dev evaluation)
  win_rate_per_usd                   win-rate points (%) per dollar of expert data (NULL when the data
                                     has no cost or the run no dev evaluation)
Costs are what `expert_cost` says they are: measured for an LLM expert, a stated model for the
synthetic experts (README, "Expert cost").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from eef_tasks import report, store
from eef_tasks.store import StoreError

_RUN_COST_SQL = """
SELECT run_id, method, n_trajectories, tokens, cost_usd
FROM run_expert_cost
WHERE expert IS NULL
ORDER BY run_id
"""

_RUN_EXPERTS_SQL = """
SELECT run_id, string_agg(expert, ',' ORDER BY expert) AS experts
FROM run_expert_cost
WHERE expert IS NOT NULL
GROUP BY run_id
"""

COLUMNS = ("run_id", "method", "experts", "n_expert_trajectories", "expert_tokens", "expert_cost_usd",
           "best_iteration", "win_rate", "mean_reward", "win_rate_per_usd")


def cost_table(db: str | Path, run_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per run of `report.comparison(db, run_ids)`: its expert spend and reported win rate."""
    runs = report.comparison(db, run_ids)  # migrates an old store; names unknown runs
    with store.reader(db) as con:
        spend = {row[0]: row for row in con.execute(_RUN_COST_SQL).fetchall()}
        experts = dict(con.execute(_RUN_EXPERTS_SQL).fetchall())
    rows = []
    for run_id in runs["run_id"].unique(maintain_order=True).to_list():
        method = runs.filter(pl.col("run_id") == run_id)["method"][0]
        _, _, n_trajectories, tokens, cost = spend.get(run_id, (run_id, method, 0, None, None))
        best = report.best_iteration(runs, run_id)
        win_rate = mean_reward = None
        if best is not None:
            row = runs.filter((pl.col("run_id") == run_id) & (pl.col("iteration") == best)).row(0, named=True)
            win_rate, mean_reward = row["dev_win_rate"], row["dev_mean_reward"]
        per_usd = 100 * win_rate / cost if win_rate is not None and cost else None
        rows.append(dict(zip(COLUMNS, (run_id, method, experts.get(run_id), n_trajectories, tokens, cost, best,
                                       win_rate, mean_reward, per_usd), strict=True)))
    schema = {"run_id": pl.String, "method": pl.String, "experts": pl.String, "n_expert_trajectories": pl.Int64,
              "expert_tokens": pl.Int64, "expert_cost_usd": pl.Float64, "best_iteration": pl.Int64,
              "win_rate": pl.Float64, "mean_reward": pl.Float64, "win_rate_per_usd": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _money(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def display_rows(df: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the cost table ('-' for no value)."""
    headers = ["run", "method", "experts", "expert trajectories", "expert tokens", "expert $", "best dev iteration",
               "win rate %", "win rate % per $"]
    rows = []
    for r in df.iter_rows(named=True):
        rows.append([
            r["run_id"], str(r["method"]), r["experts"] or "-", str(r["n_expert_trajectories"]),
            "-" if r["expert_tokens"] is None else str(r["expert_tokens"]), _money(r["expert_cost_usd"]),
            "-" if r["best_iteration"] is None else str(r["best_iteration"]),
            "-" if r["win_rate"] is None else f"{100 * r['win_rate']:.1f}",
            "-" if r["win_rate_per_usd"] is None else f"{r['win_rate_per_usd']:.2f}",
        ])
    return headers, rows


def cost_plot(df: pl.DataFrame, path: str | Path) -> Path:
    """Win rate (best dev iteration) against expert spend, one point per run; .png or .svg."""
    fmt = report.check_plot_path(path)
    points = df.filter(pl.col("win_rate").is_not_null() & pl.col("expert_cost_usd").is_not_null())
    if points.is_empty():
        raise StoreError("nothing to plot: no run has both a dev evaluation and costed expert data")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for index, r in enumerate(points.iter_rows(named=True)):
        ax.scatter([r["expert_cost_usd"]], [100 * r["win_rate"]], color=f"C{index % 10}", marker="o",
                   label=f"{r['run_id']} ({r['method']}; {r['experts'] or '-'})")
    ax.set_xlabel("expert spend on the run's training tasks ($)")
    ax.set_ylabel("win rate (%), best dev iteration")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.set_title("Win rate against expert spend")
    ax.legend(loc="best", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
    partial.replace(path)
    return path

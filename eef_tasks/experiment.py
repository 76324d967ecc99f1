"""The seeded experiment (issue 11): EEF vs RFT vs RFT×k over seeds, at equal rollout budgets, with
paired bootstrap intervals on the win-rate differences. Plain functions over the store; the flow
that runs the runs is `flows/seeds.py` (`eef experiment`), and `eef compare --group` reads a group.

- `equal_budget_k`, `rollout_plan`: k of RFT×k, so that its explore episodes per iteration (k per
  training task) match EEF's explore + simulate episodes (one per training task plus one per
  checkpoint of the failed expert trajectories: view expert_checkpoints), computed before running.
- `run_name`, `group_runs`: a group is the runs called NAME-<label>-s<seed> (labels eef, rft, rftk;
  any other label, e.g. a baseline, joins as one more method).
- `group_report`: per run, the iteration chosen on dev (report.best_iteration) and its test results
  and budget (view run_budget); per method, means over seeds; per method other than eef, the
  paired bootstrap interval of EEF's test win rate minus that method's (`paired_bootstrap`).
- `write_results`: results/<name>/ with results.csv, differences.csv, results.md, win_rates.png.
- Incomplete runs: a run whose last evaluated iteration is below its configured `iterations` (it
  stopped, or is still running) is chosen among the iterations it has, and is flagged: `complete`
  per run, `n_incomplete` per method, `incomplete_runs` per difference, a warning in results.md.

What the bootstrap resamples: each replicate draws the seeds with replacement (as many as there
are) and, independently, the test tasks with replacement (as many as there are, the same draw for
every seed and both methods: the design is paired and crossed), and takes the mean, over the drawn
seeds and tasks, of the per-task difference (EEF's task win rate minus the other method's, each at
its own dev-chosen iteration of the same seed). The interval is the 2.5 and 97.5 percentiles of
BOOTSTRAP_REPLICATES replicates drawn by numpy's default generator seeded with BOOTSTRAP_SEED.
The seeds' choice of iteration is not redone inside a replicate (it uses dev, not test).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from eef_tasks import report, store
from eef_tasks.store import StoreError

LABELS = {"eef": "EEF", "rft": "RFT", "rftk": "RFT×k"}
REFERENCE = "eef"
CHOOSE_SPLIT, REPORT_SPLIT = "dev", "test"
BOOTSTRAP_REPLICATES = 10_000
BOOTSTRAP_SEED = 0
MAX_K = 16  # RunConfig.samples' bound
RESULT_FILES = ("results.csv", "differences.csv", "results.md", "win_rates.png")

# the run_budget columns the results carry per run (and average per method)
BUDGET_COLUMNS = (
    "rollout_episodes_per_iteration", "rollout_episodes", "rollout_env_steps", "rollout_generated_tokens",
    "eval_episodes", "train_supervised_tokens", "wall_s",
)


# --- k of RFT×k ----------------------------------------------------------------------------------


def equal_budget_k(n_train: int, n_checkpoints: int) -> int:
    """k such that k rollouts per training task ≈ EEF's n_train + n_checkpoints episodes per
    iteration: (n_train + n_checkpoints) / n_train rounded half up, at least 1, at most MAX_K."""
    if n_train < 1:
        raise StoreError("k of RFT×k needs at least one training task")
    if n_checkpoints < 0:
        raise StoreError(f"n_checkpoints must be >= 0, not {n_checkpoints}")
    return max(1, min(MAX_K, math.floor((n_train + n_checkpoints) / n_train + 0.5)))


@dataclass(frozen=True)
class RolloutPlan:
    """An EEF run's rollouts per iteration, known before it runs, and the k that matches them."""

    run_id: str
    n_train: int
    n_checkpoints: int

    @property
    def eef_episodes(self) -> int:
        return self.n_train + self.n_checkpoints

    @property
    def k(self) -> int:
        return equal_budget_k(self.n_train, self.n_checkpoints)


_CHECKPOINTS = """
SELECT count(*)
FROM expert_checkpoints
WHERE run_id = $run_id
  AND list_contains($train_tasks::VARCHAR[], task_id)
"""


def rollout_plan(db: str | Path, run_id: str) -> RolloutPlan:
    """The plan of a registered EEF run (uniform search): its training tasks (runs.config) and the
    checkpoints the simulate phase will start from on them (view expert_checkpoints)."""
    with store.reader(db) as con:
        row = store.first_row(con, "SELECT config, method FROM runs WHERE run_id = $r", {"r": run_id})
        if row is None or row[0] is None:
            raise StoreError(f"no registered run {run_id!r} in {db}")
        config = json.loads(row[0])["config"]
        if row[1] != "eef" or config.get("search", "uniform") != "uniform":
            raise StoreError(f"run {run_id!r} is not an eef run with uniform checkpoints")
        train = list(config["train_tasks"])
        n_checkpoints = store.first_row(con, _CHECKPOINTS, {"run_id": run_id, "train_tasks": train})[0]
    return RolloutPlan(run_id, len(train), int(n_checkpoints))


# --- the group of runs ---------------------------------------------------------------------------


def run_name(name: str, label: str, seed: int) -> str:
    return f"{name}-{label}-s{seed}"


def group_runs(db: str | Path, name: str) -> pl.DataFrame:
    """The runs of group `name` (NAME-<label>-s<seed>): run_id, label, seed, method, samples,
    iterations (as configured; null when the stored config does not say)."""
    pattern = re.compile(re.escape(name) + r"-(?P<label>[A-Za-z0-9][A-Za-z0-9.+_-]*?)-s(?P<seed>\d+)")
    with store.reader(db) as con:
        rows = con.execute("SELECT run_id, method, config FROM runs ORDER BY run_id").fetchall()
    found = []
    for run_id, method, config in rows:
        match = pattern.fullmatch(run_id)
        if match is None:
            continue
        settings = json.loads(config).get("config", {}) if config else {}
        iterations = settings.get("iterations")
        found.append({"run_id": run_id, "label": match["label"], "seed": int(match["seed"]),
                      "method": method, "samples": int(settings.get("samples", 1)),
                      "iterations": None if iterations is None else int(iterations)})
    if not found:
        raise StoreError(f"no runs named {name}-<method>-s<seed> in {db}; runs there: "
                         + (", ".join(r[0] for r in rows) or "none"))
    frame = pl.DataFrame(found, schema={"run_id": pl.String, "label": pl.String, "seed": pl.Int64,
                                        "method": pl.String, "samples": pl.Int64, "iterations": pl.Int64})
    if REFERENCE not in frame["label"].to_list():
        raise StoreError(f"group {name!r} has no {name}-{REFERENCE}-s<seed> run to compare against")
    return frame.sort("label", "seed")


def method_name(label: str, samples: int) -> str:
    """EEF, RFT, RFT×4 (k filled in), or the label itself."""
    if label == "rftk":
        return f"RFT×{samples}"
    return LABELS.get(label, label)


_OUTCOMES = """
SELECT run_id, iteration, split, task_id, win_rate, mean_reward
FROM eval_outcomes
WHERE list_contains($run_ids::VARCHAR[], run_id)
  AND split IN ('dev', 'test')
ORDER BY run_id, iteration, split, task_id
"""

_BUDGETS = """
SELECT *
FROM run_budget
WHERE list_contains($run_ids::VARCHAR[], run_id)
"""


# --- the bootstrap -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def paired_bootstrap(differences: np.ndarray, n_boot: int = BOOTSTRAP_REPLICATES,
                     rng_seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean of a seeds × tasks matrix of paired differences and its 95 % percentile interval,
    resampling seeds and tasks (module docstring)."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 2 or d.size == 0:
        raise StoreError("the bootstrap needs a seeds x tasks matrix with at least one seed and one task")
    if np.isnan(d).any():
        raise StoreError("the bootstrap's differences have missing values")
    n_seeds, n_tasks = d.shape
    rng = np.random.default_rng(rng_seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    tasks = rng.integers(0, n_tasks, size=(n_boot, n_tasks))
    # a replicate's mean over its drawn grid: how often each seed and task was drawn, as weights
    seed_counts = np.zeros((n_boot, n_seeds))
    np.add.at(seed_counts, (np.arange(n_boot)[:, None], seeds), 1.0)
    task_counts = np.zeros((n_boot, n_tasks))
    np.add.at(task_counts, (np.arange(n_boot)[:, None], tasks), 1.0)
    stats = np.einsum("bs,st,bt->b", seed_counts, d, task_counts) / (n_seeds * n_tasks)
    low, high = np.quantile(stats, [0.025, 0.975])
    return Interval(float(d.mean()), float(low), float(high))


# --- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupReport:
    name: str
    runs: pl.DataFrame          # one row per run: label, seed, chosen iteration, dev/test results, budget
    methods: pl.DataFrame       # one row per method: means over seeds
    differences: pl.DataFrame   # one row per method other than eef: EEF minus it, with the interval
    n_boot: int
    rng_seed: int


def _split_rates(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per (run, iteration): dev_win_rate, n_dev_tasks, test_win_rate, test_mean_reward, n_test_tasks."""
    per_split = outcomes.group_by("run_id", "iteration", "split").agg(
        pl.col("win_rate").mean(), pl.col("mean_reward").mean(), pl.len().alias("n_tasks"))
    keys = outcomes.select("run_id", "iteration").unique()
    for split in (CHOOSE_SPLIT, REPORT_SPLIT):
        part = per_split.filter(pl.col("split") == split).select(
            "run_id", "iteration", pl.col("win_rate").alias(f"{split}_win_rate"),
            pl.col("mean_reward").alias(f"{split}_mean_reward"), pl.col("n_tasks").alias(f"n_{split}_tasks"))
        keys = keys.join(part, on=["run_id", "iteration"], how="left")
    return keys.sort("run_id", "iteration")


def group_report(db: str | Path, name: str, *, n_boot: int = BOOTSTRAP_REPLICATES,
                 rng_seed: int = BOOTSTRAP_SEED) -> GroupReport:
    """The group's results (module docstring); a StoreError naming the run that lacks a dev or
    test evaluation."""
    runs = group_runs(db, name)
    run_ids = runs["run_id"].to_list()
    outcomes = report.query_frame(db, _OUTCOMES, {"run_ids": run_ids})
    rates = _split_rates(outcomes)
    chosen = []
    for run_id in run_ids:
        rows = rates.filter(pl.col("run_id") == run_id)
        iteration = report.best_iteration(rows, run_id) if not rows.is_empty() else None
        if iteration is None:
            raise StoreError(f"run {run_id!r} has no {CHOOSE_SPLIT} evaluation to choose its iteration on")
        row = rows.filter(pl.col("iteration") == iteration).row(0, named=True)
        if row[f"{REPORT_SPLIT}_win_rate"] is None:
            raise StoreError(f"run {run_id!r}: its {CHOOSE_SPLIT}-chosen iteration {iteration} has no "
                             f"{REPORT_SPLIT} evaluation (run it with report_split={REPORT_SPLIT})")
        last = int(rows.filter(pl.col(f"{CHOOSE_SPLIT}_win_rate").is_not_null())["iteration"].max())
        chosen.append({"run_id": run_id, **{k: row[k] for k in rates.columns if k != "run_id"},
                       "last_evaluated_iteration": last})
    chosen_frame = pl.DataFrame(chosen).rename({"iteration": "chosen_iteration"})
    budgets = report.query_frame(db, _BUDGETS, {"run_ids": run_ids}).select("run_id", *BUDGET_COLUMNS)
    table = (runs.join(chosen_frame, on="run_id", how="left").join(budgets, on="run_id", how="left")
             .with_columns(pl.struct("label", "samples").map_elements(
                 lambda r: method_name(r["label"], r["samples"]), return_dtype=pl.String).alias("method_name"),
                 (pl.col("iterations").is_null() | (pl.col("last_evaluated_iteration") >= pl.col("iterations")))
                 .alias("complete")))
    table = table.select("method_name", "label", "seed", "run_id", "method", "samples", "iterations",
                         "last_evaluated_iteration", "complete", "chosen_iteration",
                         f"{CHOOSE_SPLIT}_win_rate", f"n_{CHOOSE_SPLIT}_tasks", f"{REPORT_SPLIT}_win_rate",
                         f"{REPORT_SPLIT}_mean_reward", f"n_{REPORT_SPLIT}_tasks", *BUDGET_COLUMNS)
    order = {label: i for i, label in enumerate([REFERENCE, "rft", "rftk"])}
    table = table.sort(pl.col("label").replace_strict(order, default=len(order), return_dtype=pl.Int64),
                       "label", "seed")
    methods = (table.group_by("label", maintain_order=True).agg(
        pl.col("method_name").first(), pl.len().alias("n_seeds"),
        pl.col("seed").sort().alias("seeds"), (~pl.col("complete")).sum().cast(pl.Int64).alias("n_incomplete"),
        pl.col(f"{CHOOSE_SPLIT}_win_rate").mean(), pl.col(f"{REPORT_SPLIT}_win_rate").mean(),
        pl.col(f"{REPORT_SPLIT}_win_rate").std().alias(f"{REPORT_SPLIT}_win_rate_sd"),
        pl.col(f"{REPORT_SPLIT}_mean_reward").mean(),
        *[pl.col(c).cast(pl.Float64).mean() for c in BUDGET_COLUMNS])
        .select("method_name", "label", "n_seeds", "seeds", pl.exclude("method_name", "label", "n_seeds", "seeds")))
    differences = _differences(outcomes, table, n_boot, rng_seed)
    return GroupReport(name, table, methods, differences, n_boot, rng_seed)


def _task_values(outcomes: pl.DataFrame, run_id: str, iteration: int) -> dict[str, float]:
    rows = outcomes.filter((pl.col("run_id") == run_id) & (pl.col("iteration") == iteration)
                           & (pl.col("split") == REPORT_SPLIT))
    return dict(zip(rows["task_id"].to_list(), rows["win_rate"].to_list(), strict=True))


def _differences(outcomes: pl.DataFrame, table: pl.DataFrame, n_boot: int, rng_seed: int) -> pl.DataFrame:
    """EEF minus each other method: seeds both ran, test tasks every involved evaluation has."""
    def values(label: str) -> dict[int, dict[str, float]]:
        return {r["seed"]: _task_values(outcomes, r["run_id"], r["chosen_iteration"])
                for r in table.filter(pl.col("label") == label).iter_rows(named=True)}

    reference = values(REFERENCE)
    incomplete = {(r["label"], r["seed"]): r["run_id"] for r in table.iter_rows(named=True) if not r["complete"]}
    rows = []
    for label in table["label"].unique(maintain_order=True).to_list():
        if label == REFERENCE:
            continue
        other = values(label)
        seeds = sorted(set(reference) & set(other))
        if not seeds:
            continue
        tasks = sorted(set.intersection(*(set(reference[s]) & set(other[s]) for s in seeds)))
        if not tasks:
            raise StoreError(f"{REFERENCE} and {label} share no {REPORT_SPLIT} task evaluated in every seed")
        d = np.array([[reference[s][t] - other[s][t] for t in tasks] for s in seeds])
        interval = paired_bootstrap(d, n_boot, rng_seed)
        name = table.filter(pl.col("label") == label)["method_name"][0]
        partial = [incomplete[(lab, s)] for s in seeds for lab in (REFERENCE, label) if (lab, s) in incomplete]
        rows.append({"comparison": f"EEF − {name}", "label": label, "n_seeds": len(seeds), "n_tasks": len(tasks),
                     "difference": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
                     "verdict": verdict(interval), "incomplete_runs": ",".join(partial)})
    schema = {"comparison": pl.String, "label": pl.String, "n_seeds": pl.Int64, "n_tasks": pl.Int64,
              "difference": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "verdict": pl.String,
              "incomplete_runs": pl.String}
    return pl.DataFrame(rows, schema=schema)


def verdict(interval: Interval) -> str:
    """What the interval says, in words (a null or negative result is said as such)."""
    if interval.low > 0:
        return "EEF higher (interval above 0)"
    if interval.high < 0:
        return "EEF lower (interval below 0)"
    return "no difference shown (interval contains 0)"


def display_frames(result: GroupReport) -> list[tuple[str, pl.DataFrame]]:
    """(title, frame) of the methods, the differences and the runs as `eef compare --group` prints
    them: win rates and differences in % (percentage points), rounded to 0.1."""
    percent = (f"{CHOOSE_SPLIT}_win_rate", f"{REPORT_SPLIT}_win_rate", f"{REPORT_SPLIT}_win_rate_sd",
               "difference", "ci_low", "ci_high")

    def shown(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns([(pl.col(c) * 100).round(1) for c in percent if c in frame.columns])

    methods = result.methods.with_columns(pl.col("seeds").list.eval(pl.element().cast(pl.String)).list.join(","))
    return [
        (f"{result.name}: per method, mean over seeds ({REPORT_SPLIT} win rate at the {CHOOSE_SPLIT}-chosen "
         "iteration, %)", shown(methods)),
        (f"EEF minus each baseline (percentage points; 95 % paired bootstrap over seeds and tasks, "
         f"{result.n_boot} replicates, RNG seed {result.rng_seed})", shown(result.differences)),
        ("runs", shown(result.runs)),
    ]


# --- the results folder --------------------------------------------------------------------------


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _num(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def results_markdown(result: GroupReport, command: str | None = None) -> str:
    """results.md: per method, per run, the differences with their intervals, how they were computed."""
    c, r = CHOOSE_SPLIT, REPORT_SPLIT
    lines = [f"# Experiment {result.name}", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    partial = result.runs.filter(~pl.col("complete"))
    if not partial.is_empty():
        lines += ["**Incomplete runs**: " + "; ".join(
            f"{x['run_id']} evaluated up to iteration {x['last_evaluated_iteration']} of {x['iterations']}"
            for x in partial.iter_rows(named=True)) + ". Each is chosen among the iterations it has, so a "
            "comparison involving it (marked below) is not the experiment's design.", ""]
    lines += [f"Test win rate of each run's iteration chosen on {c} (its best {c} win rate, ties to the earlier), "
              f"mean over seeds; win rates in % (share of tasks with reward 1, a task's samples averaged first).", ""]
    lines += _table(
        ["method", "seeds", f"{c} win %", f"{r} win %", f"{r} win % sd", f"{r} mean reward",
         "rollout episodes / iteration", "rollout env steps", "rollout generated tokens", "train tokens", "wall s"],
        [[m["method_name"], ",".join(map(str, m["seeds"])) + (f" ({m['n_incomplete']} incomplete)" if m["n_incomplete"] else ""),
          _pct(m[f"{c}_win_rate"]), _pct(m[f"{r}_win_rate"]),
          _pct(m[f"{r}_win_rate_sd"]), _num(m[f"{r}_mean_reward"], 3), _num(m["rollout_episodes_per_iteration"], 1),
          _num(m["rollout_env_steps"]), _num(m["rollout_generated_tokens"]), _num(m["train_supervised_tokens"]),
          _num(m["wall_s"])] for m in result.methods.iter_rows(named=True)])
    lines += ["", f"## {REFERENCE.upper()} minus the baselines ({r} win rate, percentage points)", ""]
    if result.differences.is_empty():
        lines.append("_No baseline run shares a seed with an EEF run._")
    else:
        lines += _table(["comparison", "seeds", "tasks", "difference", "95 % interval", "verdict"],
                        [[d["comparison"], str(d["n_seeds"]), str(d["n_tasks"]), _pct(d["difference"]),
                          f"[{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]",
                          d["verdict"] + (f"; incomplete: {d['incomplete_runs']}" if d["incomplete_runs"] else "")]
                         for d in result.differences.iter_rows(named=True)])
    lines += ["", f"Paired bootstrap, {result.n_boot:,} replicates, numpy default_rng({result.rng_seed}): each "
              "replicate resamples the seeds with replacement and, independently, the test tasks with "
              "replacement (one draw shared by every seed and both methods), and averages the per-task "
              "difference of win rates over the drawn seeds and tasks; the interval is its 2.5 and 97.5 "
              f"percentiles. Iterations are chosen on {c} once, not per replicate.", "", "## Runs", ""]
    lines += _table(
        ["run", "method", "seed", "iterations evaluated", "chosen iteration", f"{c} win %", f"{r} win %", f"{r} mean reward",
         f"{r} tasks", "rollout episodes / iteration", "rollout episodes", "rollout env steps",
         "rollout generated tokens", "eval episodes", "train tokens", "wall s"],
        [[x["run_id"], x["method_name"], str(x["seed"]),
          f"{x['last_evaluated_iteration']} of {'?' if x['iterations'] is None else x['iterations']}"
          + ("" if x["complete"] else " (incomplete)"), str(x["chosen_iteration"]), _pct(x[f"{c}_win_rate"]),
          _pct(x[f"{r}_win_rate"]), _num(x[f"{r}_mean_reward"], 3), _num(x[f"n_{r}_tasks"]),
          _num(x["rollout_episodes_per_iteration"], 1), _num(x["rollout_episodes"]), _num(x["rollout_env_steps"]),
          _num(x["rollout_generated_tokens"]), _num(x["eval_episodes"]), _num(x["train_supervised_tokens"]),
          _num(x["wall_s"])] for x in result.runs.iter_rows(named=True)])
    lines += ["", "Budgets from the views iteration_budget and run_budget: rollouts are the explore and simulate "
              "episodes that feed training; a run that reused its seed's behaviour-cloning adapter has no "
              "behaviour-cloning cost of its own (it is in the EEF run's)."]
    return "\n".join(lines) + "\n"


def results_plot(result: GroupReport, path: str | Path) -> Path:
    """win_rates.png: test win rate per method (mean bar, one dot per seed), and each difference
    EEF − method with its 95 % interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rate, ax_diff = fig.subplots(1, 2, width_ratios=[3, 2])
    names = result.methods["method_name"].to_list()
    for i, m in enumerate(result.methods.iter_rows(named=True)):
        ax_rate.bar(i, 100 * (m[f"{REPORT_SPLIT}_win_rate"] or 0.0), color=f"C{i}", alpha=0.6)
        seeds = result.runs.filter(pl.col("label") == m["label"])
        values = [100 * v for v in seeds[f"{REPORT_SPLIT}_win_rate"].to_list()]
        ax_rate.scatter([i] * len(values), values, color="black", s=14, zorder=3)
    ax_rate.set_xticks(range(len(names)), names)
    ax_rate.set_ylim(0, 100)
    ax_rate.set_ylabel(f"{REPORT_SPLIT} win rate (%)")
    ax_rate.set_title(f"{result.name}: {REPORT_SPLIT} win rate at the {CHOOSE_SPLIT}-chosen iteration")
    diffs = result.differences
    for i, d in enumerate(diffs.iter_rows(named=True)):
        centre = 100 * d["difference"]
        ax_diff.errorbar(i, centre, yerr=[[centre - 100 * d["ci_low"]], [100 * d["ci_high"] - centre]],
                         fmt="o", capsize=5, color="C0")
    ax_diff.axhline(0, color="grey", linewidth=1)
    ax_diff.set_xticks(range(diffs.height), diffs["comparison"].to_list())
    ax_diff.set_xlim(-0.5, max(diffs.height, 1) - 0.5)
    ax_diff.set_ylabel("difference (percentage points)")
    ax_diff.set_title("95 % paired bootstrap interval")
    for ax in (ax_rate, ax_diff):
        ax.grid(True, axis="y", alpha=0.3)
    path = Path(path)
    fig.savefig(path, format="png", dpi=150)
    return path


def write_results(result: GroupReport, out_dir: str | Path, command: str | None = None) -> Path:
    """results.csv (per run), differences.csv, results.md, win_rates.png in `out_dir`, replaced
    whole: written in a folder beside it, then moved into place (a failure leaves the old one)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        result.runs.write_csv(partial / "results.csv")
        result.differences.write_csv(partial / "differences.csv")
        (partial / "results.md").write_text(results_markdown(result, command))
        results_plot(result, partial / "win_rates.png")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out

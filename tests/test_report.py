"""The comparison of runs: the run_comparison view against hand-computed numbers, the markdown
table, the best dev iteration, the win-rate plot, and `eef compare` through the real script."""

import csv
import io
import json
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from eef_tasks import report, selection, store
from eef_tasks.testing import synthetic_store
from store_builders import StoreBuilder

EEF = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def register(con, run_id, n_sims, config=None):
    con.execute(
        "INSERT INTO runs (run_id, n_sims, config) VALUES ($r, $m, $c::JSON)",
        {"r": run_id, "m": n_sims, "c": None if config is None else json.dumps(config)},
    )


def build_two_runs(path: Path) -> Path:
    """Two runs on a toy store, numbers small enough to compute by hand (see the test below).

    tasks: train t1, t2; dev d1, d2; test x1.
    experts: e1 on t1 fails with 6 actions (M = 2 -> l = 2, checkpoints s2 and s4); e2 on t2
    succeeds (the only behaviour-cloning example).
    run 'eef-run' (M = 2, config says eef): no bc selected; eval at iterations 0, 1 (dev) and
    2 (test only). run 'rft-run' (M = 0, no config: rft from M): bc selected, no iteration-0
    eval. run 'quiet-run' (M = 3, method nested as the pipeline writes it): one explore rollout
    and a selection, never evaluated.
    """
    with store.writer(path) as con:
        b = StoreBuilder(con)
        for task in ("t1", "t2"):
            b.task(task, "train")
        for task in ("d1", "d2"):
            b.task(task, "dev")
        b.task("x1", "test")
        b.expert("e1", "t1", 6, success=False)
        b.expert("e2", "t2", 4, success=True)
        register(con, "eef-run", 2, {"method": "eef"})
        register(con, "rft-run", 0)
        register(con, "quiet-run", 3, {"config": {"method": "rft", "n_sims": 3}, "requested": {}})

        run = "eef-run"
        # iteration 0: eval only (dev d1 wins, d2 fails; test x1 fails)
        b.rollout("eef/0/d1", "d1", 0, True, run_id=run, purpose="eval")
        b.rollout("eef/0/d2", "d2", 0, False, run_id=run, purpose="eval")
        b.rollout("eef/0/x1", "x1", 0, False, run_id=run, purpose="eval")
        # iteration 1: s0 of t1 wins, s2 wins, s4 fails -> s4 is need-recover
        b.rollout("eef/1/t1", "t1", 1, True, run_id=run)
        b.rollout("eef/1/t2", "t2", 1, False, run_id=run)
        b.simulation("eef/1/e1@2", "e1", 2, 1, True, run_id=run)
        b.simulation("eef/1/e1@4", "e1", 4, 1, False, run_id=run)
        # two eval samples of d1 (one wins), one of d2 (wins)
        b.rollout("eef/1/d1/a", "d1", 1, True, run_id=run, purpose="eval")
        b.rollout("eef/1/d1/b", "d1", 1, False, run_id=run, purpose="eval")
        b.rollout("eef/1/d2", "d2", 1, True, run_id=run, purpose="eval")
        # iteration 2: s0 fails, s2 and s4 win (nothing new is need-recover); eval on test only
        b.rollout("eef/2/t1", "t1", 2, False, run_id=run)
        b.rollout("eef/2/t2", "t2", 2, False, run_id=run)
        b.simulation("eef/2/e1@2", "e1", 2, 2, True, run_id=run)
        b.simulation("eef/2/e1@4", "e1", 4, 2, True, run_id=run)
        b.rollout("eef/2/x1", "x1", 2, True, run_id=run, purpose="eval")
        selection.select_examples(con, run, 1, "eef")
        selection.select_examples(con, run, 2, "eef")

        run = "rft-run"
        b.rollout("rft/1/t1", "t1", 1, False, run_id=run)
        b.rollout("rft/1/t2", "t2", 1, True, run_id=run)
        b.rollout("rft/1/d1", "d1", 1, False, run_id=run, purpose="eval")
        b.rollout("rft/1/d2", "d2", 1, False, run_id=run, purpose="eval")
        b.rollout("rft/2/t1", "t1", 2, True, run_id=run)
        b.rollout("rft/2/t2", "t2", 2, True, run_id=run)
        b.rollout("rft/2/d1", "d1", 2, True, run_id=run, purpose="eval")
        b.rollout("rft/2/d2", "d2", 2, False, run_id=run, purpose="eval")
        selection.select_examples(con, run, 0, "bc")
        selection.select_examples(con, run, 1, "rft")
        selection.select_examples(con, run, 2, "rft")

        b.rollout("quiet/1/t2", "t2", 1, True, run_id="quiet-run")
        selection.select_examples(con, "quiet-run", 1, "rft")
    return path


@pytest.fixture
def two_runs(tmp_path) -> Path:
    return build_two_runs(tmp_path / "runs.duckdb")


# (run, iteration): method, n_sims, train_method, eval_split, n_eval_tasks, n_eval_trajectories,
# win_rate, mean_reward, n_examples, n_initial, n_need_recover, n_expert_success,
# n_need_recover_found, n_simulations, n_explore, explore_win_rate,
# n_dev_tasks, dev_win_rate, dev_mean_reward, n_test_tasks, test_win_rate, test_mean_reward
# (failed trajectories have reward 0.25)
EXPECTED = {
    # dev: d1 1.0, d2 0.25 -> win 1/2, reward 0.625; test x1 fails
    ("eef-run", 0): ("eef", 2, "bc", "dev", 2, 2, 0.5, 0.625, 0, 0, 0, 0,
                     0, 0, 0, None, 2, 0.5, 0.625, 1, 0.0, 0.25),
    # dev per task: d1 (1 + 0) / 2 = 0.5 win, (1 + 0.25) / 2 = 0.625 reward; d2 1, 1
    # -> win (0.5 + 1) / 2 = 0.75 (per trajectory it would be 2/3), reward 0.8125.
    # examples: initial t1 <- eef/1/t1 (0 expert actions), initial t2 <- e2; s4 has no success yet
    ("eef-run", 1): ("eef", 2, "eef", "dev", 2, 3, 0.75, 0.8125, 2, 2, 0, 0,
                     1, 2, 2, 0.5, 2, 0.75, 0.8125, None, None, None),
    # test only -> headline is test; s4 now has an example (eef/2/e1@4); found states stay 1
    ("eef-run", 2): ("eef", 2, "eef", "test", 1, 1, 1.0, 1.0, 3, 2, 1, 0,
                     1, 2, 2, 0.0, None, None, None, 1, 1.0, 1.0),
    # bc examples, no eval
    ("rft-run", 0): ("rft", 0, "bc", None, None, None, None, None, 1, 0, 0, 1,
                     0, 0, 0, None, None, None, None, None, None, None),
    # initial t2 <- rft/1/t2 only (nothing won t1 from s0)
    ("rft-run", 1): ("rft", 0, "rft", "dev", 2, 2, 0.0, 0.25, 1, 1, 0, 0,
                     0, 0, 2, 0.5, 2, 0.0, 0.25, None, None, None),
    ("rft-run", 2): ("rft", 0, "rft", "dev", 2, 2, 0.5, 0.625, 2, 2, 0, 0,
                     0, 0, 2, 1.0, 2, 0.5, 0.625, None, None, None),
    # method from runs.config's nested "config"; t2's initial state <- quiet/1/t2
    ("quiet-run", 1): ("rft", 3, "rft", None, None, None, None, None, 1, 1, 0, 0,
                       0, 0, 1, 1.0, None, None, None, None, None, None),
}
VALUE_COLUMNS = [
    "method", "n_sims", "train_method", "eval_split", "n_eval_tasks", "n_eval_trajectories",
    "win_rate", "mean_reward", "n_examples", "n_initial", "n_need_recover", "n_expert_success",
    "n_need_recover_found", "n_simulations", "n_explore", "explore_win_rate",
    "n_dev_tasks", "dev_win_rate", "dev_mean_reward", "n_test_tasks", "test_win_rate",
    "test_mean_reward",
]
# columns added later (sft-all/nat, binary search), at the end: none of these runs uses them
ADDED_COLUMNS = {"n_expert_failure": 0, "search": "uniform", "n_dpo_pairs": None}  # n_dpo_pairs: no dpo phase


def assert_close(got, want, where):
    if isinstance(want, float):
        assert got is not None and math.isclose(got, want, abs_tol=1e-12), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_view_matches_hand_computed_values(two_runs):
    df = report.comparison(two_runs)
    assert df.columns == ["run_id", "iteration", *VALUE_COLUMNS, *ADDED_COLUMNS, *report.BUDGET_COLUMNS]
    assert df.select(*ADDED_COLUMNS).unique().rows() == [tuple(ADDED_COLUMNS.values())]
    keys = [(r, i) for r, i in df.select("run_id", "iteration").iter_rows()]
    assert keys == sorted(EXPECTED), "one row per (run, iteration), ordered"
    for row in df.iter_rows(named=True):
        want = dict(zip(VALUE_COLUMNS, EXPECTED[(row["run_id"], row["iteration"])], strict=True))
        for column, value in want.items():
            assert_close(row[column], value, f"{row['run_id']} it{row['iteration']} {column}")


def test_budget_columns_per_iteration(two_runs):
    """iteration_budget's columns beside each iteration (this store has no run_phases rows: no
    phase finished, so no wall times, and no token counts in meta)."""
    df = report.comparison(two_runs).select("run_id", "iteration", "rollout_episodes", "rollout_env_steps",
                                            "eval_episodes", "rollout_generated_tokens", "wall_s")
    got = {(r, i): rest for r, i, *rest in df.iter_rows()}
    # eef-run it1: explore t1, t2 (3 steps each), simulations from s2 (2 + 2) and s4 (4 + 2): 16
    # steps in 4 episodes; 3 eval episodes (d1 twice, d2)
    assert got[("eef-run", 1)] == [4, 16, 3, None, None]
    assert got[("eef-run", 2)] == [4, 16, 1, None, None]
    assert got[("eef-run", 0)] == [0, 0, 3, 0, None]  # no rollouts: 0 tokens, not unknown
    assert got[("rft-run", 1)] == [2, 6, 2, None, None]
    # rft-run it0: only bc examples, nothing spent and no budget row at all
    assert got[("rft-run", 0)] == [None, None, None, None, None]


def test_iteration_zero_rows_come_from_bc_examples_or_eval(two_runs):
    df = report.comparison(two_runs).filter(pl.col("iteration") == 0)
    # eef-run: eval only, no bc selected; rft-run: bc only, no eval; quiet-run: neither -> no row
    assert sorted(df["run_id"].to_list()) == ["eef-run", "rft-run"]
    with store.writer(two_runs) as con:
        con.execute("DELETE FROM steps WHERE traj_id LIKE 'eef/0/%'")
        con.execute("DELETE FROM trajectories WHERE run_id = 'eef-run' AND iteration = 0")
        con.execute("DELETE FROM training_examples WHERE run_id = 'rft-run' AND iteration = 0")
    assert report.comparison(two_runs).filter(pl.col("iteration") == 0).is_empty()


def test_filter_by_runs_and_unknown_run(two_runs):
    df = report.comparison(two_runs, ["rft-run", "quiet-run", "rft-run"])
    assert df["run_id"].unique().sort().to_list() == ["quiet-run", "rft-run"]
    # a value that would break string-formatted SQL is just an unknown run
    with pytest.raises(store.StoreError, match=r"no iterations of run\(s\) 'x; DROP TABLE runs; --'"
                                               r".*runs there: eef-run, quiet-run, rft-run$"):
        report.comparison(two_runs, ["rft-run", "x; DROP TABLE runs; --"])
    assert report.comparison(two_runs).height == len(EXPECTED)


def test_method_inferred_from_training_examples_when_config_is_silent(tmp_path):
    db = tmp_path / "s.duckdb"
    with store.writer(db) as con:
        b = StoreBuilder(con)
        b.task("t1")
        register(con, "r", 4)  # M > 0 would say eef, but the run only ever selected rft
        b.rollout("r/1/t1", "t1", 1, True, run_id="r")
        selection.select_examples(con, "r", 1, "rft")
        b.rollout("u/1/t1", "t1", 1, False, run_id="unregistered")  # not in runs at all
    df = report.comparison(db)
    assert df.select("run_id", "method", "n_sims", "n_examples").rows() == [
        ("r", "rft", 4, 1), ("unregistered", None, None, 0)]


def test_old_store_gets_the_view_on_first_comparison(two_runs):
    with store.writer(two_runs) as con:
        con.execute("DROP VIEW run_comparison")
        con.execute("DELETE FROM schema_views WHERE name = $n", {"n": report.VIEW})
    assert report.comparison(two_runs).height == len(EXPECTED)


def test_agrees_with_win_rates_on_a_synthetic_store(tmp_path):
    db = tmp_path / "syn.duckdb"
    synthetic_store.generate_store(db, n_tasks=40, n_iterations=2, seed=3)
    df = report.comparison(db)
    assert df.height == 2 * 3  # two runs, iterations 0..2 (eval at 0)
    with store.reader(db) as con:
        # one eval sample per task in the synthetic store: per-task and per-trajectory agree
        win_rates = {
            (r, i, s): (n, w, m) for r, i, s, n, w, m in con.execute(
                "SELECT run_id, iteration, split, n_tasks, win_rate, mean_reward FROM win_rates "
                "WHERE purpose = 'eval'").fetchall()
        }
        spent = dict(((r, i, p), n) for r, i, p, n in con.execute(
            "SELECT run_id, iteration, purpose, count(*) FROM trajectories "
            "WHERE purpose IN ('simulate', 'explore') GROUP BY ALL").fetchall())
    for row in df.iter_rows(named=True):
        key = (row["run_id"], row["iteration"])
        assert row["method"] == "eef"  # M = 5, no config method, no selections
        for split in ("dev", "test"):
            n, w, m = win_rates[(*key, split)]
            assert row[f"n_{split}_tasks"] == n
            assert math.isclose(row[f"{split}_win_rate"], w)
            assert math.isclose(row[f"{split}_mean_reward"], m)
        assert row["eval_split"] == "dev" and row["win_rate"] == row["dev_win_rate"]
        assert row["n_simulations"] == spent.get((*key, "simulate"), 0)
        assert row["n_explore"] == spent.get((*key, "explore"), 0)


def test_best_iteration_is_the_best_dev_iteration_ties_to_the_earlier():
    df = pl.DataFrame({
        "run_id": ["a"] * 4 + ["b", "b"],
        "iteration": [0, 1, 2, 3, 0, 1],
        "method": ["eef"] * 4 + ["rft"] * 2,
        "dev_win_rate": [0.2, 0.6, 0.6, None, None, None],
        "test_win_rate": [0.1, 0.1, 0.1, 0.9, 0.5, 0.9],  # never used to choose
    })
    assert report.best_iteration(df, "a") == 1
    assert report.best_iteration(df, "b") is None
    with pytest.raises(store.StoreError):
        report.best_iteration(df, "zzz")


def test_best_iteration_on_the_store(two_runs):
    df = report.comparison(two_runs)
    assert report.best_iteration(df, "eef-run") == 1
    assert report.best_iteration(df, "rft-run") == 2
    assert report.best_iteration(df, "quiet-run") is None


def test_markdown_table(two_runs):
    df = report.comparison(two_runs)
    text = report.comparison_markdown(df)
    lines = text.splitlines()
    headers = [header for _, header, _ in report.DISPLAY]
    first = ["run", "iteration", "win rate %", "mean reward"]  # the results before the details
    assert lines[0] == "| " + " | ".join(first + [h for h in headers if h not in first]) + " |"
    assert set(lines[1]) <= set("|:-")
    table_rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(table_rows) == df.height
    assert "| eef-run | 0 (BC) |" in table_rows[0]
    assert "| eef-run | 1 | 75.0 | 0.812 | eef | 2 | 2 | 2 | 0 | 0 | 1 | 2 | 2 | 50.0 | dev | 2 |" in text
    assert "| rft-run | 0 (BC) | - | - | rft | 0 | 1 | 0 | 0 | 1 | 0 | 0 | 0 | - | - | - |" in text
    assert "eef-run (eef): best iteration on dev 1" in text
    assert "quiet-run (rft): no dev evaluation" in text
    piped = df.with_columns(run_id=pl.lit("a|b"))
    assert "| a\\|b |" in report.comparison_markdown(piped)


def test_png_plot(two_runs, tmp_path):
    path = report.win_rate_plot(two_runs, tmp_path / "plots" / "win.png")
    data = path.read_bytes()
    assert path == tmp_path / "plots" / "win.png"
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(path.parent.glob("*.partial"))


def test_svg_plot_from_a_frame_labels_runs_and_bc(two_runs, tmp_path):
    df = report.comparison(two_runs)
    path = report.win_rate_plot(df, tmp_path / "win.SVG", run_ids=["eef-run", "rft-run"])
    text = path.read_text()
    root = ET.fromstring(text)
    assert root.tag.endswith("svg") and path.stat().st_size > 1000
    # matplotlib writes text as paths, and the label as a comment next to it
    for label in ("eef-run (eef)", "rft-run (rft)", "run (method)", "BC", "win rate (%)", "mean reward"):
        assert label in text, label


def test_plot_per_split_and_errors(two_runs, tmp_path):
    path = report.win_rate_plot(two_runs, tmp_path / "test.png", split="test")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(store.StoreError, match="no eval trajectories"):
        report.win_rate_plot(two_runs, tmp_path / "q.png", ["quiet-run"])  # a run never evaluated
    with pytest.raises(store.StoreError, match=r"\.png or \.svg"):
        report.win_rate_plot(two_runs, tmp_path / "q.pdf")
    with pytest.raises(store.StoreError, match="dev or test"):
        report.win_rate_plot(two_runs, tmp_path / "q.png", split="train")
    assert not (tmp_path / "q.png").exists()


# --- the console script ------------------------------------------------------------------------


def eef(*args, check=True):
    proc = subprocess.run([EEF, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"eef {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_cli_compare_table_csv_json_and_plot(two_runs, tmp_path):
    proc = eef("compare", "--db", two_runs, "--plot", tmp_path / "cmp.png")
    assert "wrote" in proc.stderr and (tmp_path / "cmp.png").read_bytes().startswith(PNG_MAGIC)
    table = proc.stdout
    assert "┃ run" in table and "win rate %" in table
    for cell in ("eef-run", "rft-run", "quiet-run", "0 (BC)", "75.0", "0.812"):
        assert cell in table, cell
    assert "eef-run (eef): best iteration on dev 1" in table

    rows = list(csv.DictReader(io.StringIO(eef("compare", "--db", two_runs, "--run", "rft-run",
                                               "--format", "csv").stdout)))
    assert [(r["run_id"], r["iteration"], r["n_examples"]) for r in rows] == [
        ("rft-run", "0", "1"), ("rft-run", "1", "1"), ("rft-run", "2", "2")]

    records = json.loads(eef("compare", "--db", two_runs, "--run", "eef-run", "--run", "quiet-run",
                             "--format", "json", "--plot", tmp_path / "cmp.svg").stdout)
    assert records == report.comparison(two_runs, ["eef-run", "quiet-run"]).to_dicts()
    ET.parse(tmp_path / "cmp.svg")


def test_cli_compare_errors_are_one_line(two_runs, tmp_path):
    cases = [
        (["--run", "nope"], "no iterations of run(s) 'nope'"),
        (["--plot", tmp_path / "x.pdf"], ".png or .svg"),
        (["--run", "quiet-run", "--plot", tmp_path / "q.png"], "no eval trajectories"),
    ]
    for args, message in cases:
        proc = eef("compare", "--db", two_runs, *args, check=False)
        assert proc.returncode == 1, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pdf").exists() and not (tmp_path / "q.png").exists()
    empty = tmp_path / "empty.duckdb"
    eef("init", "--db", empty)
    proc = eef("compare", "--db", empty, check=False)
    assert proc.returncode == 1 and "nothing to compare" in proc.stderr
    proc = eef("compare", "--db", tmp_path / "missing.duckdb", check=False)
    assert proc.returncode == 1 and "eef init" in proc.stderr


def test_old_store_runs_get_their_method_from_migration_0004(tmp_path):
    """A store made before runs.method: 0004 fills the column the way view 80 used to guess it,
    and the view reads the column (no guess left in it)."""
    db = tmp_path / "old.duckdb"
    with store.writer(db) as con:
        b = StoreBuilder(con)
        b.task("t1")
        con.execute("ALTER TABLE runs DROP COLUMN method")  # the schema before 0004
        con.execute("DELETE FROM schema_migrations WHERE version = 4")
        register(con, "top", 2, {"method": "RFT"})
        register(con, "nested", 3, {"config": {"method": "eef"}})
        register(con, "selected", 4)
        register(con, "m0", 0)
        register(con, "m5", 5)
        b.rollout("s/1/t1", "t1", 1, True, run_id="selected")
        con.execute("INSERT INTO training_examples (run_id, iteration, method, traj_id, loss_from_step, state_kind, "
                    "state_step, task_id) VALUES ('selected', 1, 'rft', 's/1/t1', 0, 'initial', 0, 't1')")
    con = store.connect(db)
    try:
        assert "0004_runs_method.sql" in store.migrate(con)
        methods = dict(con.execute("SELECT run_id, method FROM runs").fetchall())
    finally:
        con.close()
    assert methods == {"top": "rft", "nested": "eef", "selected": "rft", "m0": "rft", "m5": "eef"}
    view = store.read_sql("views/80_run_comparison")
    assert "config ->>" not in view and "config->>" not in view  # no method read from runs.config
    assert report.comparison(db, ["selected"]).select("run_id", "method").rows() == [("selected", "rft")]


def test_win_rates_weigh_each_task_the_same(two_runs):
    with store.reader(two_runs) as con:
        row = con.execute("""SELECT n_trajectories, n_tasks, n_success, win_rate, mean_reward FROM win_rates
                             WHERE run_id = 'eef-run' AND iteration = 1 AND purpose = 'eval' AND split = 'dev'""").fetchall()
    # d1: two samples, one won (0.5); d2: one sample, won (1.0) -> 0.75, not 2/3 per trajectory
    assert row == [(3, 2, 2, 0.75, 0.8125)]

"""The seeded experiment's machinery (eef_tasks/experiment.py) on hand-built stores, no model: k of
RFT×k, the paired bootstrap (worked examples and properties), the view eval_outcomes (a reused BC adapter's evaluation borrowed),
the group report (dev chooses, test reports), the results folder, and `eef compare --group`
through the real script."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from eef_tasks import experiment, store
from eef_tasks.store import StoreError
from store_builders import StoreBuilder

EEF = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- k of RFT×k ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_train", "n_checkpoints", "k"), [
    (40, 120, 4),   # 160 episodes per iteration = 4 per task
    (40, 130, 4),   # 4.25 -> 4
    (40, 140, 5),   # 4.5 rounds up
    (40, 0, 1),     # no failed expert trajectory: RFT×1 = RFT
    (3, 3, 2),
    (1, 100, 16),   # capped at RunConfig.samples' bound
])
def test_equal_budget_k(n_train, n_checkpoints, k):
    assert experiment.equal_budget_k(n_train, n_checkpoints) == k


def test_equal_budget_k_refuses_no_tasks():
    with pytest.raises(StoreError, match="at least one training task"):
        experiment.equal_budget_k(0, 5)


def _register(con, run_id, method, n_sims, config, search="uniform"):
    con.execute("INSERT INTO runs (run_id, n_sims, method, search, config) VALUES ($r, $m, $method, $s, $c::JSON)",
                {"r": run_id, "m": n_sims, "method": method, "s": search,
                 "c": json.dumps({"config": config, "requested": config})})


def test_rollout_plan_counts_the_checkpoints_of_the_runs_training_tasks(tmp_path):
    db = tmp_path / "plan.duckdb"
    with store.writer(db) as con:
        b = StoreBuilder(con)
        for task in ("t1", "t2", "t3", "t4"):
            b.task(task, "train")
        b.expert("e1", "t1", 6, success=False)  # M = 2: l = 2, checkpoints s2, s4
        b.expert("e2", "t2", 2, success=False)  # l = max(1, 0) = 1: s1 (s2 is not < 2)
        b.expert("e3", "t3", 5, success=True)   # a success: no checkpoints
        b.expert("e4", "t4", 9, success=False)  # not one of the run's training tasks
        _register(con, "g-eef-s0", "eef", 2, {"train_tasks": ["t1", "t2", "t3"], "samples": 1})
        _register(con, "g-rft-s0", "rft", 0, {"train_tasks": ["t1", "t2", "t3"], "samples": 1})
    plan = experiment.rollout_plan(db, "g-eef-s0")
    assert (plan.n_train, plan.n_checkpoints, plan.eef_episodes, plan.k) == (3, 3, 6, 2)
    with pytest.raises(StoreError, match="not an eef run"):
        experiment.rollout_plan(db, "g-rft-s0")
    with pytest.raises(StoreError, match="no registered run 'nope'"):
        experiment.rollout_plan(db, "nope")


# --- the bootstrap -------------------------------------------------------------------------------


def test_bootstrap_of_one_seed_and_two_tasks_is_hand_checkable():
    # replicate means are 0 (both draws task 1), 0.5 or 1 with chances 1/4, 1/2, 1/4:
    # the 2.5 and 97.5 percentiles are 0 and 1
    interval = experiment.paired_bootstrap(np.array([[0.0, 1.0]]), n_boot=4000, rng_seed=1)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_bootstrap_identical_methods_and_a_symmetric_case():
    assert experiment.paired_bootstrap(np.zeros((3, 10))) == experiment.Interval(0.0, 0.0, 0.0)
    # half the tasks favour EEF by one, half the other method: centred on 0, about symmetric
    d = np.tile([1.0, -1.0], (3, 5))
    interval = experiment.paired_bootstrap(d)
    assert interval.estimate == 0.0
    assert interval.low < 0 < interval.high
    assert abs(interval.low + interval.high) <= 0.05


def test_bootstrap_every_task_favours_eef_gives_a_positive_interval():
    assert experiment.paired_bootstrap(np.ones((3, 10))) == experiment.Interval(1.0, 1.0, 1.0)
    d = np.array([[1.0] * 8 + [0.0] * 2] * 3)  # 8 of 10 tasks won by EEF only, 2 ties
    interval = experiment.paired_bootstrap(d)
    assert interval.estimate == pytest.approx(0.8)
    assert 0 < interval.low < 0.8 < interval.high <= 1.0


def test_bootstrap_is_reproducible_and_resamples_seeds_too():
    rng = np.random.default_rng(5)
    d = rng.normal(size=(3, 12))  # continuous values: two RNG seeds give other percentiles
    assert experiment.paired_bootstrap(d, rng_seed=7) == experiment.paired_bootstrap(d, rng_seed=7)
    assert experiment.paired_bootstrap(d, rng_seed=7) != experiment.paired_bootstrap(d, rng_seed=8)
    # seeds that disagree completely (one +1 everywhere, one -1): resampling seeds widens the interval
    seeds_apart = experiment.paired_bootstrap(np.array([[1.0] * 6, [-1.0] * 6]))
    assert seeds_apart.low == -1.0 and seeds_apart.high == 1.0
    with pytest.raises(StoreError, match="seeds x tasks"):
        experiment.paired_bootstrap(np.zeros((0, 3)))


# --- a group of runs -----------------------------------------------------------------------------

TEST_TASKS = ("x1", "x2", "x3", "x4")


def build_group(path: Path) -> Path:
    """Group 'g', seeds 0 and 1, methods eef and rft (rft reuses its seed's BC adapter: no
    iteration-0 evaluation of its own). W = won, F = failed; dev d1 d2, test x1..x4.

    seed 0  eef it0: dev W F (0.5)  test W F F F (0.25)
            eef it1: dev W W (1.0)  test W W W F (0.75)  -> chosen 1
            rft it0: borrowed from eef-s0 it0 (dev 0.5)   -> chosen 0 (test 0.25)
            rft it1: dev F F (0.0)  test W W W W (1.0: never used to choose)
    seed 1  eef it0: dev W F (0.5)  test W F F F (0.25)  -> chosen 0 (tie with it1: the earlier)
            eef it1: dev F W (0.5)  test W W W W (1.0)
            rft it1: dev W W (1.0)  test F W F F (0.25)  -> chosen 1
    EEF mean test 0.5, RFT 0.25; per-task differences s0: (1,1,1,0) - (1,0,0,0) = (0,1,1,0),
    s1: (1,0,0,0) - (0,1,0,0) = (1,-1,0,0): mean 2/8 = 0.25.
    """
    outcomes = {
        ("g-eef-s0", 0): ("WF", "WFFF"), ("g-eef-s0", 1): ("WW", "WWWF"), ("g-rft-s0", 1): ("FF", "WWWW"),
        ("g-eef-s1", 0): ("WF", "WFFF"), ("g-eef-s1", 1): ("FW", "WWWW"), ("g-rft-s1", 1): ("WW", "FWFF"),
    }
    with store.writer(path) as con:
        b = StoreBuilder(con)
        b.task("t1", "train")
        for task in ("d1", "d2"):
            b.task(task, "dev")
        for task in TEST_TASKS:
            b.task(task, "test")
        b.expert("e1", "t1", 4, success=True)
        for seed in (0, 1):
            adapter = f"data/adapters/g-eef-s{seed}/bc-it0"
            _register(con, f"g-eef-s{seed}", "eef", 2, {"train_tasks": ["t1"], "samples": 1, "iterations": 1})
            _register(con, f"g-rft-s{seed}", "rft", 0, {"train_tasks": ["t1"], "samples": 1, "bc_adapter": adapter,
                                                       "iterations": 1})
            for run, summary in ((f"g-eef-s{seed}", {"adapter": adapter, "n_examples": 1, "wall_s": 10.0}),
                                 (f"g-rft-s{seed}", {"adapter": adapter, "reused": True, "wall_s": 0.1})):
                con.execute("INSERT INTO run_phases (run_id, iteration, phase, started_at, summary) "
                            "VALUES ($r, 0, 'train', current_timestamp, $s)", {"r": run, "s": json.dumps(summary)})
        for (run, it), (dev, test) in outcomes.items():
            for task, mark in zip(("d1", "d2", *TEST_TASKS), dev + test, strict=True):
                b.rollout(f"{run}/{it}/eval/{task}", task, it, mark == "W", run_id=run, purpose="eval")
            b.rollout(f"{run}/{it}/explore/t1", "t1", it, False, run_id=run) if it > 0 else None
        # a run outside the group, and one whose name only looks alike
        _register(con, "other", "eef", 2, {"train_tasks": ["t1"]})
        _register(con, "g-eef-sx", "eef", 2, {"train_tasks": ["t1"]})
    return path


@pytest.fixture
def group_db(tmp_path) -> Path:
    return build_group(tmp_path / "group.duckdb")


def test_eval_outcomes_borrow_the_bc_evaluation_of_the_run_that_trained_it(group_db):
    with store.reader(group_db) as con:
        rows = con.execute("""SELECT run_id, iteration, split, count(*), avg(win_rate), min(evaluated_by)
                              FROM eval_outcomes WHERE run_id LIKE 'g-rft-s%' AND iteration = 0
                              GROUP BY ALL ORDER BY ALL""").fetchall()
    assert rows == [("g-rft-s0", 0, "dev", 2, 0.5, "g-eef-s0"), ("g-rft-s0", 0, "test", 4, 0.25, "g-eef-s0"),
                    ("g-rft-s1", 0, "dev", 2, 0.5, "g-eef-s1"), ("g-rft-s1", 0, "test", 4, 0.25, "g-eef-s1")]


def test_run_comparison_shows_the_borrowed_bc_evaluation_at_iteration_0(group_db):
    """eef compare's per-iteration table (view run_comparison) reads the same per-task rows: an RFT run
    that reused its seed's BC adapter shows that adapter's evaluation at iteration 0, so it can be
    chosen there as group_report chooses it."""
    with store.reader(group_db) as con:
        rows = con.execute("""SELECT run_id, iteration, eval_split, n_dev_tasks, dev_win_rate, n_test_tasks,
                                     test_win_rate, n_eval_trajectories
                              FROM run_comparison WHERE run_id LIKE 'g-%-s0' ORDER BY ALL""").fetchall()
    assert rows == [("g-eef-s0", 0, "dev", 2, 0.5, 4, 0.25, 2), ("g-eef-s0", 1, "dev", 2, 1.0, 4, 0.75, 2),
                    ("g-rft-s0", 0, "dev", 2, 0.5, 4, 0.25, 2), ("g-rft-s0", 1, "dev", 2, 0.0, 4, 1.0, 2)]


def test_group_runs_parse_names(group_db):
    runs = experiment.group_runs(group_db, "g")
    assert runs.select("run_id", "label", "seed").rows() == [
        ("g-eef-s0", "eef", 0), ("g-eef-s1", "eef", 1), ("g-rft-s0", "rft", 0), ("g-rft-s1", "rft", 1)]
    with pytest.raises(StoreError, match=r"no runs named nope-<method>-s<seed>"):
        experiment.group_runs(group_db, "nope")
    assert experiment.method_name("rftk", 4) == "RFT×4" and experiment.method_name("nat", 1) == "nat"


def test_group_report_chooses_on_dev_and_reports_test(group_db):
    result = experiment.group_report(group_db, "g")
    runs = {r["run_id"]: r for r in result.runs.iter_rows(named=True)}
    assert {run: (r["chosen_iteration"], r["dev_win_rate"], r["test_win_rate"], r["n_test_tasks"])
            for run, r in runs.items()} == {
        "g-eef-s0": (1, 1.0, 0.75, 4), "g-rft-s0": (0, 0.5, 0.25, 4),
        "g-eef-s1": (0, 0.5, 0.25, 4), "g-rft-s1": (1, 1.0, 0.25, 4)}
    assert result.runs["run_id"].to_list() == ["g-eef-s0", "g-eef-s1", "g-rft-s0", "g-rft-s1"]
    assert runs["g-eef-s0"]["rollout_episodes_per_iteration"] == 1.0  # one explore rollout at iteration 1
    methods = {m["label"]: m for m in result.methods.iter_rows(named=True)}
    assert methods["eef"]["test_win_rate"] == 0.5 and methods["rft"]["test_win_rate"] == 0.25
    assert methods["eef"]["seeds"] == [0, 1] and methods["eef"]["n_seeds"] == 2
    (diff,) = result.differences.iter_rows(named=True)
    assert (diff["comparison"], diff["n_seeds"], diff["n_tasks"]) == ("EEF − RFT", 2, 4)
    assert diff["difference"] == pytest.approx(0.25)
    assert diff["ci_low"] < 0.25 < diff["ci_high"]
    assert diff["verdict"] == experiment.verdict(experiment.Interval(0.25, diff["ci_low"], diff["ci_high"]))
    again = experiment.group_report(group_db, "g")
    assert again.differences.equals(result.differences)  # fixed RNG seed


def test_group_report_needs_dev_and_test_evaluations(group_db):
    with store.writer(group_db) as con:  # seed 1's eef run lost its test evaluations
        con.execute("DELETE FROM steps WHERE traj_id LIKE 'g-eef-s1/0/eval/x%'")
        con.execute("DELETE FROM trajectories WHERE traj_id LIKE 'g-eef-s1/0/eval/x%'")
    with pytest.raises(StoreError, match=r"run 'g-eef-s1'.*iteration 0 has no test evaluation.*report_split=test"):
        experiment.group_report(group_db, "g")


def test_an_incomplete_run_is_flagged_in_every_table(group_db):
    """g-rft-s1 configured for 2 iterations but evaluated only at iterations 0 (borrowed) and 1: it is
    chosen among those, and the runs, the methods, the difference and results.md say it is incomplete."""
    with store.writer(group_db) as con:
        con.execute("""UPDATE runs SET config = json_object('config', json_object('train_tasks', ['t1'],
                       'samples', 1, 'iterations', 2)) WHERE run_id = 'g-rft-s1'""")
    result = experiment.group_report(group_db, "g", n_boot=200)
    runs = {r["run_id"]: (r["iterations"], r["last_evaluated_iteration"], r["complete"])
            for r in result.runs.iter_rows(named=True)}
    assert runs == {"g-eef-s0": (1, 1, True), "g-eef-s1": (1, 1, True), "g-rft-s0": (1, 1, True),
                    "g-rft-s1": (2, 1, False)}
    assert dict(result.methods.select("label", "n_incomplete").rows()) == {"eef": 0, "rft": 1}
    assert result.differences["incomplete_runs"].to_list() == ["g-rft-s1"]
    text = experiment.results_markdown(result)
    assert "**Incomplete runs**: g-rft-s1 evaluated up to iteration 1 of 2." in text
    assert "| RFT | 0,1 (1 incomplete) |" in text and "; incomplete: g-rft-s1 |" in text
    assert "| g-rft-s1 | RFT | 1 | 1 of 2 (incomplete) |" in text


def test_write_results_folder(group_db, tmp_path):
    result = experiment.group_report(group_db, "g", n_boot=500)
    out = tmp_path / "results" / "g"
    (out / "stale.txt").parent.mkdir(parents=True)
    (out / "stale.txt").write_text("from an earlier write")
    assert experiment.write_results(result, out, "eef experiment --name g") == out
    assert sorted(p.name for p in out.iterdir()) == sorted(experiment.RESULT_FILES)  # replaced whole
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no partial or old folders
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [(r["run_id"], r["chosen_iteration"], r["test_win_rate"]) for r in rows] == [
        ("g-eef-s0", "1", "0.75"), ("g-eef-s1", "0", "0.25"), ("g-rft-s0", "0", "0.25"), ("g-rft-s1", "1", "0.25")]
    diffs = list(csv.DictReader(io.StringIO((out / "differences.csv").read_text())))
    assert [(d["comparison"], float(d["difference"])) for d in diffs] == [("EEF − RFT", 0.25)]
    text = (out / "results.md").read_text()
    assert "incomplete" not in text.lower()
    for line in ("    eef experiment --name g", "| EEF | 0,1 | 75.0 | 50.0 |", "| EEF − RFT | 2 | 4 | 25.0 |",
                 "resamples the seeds with replacement", "| g-rft-s0 | RFT | 0 | 1 of 1 | 0 | 50.0 | 25.0 |"):
        assert line in text, line
    png = (out / "win_rates.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_cli_compare_group_table_json_and_results(group_db, tmp_path):
    def eef(*args, check=True):
        proc = subprocess.run([EEF, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    proc = eef("compare", "--db", group_db, "--group", "g", "--out", tmp_path / "res")
    for cell in ("EEF − RFT", "g-rft-s1", "per method", "    -50 │", "no difference shown (interval contains 0)"):
        assert cell in proc.stdout, cell
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == sorted(experiment.RESULT_FILES)
    data = json.loads(eef("compare", "--db", group_db, "--group", "g", "--format", "json").stdout)
    assert set(data) == {"runs", "methods", "differences"}
    assert data["differences"][0]["difference"] == pytest.approx(0.25)
    proc = eef("compare", "--db", group_db, "--group", "nope", check=False)
    assert proc.returncode == 1 and "no runs named nope-<method>-s<seed>" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = eef("compare", "--db", group_db, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 1 and "give --group NAME" in proc.stderr
    totals = list(csv.DictReader(io.StringIO(eef("compare", "--db", group_db, "--totals", "--format", "csv").stdout)))
    assert [(t["run_id"], t["rollout_episodes"]) for t in totals] == [
        ("g-eef-s0", "1"), ("g-eef-s1", "1"), ("g-rft-s0", "1"), ("g-rft-s1", "1")]


# --- properties ----------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n_train=st.integers(1, 500), n_checkpoints=st.integers(0, 5000))
def test_k_is_the_nearest_whole_budget(n_train, n_checkpoints):
    k = experiment.equal_budget_k(n_train, n_checkpoints)
    eef = n_train + n_checkpoints
    if k < experiment.MAX_K:
        assert abs(k * n_train - eef) <= n_train / 2  # no other k is closer
    else:
        assert eef >= (experiment.MAX_K - 0.5) * n_train
    assert experiment.equal_budget_k(n_train, n_checkpoints + n_train) >= k


@settings(max_examples=40, deadline=None)
@given(d=arrays(float, st.tuples(st.integers(1, 4), st.integers(1, 12)), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0])),
       shift=st.sampled_from([-0.5, 0.25, 1.0]))
def test_bootstrap_interval_is_within_the_data_and_moves_with_it(d, shift):
    interval = experiment.paired_bootstrap(d, n_boot=300, rng_seed=3)
    assert d.min() - 1e-12 <= interval.low <= interval.high <= d.max() + 1e-12
    assert interval.estimate == pytest.approx(d.mean())
    moved = experiment.paired_bootstrap(d + shift, n_boot=300, rng_seed=3)  # the same draws
    assert (moved.low, moved.high) == pytest.approx((interval.low + shift, interval.high + shift))
    flipped = experiment.paired_bootstrap(-d, n_boot=300, rng_seed=3)
    assert (flipped.low, flipped.high) == pytest.approx((-interval.high, -interval.low))

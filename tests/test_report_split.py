"""Dev to choose, test to report: the run setting report_split resolves its tasks once at
registration, and the evaluate phase evaluates every iteration's adapter on both splits (the
evaluation itself stubbed: no model; the real path is tests/test_pipeline_flows.py's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eef_tasks import evaluation, pipeline, rollout, store
from eef_tasks.envs.scienceworld import find_task
from eef_tasks.pipeline import PipelineError, RunConfig, phases
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord, write_trajectories
EEF = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"

TRAIN = ["scienceworld/find-non-living-thing/1", "scienceworld/find-non-living-thing/2"]


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "eef.duckdb"
    with store.writer(path) as con:
        write_trajectories(con, [TrajectoryRecord(
            traj_id=f"e/{i}", task_id=task, source="expert", expert="synthetic", iteration=0, purpose="expert",
            reward=1.0, steps=[StepRecord(action="look around", observation="a room")]) for i, task in enumerate(TRAIN)],
            tasks=[TaskRecord(task_id=t, env="scienceworld", split="train", instruction="find") for t in TRAIN])
    return path


def config(**kw) -> RunConfig:
    values = dict(run_id="r1", n_sims=2, iterations=1, adapters_dir="unused", task_names=["find-non-living-thing"],
                  eval_limit=4, report_split="test")
    return RunConfig(**{**values, **kw})


def test_report_tasks_are_resolved_once_from_the_report_split(db):
    run = pipeline.register_run(db, config())
    assert len(run.eval_tasks) == 4 and len(run.report_tasks) == 4  # eval_limit applies to both
    assert {find_task(t).split for t in run.eval_tasks} == {"dev"}
    assert {find_task(t).split for t in run.report_tasks} == {"test"}
    assert pipeline.load_run(db, "r1").report_tasks == run.report_tasks
    assert pipeline.register_run(db, config(run_id="r0", report_split=None)).report_tasks == []


def test_report_split_must_differ_from_eval_split():
    with pytest.raises(ValueError, match="report_split 'dev' is eval_split already"):
        config(report_split="dev")
    with pytest.raises(PipelineError, match="report_split 'test' is eval_split already"):
        pipeline.preset_config("cpu", "x", "eef", eval_split="test")


def test_the_cpu_preset_chooses_on_dev_and_reports_on_test():
    run = pipeline.preset_config("cpu", "cpu-eef-s0", "eef")
    assert (run.eval_split, run.report_split) == ("dev", "test")


def test_evaluate_phase_evaluates_both_splits(db, monkeypatch):
    run = pipeline.register_run(db, config())
    pipeline.mark_phase(db, "r1", 1, "train", 0.0, {"adapter": "unused/r1/eef-it1"})
    calls = []

    built = []
    monkeypatch.setattr(phases, "engine", lambda config, adapter, server=None: built.append(adapter) or object())
    engines = []

    def fake_evaluate(db, adapter, *, run_id, iteration, split, task_ids, **kw):
        calls.append((run_id, iteration, split, list(task_ids)))
        engines.append(kw["engine_factory"]())  # each split asks for the model
        won = 1 if split == "dev" else 3
        summary = rollout.RolloutSummary(run_id, iteration, "eval", requested=len(task_ids),
                                         written=len(task_ids), successes=won)
        return evaluation.EvalResult(f"{run_id}/eef-it1", len(task_ids), won / len(task_ids), 0.5,
                                     len(task_ids), 0, [], summary)

    monkeypatch.setattr(phases.evaluation, "evaluate_adapter", fake_evaluate)
    summary = phases.evaluate(db, run, 1, None)
    assert calls == [("r1", 1, "dev", run.eval_tasks), ("r1", 1, "test", run.report_tasks)]
    assert (summary["split"], summary["win_rate"], summary["n_eval"]) == ("dev", 0.25, 4)  # chooses
    assert (summary["report_split"], summary["report_win_rate"], summary["report_n_eval"]) == ("test", 0.75, 4)
    assert (summary["requested"], summary["written"], summary["successes"]) == (8, 8, 4)
    # one model for both splits: loaded once, not once per split
    assert len(built) == 1 and engines[0] is engines[1]

    calls.clear()
    dev_only = pipeline.register_run(db, config(run_id="r2", report_split=None))
    pipeline.mark_phase(db, "r2", 1, "train", 0.0, {"adapter": "unused/r2/eef-it1"})
    assert "report_split" not in phases.evaluate(db, dev_only, 1, None)
    assert [c[2] for c in calls] == ["dev"]


def test_cli_experiment_checks_its_settings_before_running(tmp_path):
    db = tmp_path / "x.duckdb"
    for args, message in [
        (["--seeds", "0,x"], "--seeds expects comma-separated integers"),
        (["--seeds", "1,1"], "seeds must be distinct"),
        (["--set", "eval_split=test"], "report_split 'test' is eval_split already"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--rft-k", "0"], "rft_k"),
        (["--extra", "nat,dpo"], "unknown extra run 'dpo'"),
    ]:
        proc = subprocess.run([EEF, "experiment", "--db", str(db), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert not db.exists()  # nothing started

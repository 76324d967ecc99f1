"""The pipeline's bookkeeping without a model: run settings, phase order, markers, resumption.

The phases that need a model and the game are exercised end to end in tests/test_pipeline_flows.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eef_tasks import pipeline, store
from eef_tasks.pipeline import PipelineError, RunConfig
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord, write_trajectories

TASKS = ["scienceworld/lifespan-shortest-lived/1", "scienceworld/lifespan-shortest-lived/12",
         "scienceworld/find-plant/154"]


def _expert(traj_id: str, task_id: str, n: int, reward: float) -> TrajectoryRecord:
    return TrajectoryRecord(
        traj_id=traj_id, task_id=task_id, source="expert", expert="synthetic", iteration=0, purpose="expert",
        reward=reward, steps=[StepRecord(action=f"look at thing {k}", observation=f"obs {k}") for k in range(n)],
    )


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "eef.duckdb"
    with store.writer(path) as con:
        write_trajectories(
            con,
            [_expert("e/0", TASKS[0], 4, 1.0), _expert("e/1", TASKS[0], 6, 0.5),
             _expert("e/2", TASKS[1], 3, 1.0), _expert("e/3", TASKS[2], 9, 0.25)],
            tasks=[TaskRecord(task_id=t, env="scienceworld", split="train", instruction=f"do {t}") for t in TASKS],
        )
    return path


def config(**kw) -> RunConfig:
    values = dict(run_id="r1", n_sims=2, iterations=2, adapters_dir="unused", eval_split="dev", eval_limit=3)
    return RunConfig(**{**values, **kw})


def test_method_and_m_must_agree() -> None:
    with pytest.raises(ValueError, match="rft runs have no simulations"):
        RunConfig(run_id="x", method="rft", n_sims=3)
    with pytest.raises(ValueError, match="n_sims = 0 is the rft baseline"):
        RunConfig(run_id="x", method="eef", n_sims=0)
    assert pipeline.preset_config("demo", "d", "rft").n_sims == 0
    with pytest.raises(PipelineError, match="unknown preset"):
        pipeline.preset_config("huge", "d")
    with pytest.raises(PipelineError, match="run settings, iterations"):
        pipeline.preset_config("tiny", "d", iterations=-1)


def test_a_dotted_setting_changes_one_training_field_and_keeps_the_presets_others() -> None:
    """`--set train.finetune=full` on top of the cpu preset's train section; bad dotted keys are one line."""
    cpu = pipeline.preset_config("cpu", "c")
    full = pipeline.preset_config("cpu", "c", **{"train.finetune": "full", "train.learning_rate": 1e-4, "dpo.beta": 0.2})
    assert (full.train.finetune, full.train.learning_rate, full.dpo.beta) == ("full", 1e-4, 0.2)
    assert full.train.model_dump(exclude={"finetune", "learning_rate"}) == cpu.train.model_dump(exclude={"finetune", "learning_rate"})
    assert full.dpo.epochs == cpu.dpo.epochs == 3
    with pytest.raises(PipelineError, match="dotted keys name one field of train or dpo"):
        pipeline.preset_config("cpu", "c", **{"model.name": "x"})
    with pytest.raises(PipelineError, match="run settings, train.nope"):
        pipeline.preset_config("cpu", "c", **{"train.nope": 1})
    with pytest.raises(PipelineError, match="finetune='full' writes whole models, and the vllm engine"):
        pipeline.preset_config("cpu", "c", engine="vllm", **{"train.finetune": "full"})
    with pytest.raises(PipelineError, match="eef\\+dpo's DPO phase"):
        pipeline.preset_config("cpu", "c", "eef+dpo", **{"train.finetune": "full"})


def test_task_names_are_checked_when_the_run_is_set_up() -> None:
    """A misspelt task name, or names on an env whose tasks have none (WebShop), is one line from the
    settings, before a store, a server or a game is touched."""
    assert config(task_names=["find-non-living-thing"]).task_names == ["find-non-living-thing"]
    with pytest.raises(ValueError, match=r"unknown ScienceWorld task\(s\) \['find-non-livng-thing'\]"):
        config(task_names=["find-non-livng-thing"])
    with pytest.raises(PipelineError, match=r"webshop tasks have no names to filter by \(boil\)"):
        pipeline.preset_config("tiny", "w", env="webshop", task_names=["boil"])


@pytest.mark.parametrize("method", ["sft-all", "nat"])
def test_offline_baselines_are_one_iteration_on_expert_data(db, method) -> None:
    with pytest.raises(ValueError, match=f"{method} is trained once on expert data"):
        RunConfig(run_id="x", method=method, n_sims=0)  # iterations default to 4
    with pytest.raises(ValueError, match="no bc_adapter"):
        RunConfig(run_id="x", method=method, n_sims=0, iterations=0, bc_adapter="a")
    preset = pipeline.preset_config("demo", "d", method, iterations=3, n_sims=2)
    assert (preset.n_sims, preset.iterations, preset.train_method(0)) == (0, 0, method)
    assert preset.prompt_tag == ("positive" if method == "nat" else None)
    assert config().train_method(0) == "bc" and config().train_method(1) == "eef" and config().prompt_tag is None
    run = config(method=method, n_sims=0, iterations=0)
    pipeline.register_run(db, run)
    assert pipeline.phases_of(0, run) == ("select", "train", "evaluate")
    assert pipeline.adapter_dir(run, 0).name == f"{method}-it0"
    selected = pipeline.run_phase(db, "r1", 0, "select")
    # e/0 and e/2 succeeded, e/1 and e/3 failed: all four are trained on
    assert selected["method"] == method and selected["by_kind"] == {"expert_failure": 2, "expert_success": 2}
    for phase in ("train", "evaluate"):
        pipeline.mark_phase(db, "r1", 0, phase, 0.0, {"adapter": "a0"})
    assert pipeline.next_iteration(db, "r1") is None
    with store.reader(db) as con:
        assert con.execute("SELECT method FROM runs WHERE run_id = 'r1'").fetchall() == [(method,)]
        assert con.execute("SELECT train_method, n_examples, n_expert_success, n_expert_failure "
                           "FROM run_comparison WHERE run_id = 'r1'").fetchall() == [(method, 4, 2, 2)]


def test_binary_search_is_an_eef_option_without_m(db) -> None:
    with pytest.raises(ValueError, match="search='binary' is an eef option"):
        RunConfig(run_id="x", search="binary", n_sims=2)
    with pytest.raises(ValueError, match="search='binary' is an eef option"):
        RunConfig(run_id="x", method="rft", search="binary", n_sims=0)
    preset = pipeline.preset_config("demo", "d", "eef", search="binary")
    assert (preset.n_sims, preset.search) == (0, "binary")
    run = config(search="binary", n_sims=0)
    assert pipeline.phases_of(1, run) == ("explore", "simulate", "select", "train", "evaluate")
    pipeline.register_run(db, run)
    with store.reader(db) as con:
        assert con.execute("SELECT n_sims, method, search FROM runs WHERE run_id = 'r1'").fetchall() == [
            (0, "eef", "binary")]
    with pytest.raises(PipelineError, match=r"exists with other settings \(n_sims, search\)"):
        pipeline.register_run(db, config())


def _explore(traj_id: str, task_id: str, run_id: str, iteration: int, reward: float) -> TrajectoryRecord:
    return TrajectoryRecord(
        traj_id=traj_id, task_id=task_id, source="policy", model_id=f"{run_id}/it{iteration - 1}", run_id=run_id,
        iteration=iteration, purpose="explore", reward=reward,
        steps=[StepRecord(action=f"wander {k}", observation=f"obs {k}") for k in range(2)],
    )


def test_eto_and_eef_dpo_settings_and_phases() -> None:
    with pytest.raises(ValueError, match="eto runs have no simulations"):
        RunConfig(run_id="x", method="eto", n_sims=3)
    with pytest.raises(ValueError, match="eef needs n_sims >= 1"):
        RunConfig(run_id="x", method="eef+dpo", n_sims=0)
    eto = pipeline.preset_config("demo", "d", "eto")
    assert (eto.n_sims, eto.dpo_pairs, eto.train_method(0), eto.train_method(1)) == (0, "eto", "bc", "eto")
    both = config(method="eef+dpo")
    assert (both.dpo_pairs, both.train_method(0), both.train_method(1)) == ("eef", "bc", "eef")
    assert config().dpo_pairs is None
    assert pipeline.phases_of(1, eto) == ("explore", "dpo", "evaluate")
    assert pipeline.phases_of(1, both) == ("explore", "simulate", "select", "train", "dpo", "evaluate")
    assert pipeline.phases_of(0, eto) == pipeline.phases_of(0, both) == ("select", "train", "evaluate")
    assert (pipeline.policy_phase(0, eto), pipeline.policy_phase(1, eto), pipeline.policy_phase(1, config())) == (
        "train", "dpo", "train")


def test_extra_runs_of_the_experiment() -> None:
    from flows.pipeline import ExperimentParams, extra_run_id

    params = ExperimentParams(extra_runs=["eto", "eef+dpo", "rft-x4", "sft-all", "eto"])
    assert params.extra_runs == ["eto", "eef+dpo", "rft-x4", "sft-all"]
    assert [extra_run_id("demo", x) for x in params.extra_runs] == [
        "demo-eto", "demo-eef-dpo", "demo-rft-x4", "demo-sft-all"]
    for bad in ("rft-x0", "rft-x17", "dpo"):
        with pytest.raises(ValueError, match=f"unknown extra run '{bad}'"):
            ExperimentParams(extra_runs=[bad])


def test_extra_runs_of_the_seeded_experiment_join_its_group(db) -> None:
    """`eef experiment --extra`: NAME-<extra>-s<seed> runs, which the group report reads back as one
    method each beside EEF (label, seed)."""
    from flows.seeds import SeedsParams, extra_run_name

    from eef_tasks import experiment

    params = SeedsParams(extra_runs=["nat", "eef+dpo", "eef-binary", "rft-x4", "nat"])
    assert params.extra_runs == ["nat", "eef+dpo", "eef-binary", "rft-x4"]
    names = [extra_run_name("cpu", x, 2) for x in params.extra_runs]
    assert names == ["cpu-nat-s2", "cpu-eef-dpo-s2", "cpu-eef-binary-s2", "cpu-rft-x4-s2"]
    with pytest.raises(ValueError, match="unknown extra run 'dpo'"):
        SeedsParams(extra_runs=["dpo"])
    for run_id in ["cpu-eef-s2", *names]:
        pipeline.register_run(db, config(run_id=run_id))
    group = experiment.group_runs(db, "cpu")
    assert sorted(zip(group["label"], group["seed"])) == [
        ("eef", 2), ("eef-binary", 2), ("eef-dpo", 2), ("nat", 2), ("rft-x4", 2)]


def test_eto_dpo_phase_continues_the_previous_policy_on_its_pairs(db, monkeypatch) -> None:
    """The dpo phase's wiring (no model: train_dpo is recorded, not run): which pairs, which adapter it
    starts from, where it writes, and that its adapter is then the iteration's policy."""
    from eef_tasks import dpo

    calls: list[dict] = []

    def fake_train_dpo(db_, run_id, iteration, out_dir, **kw):
        calls.append({"run_id": run_id, "iteration": iteration, "out": str(out_dir), **kw})
        return {"path": str(out_dir), "n_pairs": 2, "n_optimizer_steps": 1, "final_loss": 0.69, "wall_s": 0.0}

    monkeypatch.setattr(dpo, "train_dpo", fake_train_dpo)
    run = pipeline.register_run(db, config(method="eto", n_sims=0, iterations=2))
    for phase in ("select", "train", "evaluate"):
        pipeline.mark_phase(db, "r1", 0, phase, 0.0, {"adapter": "a/bc-it0"})
    with pytest.raises(PipelineError, match="dpo needs explore first"):
        pipeline.run_phase(db, "r1", 1, "dpo")
    pipeline.mark_phase(db, "r1", 1, "explore", 0.0, {"adapter": "a/bc-it0"})
    # no failed exploration yet: no pairs, the BC adapter stays the policy, no training
    kept = pipeline.run_phase(db, "r1", 1, "dpo")
    assert (kept["carried_over"], kept["n_pairs"], kept["adapter"]) == (True, 0, "a/bc-it0") and not calls
    assert pipeline.policy_adapter(db, run, 1).as_posix() == "a/bc-it0"

    pipeline.mark_phase(db, "r1", 1, "evaluate", 0.0, {})
    # iteration 2: two failed explorations of the task with expert success e/0, one success
    with store.writer(db) as con:
        write_trajectories(con, [_explore("x/0", TASKS[0], "r1", 2, 0.0), _explore("x/1", TASKS[0], "r1", 2, 0.5),
                                 _explore("x/2", TASKS[1], "r1", 2, 1.0)])
    pipeline.mark_phase(db, "r1", 2, "explore", 0.0, {})
    trained = pipeline.run_phase(db, "r1", 2, "dpo")
    assert [(c["run_id"], c["iteration"], c["method"], str(c["sft_adapter"])) for c in calls] == [
        ("r1", 2, "eto", "a/bc-it0")]
    assert calls[0]["out"] == str(pipeline.dpo_adapter_dir(run, 2)) and calls[0]["config"] == run.dpo
    assert trained["adapter"] == str(pipeline.dpo_adapter_dir(run, 2)) and trained["n_pairs"] == 2
    assert pipeline.policy_adapter(db, run, 2) == pipeline.dpo_adapter_dir(run, 2)
    with store.reader(db) as con:
        assert con.execute("SELECT chosen_traj_id, rejected_traj_id FROM eto_pairs WHERE run_id = 'r1' "
                           "ORDER BY ALL").fetchall() == [("e/0", "x/0"), ("e/0", "x/1")]
        assert con.execute("SELECT iteration, phase FROM run_phases WHERE phase = 'dpo' ORDER BY ALL").fetchall() == [
            (1, "dpo"), (2, "dpo")]
        assert con.execute("SELECT iteration, train_method, n_dpo_pairs FROM run_comparison WHERE run_id = 'r1' "
                           "ORDER BY iteration").fetchall() == [(2, "eto", 2)]  # rows: iterations with trajectories


def test_eef_dpo_dpo_phase_continues_the_iterations_sft_adapter(db, monkeypatch) -> None:
    from eef_tasks import dpo

    calls: list[dict] = []
    monkeypatch.setattr(dpo, "train_dpo", lambda db_, run_id, iteration, out_dir, **kw: calls.append(kw) or {
        "path": str(out_dir), "n_pairs": 1, "n_optimizer_steps": 1, "final_loss": 0.69, "wall_s": 0.0})
    run = pipeline.register_run(db, config(method="eef+dpo"))
    with store.reader(db) as con:
        assert con.execute("SELECT method, n_sims FROM runs WHERE run_id = 'r1'").fetchall() == [("eef+dpo", 2)]
    for phase in ("select", "train", "evaluate"):
        pipeline.mark_phase(db, "r1", 0, phase, 0.0, {"adapter": "a/bc-it0"})
    with store.writer(db) as con:
        write_trajectories(con, [_explore("x/0", TASKS[0], "r1", 1, 1.0), _explore("x/1", TASKS[1], "r1", 1, 0.0),
                                 _explore("x/2", TASKS[1], "r1", 1, 1.0)])
    for phase in ("explore", "simulate"):
        pipeline.mark_phase(db, "r1", 1, phase, 0.0, {})
    selected = pipeline.run_phase(db, "r1", 1, "select")
    assert selected["method"] == "eef"  # the SFT set of an eef+dpo run is EEF's
    pipeline.mark_phase(db, "r1", 1, "train", 0.0, {"adapter": "a/eef-it1"})
    assert pipeline.run_phase(db, "r1", 1, "dpo")["adapter"] == str(pipeline.dpo_adapter_dir(run, 1))
    assert [(c["method"], str(c["sft_adapter"])) for c in calls] == [("eef", "a/eef-it1")]
    with store.reader(db) as con:  # the pair: s0 of the second task, x/2 (chosen) vs x/1
        assert con.execute("SELECT chosen_traj_id, rejected_traj_id FROM preference_pairs "
                           "WHERE run_id = 'r1'").fetchall() == [("x/2", "x/1")]
        assert con.execute("SELECT train_method, n_examples, n_dpo_pairs FROM run_comparison "
                           "WHERE run_id = 'r1' AND iteration = 1").fetchall() == [("eef", 2, 1)]


def test_a_setting_added_after_registration_counts_as_its_default(db) -> None:
    pipeline.register_run(db, config())
    with store.writer(db) as con:  # a run registered before the dpo settings existed
        stored = json.loads(con.execute("SELECT config FROM runs WHERE run_id = 'r1'").fetchone()[0])
        del stored["requested"]["dpo"], stored["config"]["dpo"]
        con.execute("UPDATE runs SET config = $c WHERE run_id = 'r1'", {"c": json.dumps(stored)})
    assert pipeline.register_run(db, config()).dpo == config().dpo
    with pytest.raises(PipelineError, match=r"exists with other settings \(dpo\)"):
        pipeline.register_run(db, config(dpo={"beta": 0.5}))


def test_a_field_added_to_a_section_after_registration_counts_as_its_default(db) -> None:
    """A run registered before train.sharding existed resumes (the cpu experiment of 66c84e9 did not)."""
    pipeline.register_run(db, config(train={"epochs": 2}))
    with store.writer(db) as con:
        stored = json.loads(con.execute("SELECT config FROM runs WHERE run_id = 'r1'").fetchone()[0])
        del stored["requested"]["train"]["sharding"], stored["config"]["train"]["sharding"]
        con.execute("UPDATE runs SET config = $c WHERE run_id = 'r1'", {"c": json.dumps(stored)})
    resumed = pipeline.register_run(db, config(train={"epochs": 2}))
    assert resumed.train.epochs == 2 and resumed.train.sharding == "auto"
    with pytest.raises(PipelineError, match=r"exists with other settings \(train\)"):
        pipeline.register_run(db, config(train={"epochs": 2, "sharding": "none"}))
    with pytest.raises(PipelineError, match=r"exists with other settings \(train\)"):
        pipeline.register_run(db, config(train={"epochs": 3}))


def test_presets_name_valid_expert_recipes() -> None:
    from eef_tasks.experts.synthetic import FAILURE_MODES
    from eef_tasks.pipeline import presets

    assert presets.expert_of("tiny") == presets.DEFAULT_EXPERT  # no EXPERT: seeds 0 and 1, every mode
    for name in presets.names():
        recipe = presets.expert_of(name)
        assert recipe["seeds"] and set(recipe["failure_modes"]) <= set(FAILURE_MODES)
        assert recipe["experts"] and set(recipe["experts"]) <= {"synthetic", "synthetic-cheap", "gold"}
    # the demo is one iteration of the cpu experiment's setting: the same expert data
    assert presets.expert_of("demo") == presets.expert_of("cpu")
    assert presets.expert_of("cpu")["experts"] == ["synthetic"]
    demo, cpu = presets.settings_of("demo"), presets.settings_of("cpu")
    assert demo["iterations"] == 1 and "report_split" not in demo
    assert {k: v for k, v in demo.items() if k not in ("iterations", "eval_limit")} == \
        {k: v for k, v in cpu.items() if k not in ("iterations", "eval_limit", "report_split")}
    with pytest.raises(PipelineError, match="unknown preset"):
        presets.expert_of("huge")


def test_register_resolves_task_sets_once_and_fixes_settings(db) -> None:
    registered = pipeline.register_run(db, config(task_names=["lifespan-shortest-lived"]))
    assert registered.train_tasks == TASKS[:2]  # expert data on train tasks of that name only
    assert len(registered.eval_tasks) == 3
    assert pipeline.load_run(db, "r1") == registered
    # the same request again is fine; only the mutable settings may change
    assert pipeline.register_run(db, config(task_names=["lifespan-shortest-lived"])) == registered
    more = pipeline.register_run(db, config(task_names=["lifespan-shortest-lived"], iterations=5, workers=2))
    assert (more.iterations, more.workers, more.train_tasks) == (5, 2, registered.train_tasks)
    with pytest.raises(PipelineError, match=r"exists with other settings \(n_sims\)"):
        pipeline.register_run(db, config(task_names=["lifespan-shortest-lived"], n_sims=3))
    with pytest.raises(PipelineError, match="max_new_tokens"):
        pipeline.register_run(db, config(task_names=["lifespan-shortest-lived"], max_new_tokens=7))
    with store.reader(db) as con:
        assert con.execute("SELECT n_sims FROM runs WHERE run_id = 'r1'").fetchall() == [(2,)]


def test_a_run_may_learn_from_some_experts_only(db) -> None:
    run = pipeline.register_run(db, config(experts=["synthetic"]))
    assert run.train_tasks == sorted(TASKS)
    with store.reader(db) as con:
        assert con.execute("SELECT experts FROM runs WHERE run_id = 'r1'").fetchall() == [(["synthetic"],)]
    with pytest.raises(PipelineError, match="no training tasks"):  # no gold data in the store
        pipeline.register_run(db, config(run_id="r2", experts=["gold"]))


def test_no_training_tasks_is_a_clear_error(db) -> None:
    with pytest.raises(PipelineError, match="no training tasks.*named boil.*eef collect"):
        pipeline.register_run(db, config(task_names=["boil"]))


def test_evaluation_never_uses_training_tasks(db) -> None:
    # ETO's dev split repeats 54 train pairs, e.g. find-animal/188; they count as train
    run = pipeline.register_run(db, config(task_names=["find-plant"], eval_limit=None))
    from eef_tasks.envs.scienceworld import catalog, find_task

    dev = [s.task_id for s in catalog("dev", tasks=["find-plant"])]
    assert run.eval_tasks and set(run.eval_tasks) < set(dev)
    assert all(find_task(t).split == "dev" for t in run.eval_tasks)
    leaked = next(t for t in dev if find_task(t).split == "train")
    with pytest.raises(PipelineError, match="must not be training tasks"):
        pipeline.register_run(db, config(run_id="r2", task_names=["find-plant"], eval_tasks=[leaked]))


def test_phase_order_markers_and_next_iteration(db) -> None:
    pipeline.register_run(db, config())
    assert pipeline.next_iteration(db, "r1") == 0
    assert pipeline.phases_of(0, config()) == ("select", "train", "evaluate")
    assert pipeline.phases_of(1, config()) == ("explore", "simulate", "select", "train", "evaluate")
    assert "simulate" not in pipeline.phases_of(1, config(method="rft", n_sims=0))
    with pytest.raises(PipelineError, match="train needs select first"):
        pipeline.run_phase(db, "r1", 0, "train")
    with pytest.raises(PipelineError, match="explore needs iteration 0 first"):
        pipeline.run_phase(db, "r1", 1, "explore")
    with pytest.raises(PipelineError, match="no explore phase in iteration 0"):
        pipeline.run_phase(db, "r1", 0, "explore")
    with pytest.raises(PipelineError, match="unknown phase"):
        pipeline.run_phase(db, "r1", 0, "dance")
    with pytest.raises(PipelineError, match="has 2 iterations, not 3"):
        pipeline.run_phase(db, "r1", 3, "select")

    first = pipeline.run_phase(db, "r1", 0, "select")
    assert first["method"] == "bc" and first["n_examples"] == 2 and "skipped" not in first
    again = pipeline.run_phase(db, "r1", 0, "select")  # recorded: not redone
    assert again["skipped"] and again["n_examples"] == 2
    with store.reader(db) as con:
        assert con.execute("SELECT count(*) FROM training_examples WHERE run_id = 'r1'").fetchall() == [(2,)]
        assert con.execute("SELECT iteration, phase FROM run_phases").fetchall() == [(0, "select")]
    # the other phases of iteration 0, recorded as done, move the run on
    for phase in ("train", "evaluate"):
        pipeline.mark_phase(db, "r1", 0, phase, 0.0, {"adapter": "a0"})
    assert pipeline.next_iteration(db, "r1") == 1
    for it in (1, 2):
        for phase in pipeline.phases_of(it, config()):
            pipeline.mark_phase(db, "r1", it, phase, 0.0, {"adapter": f"a{it}"})
    assert pipeline.next_iteration(db, "r1") is None
    assert pipeline.run_iteration(db, "r1") is None  # a finished run: a schedule does nothing


def test_unknown_run_is_a_clear_error(db) -> None:
    with pytest.raises(PipelineError, match="no pipeline run 'nope'"):
        pipeline.load_run(db, "nope")


def test_store_id_is_stable_per_file_and_new_per_file(db, tmp_path) -> None:
    assert pipeline.store_id(db) == pipeline.store_id(db)
    assert pipeline.store_id(db) != pipeline.store_id(tmp_path / "other.duckdb")


def test_phase_process_reports_result_and_failures(db) -> None:
    pipeline.register_run(db, config())
    logs: list[str] = []
    summary = pipeline.run_phase_process(db, "r1", 0, "select", on_log=logs.append)
    assert summary["n_examples"] == 2 and summary["by_kind"] == {"expert_success": 2}
    with pytest.raises(PipelineError, match=r"exit status 1\): .*explore needs iteration 0 first") as failed:
        pipeline.run_phase_process(db, "r1", 1, "explore")
    assert "\n" not in str(failed.value)  # one line; the log's tail stays on the error
    assert any("explore needs iteration 0 first" in line for line in failed.value.log_tail)


def test_a_phase_process_runs_the_parents_code_whatever_its_cwd(db, tmp_path, monkeypatch) -> None:
    """An eef_tasks package in the directory eef runs from (another checkout) is not what the phase
    process imports: it runs the same code as its parent."""
    pipeline.register_run(db, config())
    other = tmp_path / "checkout"
    (other / "eef_tasks" / "pipeline").mkdir(parents=True)
    (other / "eef_tasks" / "__init__.py").write_text('raise ImportError("the wrong eef_tasks")\n')
    (other / "eef_tasks" / "pipeline" / "__init__.py").write_text("")
    monkeypatch.chdir(other)
    summary = pipeline.run_phase_process(db, "r1", 0, "select")
    assert summary["n_examples"] == 2


def test_a_failed_phase_is_explained_in_one_line() -> None:
    from eef_tasks.pipeline.process import failure_line

    # its own error line wins over everything after it
    assert failure_line(["INFO x: start", "error: no adapter for it0", "INFO x: cleanup"]) == "no adapter for it0"
    # a traceback: its exception line, with a pydantic error's details joined on
    tail = ["Traceback (most recent call last):", '  File "a.py", line 3, in <module>', "    f()",
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for RunConfig", "train.sharding",
            "  Extra inputs are not permitted [type=extra_forbidden]"]
    assert failure_line(tail) == ("pydantic_core._pydantic_core.ValidationError: 1 validation error for RunConfig; "
                                  "train.sharding; Extra inputs are not permitted [type=extra_forbidden]")
    assert failure_line(["Traceback (most recent call last):", '  File "a.py", line 1', "KeyError: 'x'"]) == "KeyError: 'x'"
    # killed without a word: the last line it wrote, or that it wrote nothing
    assert failure_line(["INFO x: explore 3/8", ""]) == "INFO x: explore 3/8"
    assert failure_line([]) == "it wrote nothing"
    assert len(failure_line(["error: " + "x" * 1000])) == 400


def test_phase_command_line(db) -> None:
    pipeline.register_run(db, config())
    proc = subprocess.run(
        [sys.executable, "-m", "eef_tasks.pipeline", "select", "--db", str(db), "--run", "r1", "--iteration", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = next(line for line in proc.stdout.splitlines() if line.startswith(pipeline.RESULT_PREFIX))
    assert json.loads(result[len(pipeline.RESULT_PREFIX):])["n_examples"] == 2


def test_model_slot_is_exclusive_and_released_when_its_holder_is_killed(tmp_path) -> None:
    import signal
    import time

    lock = tmp_path / "model.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from eef_tasks.pipeline import gpu_slot\n"
         f"with gpu_slot({str(lock)!r}):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"PID {holder.pid}" in lock.read_text()
        got: list[float] = []

        import threading

        def wait_for_slot() -> None:
            with pipeline.gpu_slot(lock, poll_s=0.05):
                got.append(time.monotonic())

        waiter = threading.Thread(target=wait_for_slot)
        waiter.start()
        time.sleep(1.0)
        assert not got  # still held by the other process
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        waiter.join(timeout=10)
        assert got and got[0] >= killed_at  # the OS released the dead holder's lock
    finally:
        holder.kill()
        holder.wait()

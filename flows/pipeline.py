"""EEF and RFT as Prefect flows.

The story of one iteration of a run: explore from the initial states with the last policy, simulate
from the checkpoints of the expert's failed trajectories (EEF only), select the training set, train
a fresh LoRA adapter, evaluate it. Iteration 0 is behaviour cloning (select, train, evaluate).

- `iteration`  advances a named run by exactly one iteration from what the store holds: this is what
               a schedule triggers ("rerun per iteration"); on a finished run it does nothing.
- `eef`, `rft` register a run (settings are fixed from then on) and loop `iteration` until done
               (`eef` also runs eef+dpo: EEF with a DPO phase; `eto` runs ETO: DPO on explorations).
- `evaluate`   evaluates one iteration's adapter again (e.g. after a crashed evaluation).
- `compare`    the methods × iterations table and the win-rate plot, as artifacts and files.
- `experiment` the whole thing: collect expert data, an EEF run, an RFT run, compare
               (`eef run --preset demo` runs it on CPU in minutes); its own page carries the
               comparison and its log the one-line outcome.

What the Prefect UI shows (iteration tables, summaries, flow-run names) is built in `flows.artifacts`.

Tasks pass references (store path, run id, iteration) and each phase function lives in
`eef_tasks.pipeline`. Phases that use the model run in a child process, one at a time per machine (an OS file lock
that dies with its holder, `pipeline.gpu_slot`), with their log lines and progress forwarded to Prefect.
Resuming: tasks are cached on their inputs (which include the store file's id and the run's
settings) and their code; below that, every phase records itself in the store's `run_phases`
table when it finishes and reruns idempotently when it did not, so a killed flow rerun continues
where it stopped, with no duplicated or missing rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact,
)
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import BaseModel, ConfigDict, Field, field_validator

from eef_tasks import expert_cost, pipeline, report, store
from eef_tasks.credentials import VLLM_KEY_HINT, refuse_url_credentials
from eef_tasks.envs import registry
from eef_tasks.experts.synthetic import SYNTHETIC_EXPERTS
from eef_tasks.pipeline import RunConfig, presets
from flows import local_server  # the __main__ entry point: Ctrl-C / SIGTERM give one line, 130 / 143
from flows import artifacts
from flows.artifacts import artifact_key
from flows.collect import CollectParams, collect_flow

CACHE = INPUTS + TASK_SOURCE


# --- parameters (forms in the Prefect UI) -----------------------------------------------------------

# the extra runs of the experiment flow besides rft-xK (ExperimentParams.extra_runs)
EXTRA_RUNS = ("sft-all", "nat", "eef-binary", "eto", "eef+dpo")


def extra_run_id(name: str, extra: str) -> str:
    """The run id of an extra run of experiment `name`: NAME-EXTRA, '+' as '-' (run ids have no '+')."""
    return f"{name}-{extra.replace('+', '-')}"



def known_extra_runs(values: list[str]) -> list[str]:
    """A form's extra runs: EXTRA_RUNS or rft-xK, each once (pydantic validator of `extra_runs` fields)."""
    unknown = [v for v in values if v not in EXTRA_RUNS and not re.fullmatch(r"rft-x([1-9]|1[0-6])", v)]
    if unknown:
        raise ValueError(f"unknown extra run {unknown[0]!r}: one of {', '.join(EXTRA_RUNS)}, rft-xK (K 1..16)")
    return list(dict.fromkeys(values))


def known_preset(value: str) -> str:
    """A parameter form's preset: one of the recipes (pydantic validator of `preset` fields)."""
    if value not in presets.names():
        raise ValueError(f"unknown preset {value!r}: one of {', '.join(presets.names())}")
    return value


def overrides_without_credentials(overrides: dict) -> dict:
    """A form's run-setting overrides, refused when a vLLM URL carries credentials: checked on the
    parameters, not only when the RunConfig is built, because Prefect stores parameters first."""
    if isinstance(overrides.get("vllm_url"), str):
        refuse_url_credentials(overrides["vllm_url"], "overrides.vllm_url", VLLM_KEY_HINT)
    return overrides


class IterationParams(BaseModel):
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store")
    run_id: str = Field("eef-1", description="a run registered by the eef or rft flow")


class RunParams(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # a refused vllm_url is not echoed into logs
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store (expert data collected already)")
    run: RunConfig = Field(default_factory=lambda: RunConfig(run_id="eef-1"))


class RFTParams(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store (expert data collected already)")
    run: RunConfig = Field(default_factory=lambda: RunConfig(run_id="rft-1", method="rft", n_sims=0))


class BaselineParams(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store (expert data collected already)")
    run: RunConfig = Field(default_factory=lambda: RunConfig(run_id="nat-1", method="nat", n_sims=0, iterations=0))


class EvaluateParams(BaseModel):
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store")
    run_id: str = "eef-1"
    iteration: int = Field(0, ge=0)


class CompareParams(BaseModel):
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store")
    run_ids: list[str] = Field(default_factory=list, description="runs to compare; empty = all pipeline runs")
    out_dir: str = Field("data/reports", description="where the table (CSV, Markdown) and the plot go")


class ExperimentParams(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store")
    preset: str = Field("demo", description="run settings to start from: " + presets.describe())
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the runs are called NAME-eef and NAME-rft, e.g. demo-eef and demo-rft")
    expert: Literal["synthetic", "synthetic-cheap", "gold", "none"] | None = Field(
        None, description="collect this expert's trajectories on the training tasks first (none: use the store's; "
                          "empty: the preset's experts, e.g. demo: synthetic and gold)")
    more_experts: list[Literal["synthetic", "synthetic-cheap", "gold"]] = Field(
        default_factory=list, description="collect these experts' trajectories too, e.g. synthetic-cheap beside synthetic "
                                          "(a weaker, cheaper expert: the paper's GPT-3.5 beside GPT-4)")
    expert_seeds: list[int] | None = Field(
        None, description="synthetic expert: one trajectory per seed (None: the preset's, else [0, 1])")
    failure_modes: list[str] | None = Field(
        None, description="synthetic expert: failure modes to draw from (None: the preset's, else all)")
    rft_samples: int = Field(1, ge=1, le=16, description="k of the RFT baseline (RFT×k)")
    extra_runs: list[str] = Field(
        default_factory=list, description="more runs beside EEF and RFT, on the same tasks, called NAME-EXTRA (e.g. "
                                          "demo-nat; eef+dpo: NAME-eef-dpo): the offline baselines sft-all and nat, "
                                          "eef-binary (EEF with search=binary), eto (ETO: DPO on expert success vs "
                                          "failed exploration), eef+dpo (EEF, then DPO on its pairs), rft-xK (RFT "
                                          "with K rollouts per task, e.g. rft-x4); all but sft-all and nat share "
                                          "the BC adapter")
    overrides: dict = Field(default_factory=dict, description="run settings to change (the fields of the eef flow's run form), e.g. {\"iterations\": 3}")
    out_dir: str = Field("data/reports", description="where the comparison table (CSV, Markdown) and the plot go")

    _known_preset = field_validator("preset")(known_preset)

    _known_extra_runs = field_validator("extra_runs")(known_extra_runs)

    _no_credentials_in_url = field_validator("overrides")(overrides_without_credentials)


# --- tasks ------------------------------------------------------------------------------------------


def _run_phase(db: str, run_id: str, iteration: int, phase: str) -> dict:
    logger = get_run_logger()
    if phase not in pipeline.MODEL_PHASES:
        return pipeline.run_phase(db, run_id, iteration, phase)
    artifact = create_progress_artifact(0.0, description=f"{run_id} iteration {iteration}: {phase}")
    last = [-1.0]

    def progress(done: int, total: int) -> None:
        value = round(100.0 * done / total, 1) if total else 100.0
        if value != last[0]:
            last[0] = value
            update_progress_artifact(artifact, value)

    summary = pipeline.run_phase_process(  # the child holds the machine's model slot (pipeline.gpu_slot)
        db, run_id, iteration, phase, on_log=logger.info, on_progress=progress,
        # no progress bars in the log (the progress artifact shows progress): hub downloads, and the
        # tqdm of transformers' one-time GGUF conversion, which only TQDM_DISABLE turns off
        env={"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    update_progress_artifact(artifact, 100.0)
    logger.info("%s of %s iteration %d: %s", phase, run_id, iteration, _brief(summary))
    return summary


def _brief(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (list, dict)))


@task(name="explore", task_run_name="explore-it{iteration}", cache_policy=CACHE, persist_result=True)
def explore(db: str, store_id: str, run_id: str, settings: str, iteration: int) -> dict:
    """Rollouts of the previous iteration's policy from s0 of every training task."""
    return _run_phase(db, run_id, iteration, "explore")


@task(name="simulate", task_run_name="simulate-it{iteration}", cache_policy=CACHE, persist_result=True)
def simulate(db: str, store_id: str, run_id: str, settings: str, iteration: int) -> dict:
    """Rollouts from the checkpoints of every failed expert trajectory (prefix replay)."""
    return _run_phase(db, run_id, iteration, "simulate")


@task(name="select", task_run_name="select-it{iteration}", cache_policy=CACHE, persist_result=True)
def select(db: str, store_id: str, run_id: str, settings: str, iteration: int) -> dict:
    """The iteration's training set (sql/select): BC, or one example per important state."""
    return _run_phase(db, run_id, iteration, "select")


@task(name="train", task_run_name="train-it{iteration}", cache_policy=CACHE, persist_result=True)
def train(db: str, store_id: str, run_id: str, settings: str, iteration: int) -> dict:
    """A fresh LoRA adapter on the training set (loss on action tokens only)."""
    return _run_phase(db, run_id, iteration, "train")


@task(name="dpo", task_run_name="dpo-it{iteration}", cache_policy=CACHE, persist_result=True)
def dpo(db: str, store_id: str, run_id: str, settings: str, iteration: int) -> dict:
    """DPO (TRL) on the iteration's preference pairs: eef+dpo and eto runs."""
    return _run_phase(db, run_id, iteration, "dpo")


@task(name="evaluate", task_run_name="evaluate-it{iteration}", cache_policy=CACHE, persist_result=True)
def evaluate(db: str, store_id: str, run_id: str, settings: str, iteration: int) -> dict:
    """Win rate and mean reward of the new adapter on the evaluation tasks."""
    return _run_phase(db, run_id, iteration, "evaluate")


PHASE_TASKS = {"explore": explore, "simulate": simulate, "select": select, "train": train, "dpo": dpo,
               "evaluate": evaluate}


# --- flows ------------------------------------------------------------------------------------------


def _iteration_run_name() -> str:
    params = artifacts.current_params(IterationParams)
    return artifacts.iteration_run_name(params.db, params.run_id)


def _compare_run_name() -> str:
    return artifacts.compare_run_name(artifacts.current_params(CompareParams).run_ids)


@flow(name="iteration", flow_run_name=_iteration_run_name, log_prints=True)
def iteration_flow(params: IterationParams = IterationParams()) -> dict | None:
    """Advance run `run_id` by one iteration (the next unfinished one)."""
    db, run_id = params.db, params.run_id
    config = pipeline.load_run(db, run_id)
    iteration = pipeline.next_iteration(db, run_id)
    if iteration is None:
        print(f"run {run_id} has finished its {config.iterations} iterations: nothing to do")
        return None
    ids = (db, pipeline.store_id(db), run_id, pipeline.config_hash(config), iteration)
    summaries = {phase: PHASE_TASKS[phase](*ids) for phase in pipeline.phases_of(iteration, config)}
    artifacts.publish_iteration(db, run_id, iteration, summaries, config.method)
    ev = summaries["evaluate"]
    if ev.get("reused"):
        print(f"{run_id} iteration {iteration}: reuses the behaviour-cloning adapter {ev['adapter']} "
              "(evaluated by the run that trained it)")
    else:
        print(f"{run_id} iteration {iteration}: win rate {ev['win_rate']:.1%}, mean reward {ev['mean_reward']:.3f} "
              f"on {ev['n_eval']} {config.eval_split} tasks")
    return {"iteration": iteration, **summaries}


def _run_all(db: str, config: RunConfig) -> list[dict]:
    config = pipeline.register_run(db, config)
    done = []
    while (before := pipeline.next_iteration(db, config.run_id)) is not None:
        done.append(iteration_flow(IterationParams(db=db, run_id=config.run_id)))
        if pipeline.next_iteration(db, config.run_id) == before:  # pragma: no cover - a phase did not record itself
            raise pipeline.PipelineError(f"iteration {before} of {config.run_id} did not finish")
    return done


@flow(name="eef", flow_run_name="{params.run.run_id}", log_prints=True)
def eef_flow(params: RunParams = RunParams()) -> list[dict]:
    """Behaviour cloning, then I iterations of explore → simulate → select → train → evaluate (method
    eef+dpo: → dpo before evaluate)."""
    if params.run.method not in ("eef", "eef+dpo"):
        raise pipeline.PipelineError("the eef flow runs method 'eef' or 'eef+dpo'; use the rft flow for the baseline")
    return _run_all(params.db, params.run)


@flow(name="eto", flow_run_name="{params.run.run_id}", log_prints=True)
def eto_flow(params: RunParams = RunParams()) -> list[dict]:
    """ETO: behaviour cloning, then I iterations of explore → dpo → evaluate (DPO on pairs of an expert
    success and a failed exploration of the same task)."""
    run = params.run.model_copy(update={"method": "eto", "n_sims": 0})
    return _run_all(params.db, RunConfig(**run.model_dump()))


@flow(name="rft", flow_run_name="{params.run.run_id}", log_prints=True)
def rft_flow(params: RFTParams = RFTParams()) -> list[dict]:
    """The RFT baseline: the same iterations without simulations (M = 0); `run.samples` = k of RFT×k."""
    run = params.run.model_copy(update={"method": "rft", "n_sims": 0})
    return _run_all(params.db, RunConfig(**run.model_dump()))


@flow(name="baseline", flow_run_name="{params.run.run_id}", log_prints=True)
def baseline_flow(params: BaselineParams = BaselineParams()) -> list[dict]:
    """An offline baseline (sft-all or nat): one adapter trained on all expert data, then evaluated."""
    if params.run.method not in pipeline.OFFLINE_METHODS:
        raise pipeline.PipelineError("the baseline flow runs method 'sft-all' or 'nat'; use the eef or rft flow")
    return _run_all(params.db, params.run)


@flow(name="evaluate", flow_run_name="{params.run_id} it{params.iteration}", log_prints=True)
def evaluate_flow(params: EvaluateParams = EvaluateParams()) -> dict:
    """Evaluate one iteration's adapter (resumes a partial evaluation; a finished one is reported)."""
    config = pipeline.load_run(params.db, params.run_id)
    return evaluate(params.db, pipeline.store_id(params.db), params.run_id, pipeline.config_hash(config),
                    params.iteration)


@flow(name="compare", flow_run_name=_compare_run_name, log_prints=True)
def compare_flow(params: CompareParams = CompareParams()) -> dict:
    """Methods × iterations: win rate, mean reward, examples by kind, need-recover states, simulations."""
    df = report.comparison(params.db, params.run_ids or None)
    out = Path(params.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = artifact_key("-".join(params.run_ids)) or "all-runs"
    table_md = report.comparison_markdown(df)
    (out / f"compare-{name}.md").write_text(table_md + "\n")
    df.write_csv(out / f"compare-{name}.csv")
    plot = report.win_rate_plot(df, out / f"win-rate-{name}.png")
    report.win_rate_plot(df, out / f"win-rate-{name}.svg")
    first = ["run_id", "iteration", "win_rate", "mean_reward"]  # the UI cuts a wide table at its right
    create_table_artifact(df.select(first + [c for c in df.columns if c not in first]).to_dicts(),
                          key=artifact_key(f"compare-{name}"), description="methods × iterations")
    create_markdown_artifact(
        artifacts.comparison_page(df, plot, [str(out / f"compare-{name}.csv"), str(plot)]),
        key=artifact_key(f"compare-{name}-plot"), description="win rate per iteration per method",
    )
    print(table_md)
    # win rate per unit of expert cost (eef compare --cost): the table, and its plot when a run has both
    # costed expert data and a dev evaluation
    costs = expert_cost.cost_table(params.db, params.run_ids or None)
    costs.write_csv(out / f"cost-{name}.csv")
    if costs.filter(pl.col("win_rate").is_not_null() & pl.col("expert_cost_usd").is_not_null()).height:
        expert_cost.cost_plot(costs, out / f"win-rate-vs-cost-{name}.png")
    return {"rows": df.height, "plot": str(plot), "table": str(out / f"compare-{name}.csv"),
            "cost_table": str(out / f"cost-{name}.csv")}


def run_extra(db: str, preset: str, run_id: str, extra: str, overrides: dict, eef: RunConfig) -> str:
    """Run one extra run (EXTRA_RUNS or rft-xK) called `run_id` beside the registered EEF run `eef`:
    on its training, dev and test tasks, from its behaviour-cloning adapter (sft-all and nat: from the
    base model, as the paper trains them); returns the run id."""
    same_tasks = {"train_tasks": eef.train_tasks, "eval_tasks": eef.eval_tasks, "report_tasks": eef.report_tasks}
    shared_bc = {**overrides, **same_tasks, "bc_adapter": str(pipeline.adapter_dir(eef, 0))}
    if extra == "eef-binary":
        config = pipeline.preset_config(preset, run_id, "eef", **{**shared_bc, "search": "binary"})
        eef_flow(RunParams(db=db, run=config))
    elif extra == "eef+dpo":
        config = pipeline.preset_config(preset, run_id, "eef+dpo", **shared_bc)
        eef_flow(RunParams(db=db, run=config))
    elif extra == "eto":
        config = pipeline.preset_config(preset, run_id, "eto", **shared_bc)
        eto_flow(RunParams(db=db, run=config))
    elif extra.startswith("rft-x"):
        config = pipeline.preset_config(preset, run_id, "rft", **{**shared_bc, "samples": int(extra.removeprefix("rft-x"))})
        rft_flow(RFTParams(db=db, run=config))
    else:
        config = pipeline.preset_config(preset, run_id, extra, **{**overrides, **same_tasks})
        baseline_flow(BaselineParams(db=db, run=config))
    return config.run_id


@flow(name="experiment", flow_run_name="{params.name}", log_prints=True)
def experiment_flow(params: ExperimentParams = ExperimentParams()) -> dict:
    """Collect expert data, run EEF and RFT from one preset (sharing the BC adapter) and the extra runs
    asked for, compare them."""
    eef_config = pipeline.preset_config(params.preset, f"{params.name}-eef", "eef", **params.overrides)
    recipe = presets.expert_of(params.preset)
    experts = recipe["experts"] if params.expert is None else [params.expert, *params.more_experts]
    for expert in [e for e in experts if e != "none"]:
        synthetic = expert in SYNTHETIC_EXPERTS
        # offline experts play the task env's own backend (a run on agentgym:sciworld learns from
        # expert data collected in eef's ScienceWorld: the same task ids)
        collect_flow(CollectParams(
            db=params.db, env=registry.backend(eef_config.task_env).name, expert=expert, split=["train"],
            tasks=eef_config.task_names,
            task_ids=eef_config.train_tasks, limit=eef_config.train_limit,
            seeds=(params.expert_seeds or recipe["seeds"]) if synthetic else [0],
            failure_modes=(params.failure_modes or recipe["failure_modes"]) if synthetic else [],
            workers=min(eef_config.workers, 4),
        ))
    eef = pipeline.register_run(params.db, eef_config)
    rft_config = pipeline.preset_config(
        params.preset, f"{params.name}-rft", "rft",
        **{**params.overrides, "samples": params.rft_samples,
           "bc_adapter": str(pipeline.adapter_dir(eef, 0)), "train_tasks": eef.train_tasks,
           "eval_tasks": eef.eval_tasks, "report_tasks": eef.report_tasks},
    )
    eef_flow(RunParams(db=params.db, run=eef_config))
    rft_flow(RFTParams(db=params.db, run=rft_config))
    run_ids = [eef.run_id, rft_config.run_id]
    for extra in params.extra_runs:
        run_ids.append(run_extra(params.db, params.preset, extra_run_id(params.name, extra), extra,
                                 params.overrides, eef))
    compared = compare_flow(CompareParams(db=params.db, run_ids=run_ids, out_dir=params.out_dir))
    # the page of the run a user triggers shows the outcome, not only its subflows' pages
    df = report.comparison(params.db, run_ids)
    line = artifacts.headline(df, params.name)
    create_markdown_artifact(
        artifacts.comparison_page(df, Path(compared["plot"]), [compared["table"], compared["plot"]],
                                  heading=f"Experiment {params.name}: EEF vs RFT", lead=line),
        key=artifact_key(f"experiment-{params.name}"),
        description=f"Experiment {params.name}: EEF vs RFT, win rate per iteration (the compare flow's table).")
    get_run_logger().info(line)
    return compared


if __name__ == "__main__":
    local_server.main(experiment_flow)

"""The seeded experiment as a Prefect flow (`eef experiment`): EEF, RFT and RFT×k for every seed,
then the results folder.

    eef experiment --preset cpu --db data/cpu.duckdb --name cpu --seeds 0,1,2

The story: collect the expert's data once (every seed learns from the same expert data); for each
seed s, register NAME-eef-s<s> (its sampling and training seed s) and, for the first seed, compute
k of RFT×k from its checkpoints before anything runs (`experiment.rollout_plan`); run EEF, then
NAME-rft-s<s> (k = 1) and NAME-rftk-s<s> (k) from the EEF run's behaviour-cloning adapter, on the
same training, dev and test tasks, and the extra runs asked for (NAME-<extra>-s<s>, the paper's other
rows: `--extra sft-all,nat,eef-binary,eto,eef+dpo`); last, `experiment.group_report` and `write_results` into
results/NAME/. Every run resumes as the eef and rft flows do, so a rerun continues where it stopped.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from eef_tasks import experiment, pipeline, store
from eef_tasks.envs import registry
from eef_tasks.pipeline import RunConfig, presets
from flows import local_server
from flows.collect import CollectParams, collect_flow
from flows.pipeline import (RFTParams, RunParams, eef_flow, known_extra_runs, known_preset,
                            overrides_without_credentials, rft_flow, run_extra)


class SeedsParams(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store")
    preset: str = Field("cpu", description="run settings to start from: " + presets.describe())
    name: str = Field("cpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the runs are called NAME-eef-s0, NAME-rft-s0, NAME-rftk-s0, …")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="one EEF, RFT and RFT×k run each")
    rft_k: int | None = Field(None, ge=1, le=experiment.MAX_K,
                              description="k of RFT×k; empty = computed: EEF's episodes per iteration / training tasks")
    extra_runs: list[str] = Field(
        default_factory=list, description="more methods per seed, called NAME-EXTRA-s<seed> ('+' as '-', e.g. "
                                          "cpu-eef-dpo-s0), on the seed's tasks and from its BC adapter (sft-all, nat: "
                                          "from the base model): sft-all, nat, eef-binary, eto, eef+dpo, rft-xK; each "
                                          "joins the results as one more method compared with EEF")
    expert: Literal["synthetic", "gold", "none"] = Field(
        "synthetic", description="collect this expert's trajectories on the training tasks first (none: use the store's)")
    overrides: dict = Field(default_factory=dict, description="run settings to change, e.g. {\"iterations\": 2}")
    out_dir: str | None = Field(None, description="the results folder; empty = results/NAME")
    command: str | None = Field(None, description="the command line, written into results.md")

    _known_preset = field_validator("preset")(known_preset)
    _known_extra_runs = field_validator("extra_runs")(known_extra_runs)
    _no_credentials_in_url = field_validator("overrides")(overrides_without_credentials)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("seeds must be distinct and >= 0")
        return seeds


def extra_run_name(name: str, extra: str, seed: int) -> str:
    """The run of an extra method in the group: NAME-<extra>-s<seed>, '+' as '-' (cpu-eef-dpo-s0)."""
    return experiment.run_name(name, extra.replace("+", "-"), seed)


def seed_overrides(preset: str, overrides: dict, seed: int) -> dict:
    """The run settings of one seed: the sampling seed and the training seed (LoRA init, shuffling)."""
    task_env = overrides.get("env", "scienceworld")
    train = {**presets.settings_of(preset, registry.backend(str(task_env)).task_env).get("train", {}),
             **overrides.get("train", {}), "seed": seed}
    return {**overrides, "seed": seed, "train": train}


def _collect(params: SeedsParams, config: RunConfig) -> None:
    recipe = presets.expert_of(params.preset)
    collect_flow(CollectParams(
        db=params.db, env=registry.backend(config.task_env).name, expert=params.expert, split=["train"],
        tasks=config.task_names, task_ids=config.train_tasks, limit=config.train_limit,
        seeds=recipe["seeds"] if params.expert == "synthetic" else [0],
        failure_modes=recipe["failure_modes"] if params.expert == "synthetic" else [],
        workers=min(config.workers, 4),
    ))


@flow(name="seeds", flow_run_name="{params.name}", log_prints=True)
def seeds_flow(params: SeedsParams = SeedsParams()) -> dict:
    """EEF vs RFT vs RFT×k (equal rollout episodes per iteration) for every seed, then results/NAME/."""
    logger = get_run_logger()
    k = params.rft_k
    for index, seed in enumerate(params.seeds):
        values = seed_overrides(params.preset, params.overrides, seed)
        eef_config = pipeline.preset_config(params.preset, experiment.run_name(params.name, "eef", seed), "eef", **values)
        if index == 0 and params.expert != "none":
            _collect(params, eef_config)
        eef = pipeline.register_run(params.db, eef_config)
        if k is None:
            plan = experiment.rollout_plan(params.db, eef.run_id)
            k = plan.k
            logger.info("RFT×k: k = %d (EEF: %d training tasks + %d checkpoints = %d episodes per iteration)",
                        k, plan.n_train, plan.n_checkpoints, plan.eef_episodes)
        shared = {"bc_adapter": str(pipeline.adapter_dir(eef, 0)), "train_tasks": eef.train_tasks,
                  "eval_tasks": eef.eval_tasks, "report_tasks": eef.report_tasks}
        baselines = [pipeline.preset_config(params.preset, experiment.run_name(params.name, label, seed), "rft",
                                            **{**values, **shared, "samples": samples})
                     for label, samples in (("rft", 1), ("rftk", k))]
        eef_flow(RunParams(db=params.db, run=eef_config))
        for config in baselines:
            rft_flow(RFTParams(db=params.db, run=config))
        for extra in params.extra_runs:
            run_extra(params.db, params.preset, extra_run_name(params.name, extra, seed), extra, values, eef)
    result = experiment.group_report(params.db, params.name)
    out = experiment.write_results(result, params.out_dir or f"results/{params.name}", params.command)
    for row in result.differences.iter_rows(named=True):
        logger.info("%s: %+.1f points, 95 %% interval [%+.1f, %+.1f]: %s", row["comparison"], 100 * row["difference"],
                    100 * row["ci_low"], 100 * row["ci_high"], row["verdict"])
    return {"results": str(out), "k": k, "runs": result.runs["run_id"].to_list()}


if __name__ == "__main__":
    local_server.main(seeds_flow)

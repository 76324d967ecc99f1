"""A run's settings (`RunConfig`): everything that defines one experiment, which of it may change
after the run is registered (`MUTABLE_SETTINGS`), and a preset's settings as a RunConfig."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from eef_tasks.credentials import ENV_URL_HINT, VLLM_KEY_HINT, refuse_url_credentials
from eef_tasks.dpo import DPOTrainConfig
from eef_tasks.envs import registry
from eef_tasks.envs.base import EnvError
from eef_tasks.pipeline import presets
from eef_tasks.pipeline.errors import PipelineError
from eef_tasks.training import TrainConfig

# settings that may change between invocations of a registered run; every other setting is fixed
MUTABLE_SETTINGS = frozenset({"iterations", "workers", "engine", "vllm_url", "served_model", "vllm_adapters",
                              "max_failed_fraction", "env_url", "runner", "ray_address", "ray_shards", "ray_gpus_per_shard",
                              "train_processes"})


# methods trained once, at iteration 0, on expert data only, in place of behaviour cloning (the paper's
# SFT-ALL and NAT rows); bc itself (SFT-POS) is every run's iteration 0
OFFLINE_METHODS = frozenset({"sft-all", "nat"})

# methods with a dpo phase after BC, and the preference pairs it trains on (eef_tasks.preferences):
# eef+dpo continues each iteration's EEF adapter with DPO on the pairs of its important states; eto
# (ETO) has no SFT after BC: each iteration continues the previous policy with DPO on pairs of an
# expert success and a failed exploration of the same task (sql/views/46_eto_pairs.sql)
DPO_PAIRS = {"eef+dpo": "eef", "eto": "eto"}


class RunConfig(BaseModel):
    """Everything that defines a run. The defaults are the paper's (I = 4 iterations, M = 5, 6 epochs,
    lr 5e-5, batch 64): a GPU job; the experiment flow's presets (tiny, demo) make runs for a CPU."""

    # The docstring and the descriptions are what the Prefect UI's form shows: plain words, no angle
    # brackets (the form renders them as HTML and drops them), nothing only the code shows.

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # no refused URL in logs

    run_id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="name of the run (experiment)")
    method: Literal["eef", "rft", "sft-all", "nat", "eto", "eef+dpo"] = Field(
        "eef", description="eef; rft (the baseline: no simulations); sft-all or nat (trained once on all expert data); "
                           "eto (DPO on expert success vs failed exploration); eef+dpo (eef, then DPO on its pairs)")
    n_sims: int = Field(5, ge=0, le=50, description="M: simulations per failed expert trajectory (rft: 0)")
    search: Literal["uniform", "binary"] = Field(
        "uniform", description="eef: simulate from M evenly spaced checkpoints (uniform) or bisect each failed "
                               "expert trajectory's steps (binary; n_sims = 0: M does not apply)")
    samples: int = Field(1, ge=1, le=16, description="k: rollouts per training task and iteration (RFT×k)")
    iterations: int = Field(4, ge=0, le=50, description="I: iterations after behaviour cloning")
    env: registry.EnvName = Field("scienceworld", description="a registered environment: scienceworld, webshop, agentgym:webshop, …")
    env_url: str | None = Field(None, description="server of an environment that has one (agentgym:*; several, comma-separated, share the episodes; "
                                                  "default $EEF_AGENTGYM_WEBSHOP_URL for agentgym:webshop, …, then $EEF_AGENTGYM_URL)")
    task_names: list[str] = Field(default_factory=list, description="restrict to these task names, e.g. find-plant; empty = all")
    experts: list[str] = Field(default_factory=list, description="learn only from these experts' trajectories, e.g. "
                                                                 "synthetic; empty = every expert in the store")
    train_tasks: list[str] = Field(default_factory=list, description="training task ids; empty = train tasks in the store with expert data")
    train_limit: int | None = Field(None, ge=1, description="at most this many training tasks")
    eval_split: Literal["dev", "test"] = Field("dev", description="split the adapters are evaluated on")
    eval_tasks: list[str] = Field(default_factory=list, description="evaluation task ids; empty = the catalog's eval_split")
    eval_limit: int | None = Field(None, ge=1, description="at most this many evaluation tasks")
    report_split: Literal["dev", "test"] | None = Field(
        None, description="also evaluate every iteration's adapter on this split (eval_split chooses the "
                          "iteration, this one reports it: dev and test); empty = eval_split only")
    report_tasks: list[str] = Field(default_factory=list, description="report_split's task ids; empty = the "
                                                                      "catalog's report_split, eval_limit of them")
    base_model: str | None = Field(None, description="local path or hub id; None = SmolLM2-135M-Instruct")
    bc_adapter: str | None = Field(None, description="use this behaviour-cloning adapter instead of training one")
    train: TrainConfig = Field(default_factory=TrainConfig)
    dpo: DPOTrainConfig = Field(default_factory=DPOTrainConfig, description="eto, eef+dpo: the DPO phase's training")
    explore_temperature: float = Field(1.0, ge=0)
    eval_temperature: float = Field(0.0, ge=0, description="0 = greedy evaluation")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    max_steps: int | None = Field(None, ge=1, description="cap on each episode's step limit")
    seed: int = 0
    workers: int = Field(4, ge=1, le=64, description="concurrent episodes (one game process each)")
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: local transformers; vllm: a vLLM server")
    vllm_url: str | None = Field(None, description="vLLM server, e.g. http://vllm:8000/v1; several replicas, comma-separated, share the "
                                                   "requests (least outstanding; a dead one is skipped) (default $EEF_VLLM_URL)")
    served_model: str | None = Field(None, description="the base model's name on the vLLM server")
    vllm_adapters: Literal["auto", "runtime", "merged"] = Field(
        "auto", description="engine vllm, the phase's own server (no vllm_url): runtime = the adapter loaded as a "
                            "LoRA at run time; merged = merged into a checkpoint that the phase's server serves "
                            "(eager on CPU); auto = merged on CPU (1.2-1.5x the hf engine there, runtime LoRA "
                            "0.4-0.6x: benchmarks/README.md), runtime on GPU. A given vllm_url: always runtime")
    runner: Literal["local", "ray"] = Field("local", description="local: this machine's game processes; "
                                            "ray: rollout shards on a Ray cluster (needs the ray extra of the package)")
    ray_address: str | None = Field("auto", description="Ray cluster: auto (the cluster started with ray start on "
                                    "this machine), ray://host:10001, or empty for a Ray instance started per phase")
    ray_shards: int = Field(2, ge=1, le=1024, description="runner ray: shards per rollout phase (workers are split over them)")
    ray_gpus_per_shard: float = Field(0.0, ge=0, description="runner ray: GPUs Ray gives each shard (a local model runs on it)")
    train_processes: int = Field(1, ge=1, le=64, description="train phase: data-parallel processes (torchrun; gloo on CPU, "
                                 "one GPU each with NCCL); the adapter is the one a single process trains")
    adapters_dir: str = Field("data/adapters", description="folder of the adapters, one per run and iteration, e.g. data/adapters/demo-eef/eef-it1")
    max_failed_fraction: float = Field(0.05, ge=0, le=1, description="episodes that may fail (crashed game) before a phase fails")

    @model_validator(mode="after")
    def _method_and_m(self) -> RunConfig:
        if self.method in OFFLINE_METHODS and (self.n_sims != 0 or self.iterations != 0):
            raise ValueError(f"{self.method} is trained once on expert data (iteration 0): "
                             "n_sims and iterations must be 0")
        if self.method in OFFLINE_METHODS and self.bc_adapter:
            raise ValueError(f"{self.method} trains its own iteration-0 adapter from the base model: no bc_adapter")
        if self.task_names:  # a misspelt name, or names where the env has none: refused before anything runs
            try:
                registry.task_name_filter(self.env, self.task_names)
            except EnvError as exc:
                raise ValueError(str(exc)) from None
        if self.train.finetune == "full" and (self.engine == "vllm" or self.method in ("eto", "eef+dpo")):
            why = "the vllm engine" if self.engine == "vllm" else f"{self.method}'s DPO phase"
            raise ValueError(f"train.finetune='full' writes whole models, and {why} works on LoRA adapters: "
                             "use finetune='lora' or engine='hf'")
        if self.report_split is not None and self.report_split == self.eval_split:
            raise ValueError(f"report_split {self.report_split!r} is eval_split already: leave it empty or use the other split")
        if self.search == "binary":
            if self.method != "eef" or self.n_sims != 0:
                raise ValueError("search='binary' is an eef option that picks its own states: method 'eef', n_sims 0")
            return self
        if self.method in ("rft", "eto") and self.n_sims != 0:
            raise ValueError(f"{self.method} runs have no simulations: n_sims must be 0")
        if self.method in ("eef", "eef+dpo") and self.n_sims == 0:
            raise ValueError("eef needs n_sims >= 1 (n_sims = 0 is the rft baseline: method='rft')")
        return self

    @field_validator("vllm_url", "env_url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        # run settings are flow parameters and runs.config: both stored in clear
        how = VLLM_KEY_HINT if info.field_name == "vllm_url" else ENV_URL_HINT
        return url if url is None else refuse_url_credentials(url, info.field_name, how)

    def train_method(self, iteration: int) -> str:
        """The training_examples method of an iteration: bc at iteration 0 (the offline methods: their
        own set), else the run's method (eef+dpo: eef, whose set its SFT adapter learns; eto has no set
        after iteration 0, only pairs)."""
        if iteration == 0:
            return self.method if self.method in OFFLINE_METHODS else "bc"
        return "eef" if self.method == "eef+dpo" else self.method

    @property
    def dpo_pairs(self) -> str | None:
        """The pairs the run's dpo phase trains on (eef_tasks.preferences: 'eef' or 'eto'); None: no dpo phase."""
        return DPO_PAIRS.get(self.method)

    @property
    def prompt_tag(self) -> str | None:
        """NAT's marker the run's policy is prompted with (chat.PROMPT_TAGS): 'positive' for nat."""
        return "positive" if self.method == "nat" else None

    @property
    def task_env(self) -> str:
        """The env of the run's task ids (the backend `env` plays them)."""
        return registry.backend(self.env).task_env


def validation_message(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "settings"
    return f"run settings, {where}: {problem['msg'].removeprefix('Value error, ')}"


NESTED_SETTINGS = ("train", "dpo")  # the run settings that are sections of fields (--set train.lora_r=8)


def preset_config(preset: str, run_id: str, method: str = "eef", **overrides: Any) -> RunConfig:
    """The RunConfig of a preset for run `run_id` (rft, eto and binary search: M = 0; sft-all, nat: M = 0
    and no iterations after iteration 0), with `overrides` applied."""
    nested = {k: v for k, v in overrides.items() if "." in k}
    overrides = {k: v for k, v in overrides.items() if "." not in k}
    values = {**presets.settings_of(preset, _task_env_of(overrides.get("env", "scienceworld"))),
              "run_id": run_id, "method": method, **overrides}
    for key, value in nested.items():  # train.finetune=full: one field of a section, the preset's others kept
        section, _, field = key.partition(".")
        if section not in NESTED_SETTINGS or not field or "." in field:
            raise PipelineError(f"setting {key!r}: dotted keys name one field of {' or '.join(NESTED_SETTINGS)}, "
                                "e.g. train.finetune")
        current = values.get(section) or {}
        values[section] = {**(current.model_dump() if isinstance(current, BaseModel) else current), field: value}
    if method in ("rft", "eto", *OFFLINE_METHODS) or values.get("search") == "binary":
        values["n_sims"] = 0
    if method in OFFLINE_METHODS:
        values["iterations"] = 0
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise PipelineError(validation_message(exc)) from None


def _task_env_of(env: Any) -> str | None:
    """The task env a run's `env` plays (None for an unknown one: RunConfig's validation names it)."""
    try:
        return registry.backend(str(env)).task_env
    except EnvError:
        return None


def config_hash(config: RunConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]

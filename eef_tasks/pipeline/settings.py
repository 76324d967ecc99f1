"""A run's settings (`RunConfig`): everything that defines one experiment, and which of it may
change after the run is registered (`MUTABLE_SETTINGS`)."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eef_tasks.envs import registry
from eef_tasks.envs.base import EnvError
from eef_tasks.errors import UserError
from eef_tasks.training import TrainConfig

# settings that may change between invocations of a registered run; every other setting is fixed
MUTABLE_SETTINGS = frozenset({"iterations", "workers", "engine", "vllm_url", "served_model", "max_failed_fraction",
                              "env_url"})


class PipelineError(UserError):
    """A phase cannot run or did not finish; the message says why and what to do."""


class RunConfig(BaseModel):
    """Everything that defines a run. Defaults are METHOD.md's (I = 4, M = 5, 6 epochs, lr 5e-5,
    batch 64); presets (`eef_tasks.pipeline.presets`) make small runs. Shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="name of the run (experiment)")
    method: Literal["eef", "rft"] = Field("eef", description="eef, or rft (the baseline: no simulations)")
    n_sims: int = Field(5, ge=0, le=50, description="M: simulations per failed expert trajectory (rft: 0)")
    samples: int = Field(1, ge=1, le=16, description="k: rollouts per training task and iteration (RFT×k)")
    iterations: int = Field(4, ge=0, le=50, description="I: iterations after behaviour cloning")
    env: str = Field("scienceworld", description="a registered environment: scienceworld, agentgym:<env>, …")
    env_url: str | None = Field(None, description="server of an environment that has one (agentgym:*; "
                                                  "default $EEF_AGENTGYM_<ENV>_URL, then $EEF_AGENTGYM_URL)")
    task_names: list[str] = Field(default_factory=list, description="restrict to these task names, e.g. find-plant; empty = all")
    train_tasks: list[str] = Field(default_factory=list, description="training task ids; empty = train tasks in the store with expert data")
    train_limit: int | None = Field(None, ge=1, description="at most this many training tasks")
    eval_split: Literal["dev", "test"] = Field("dev", description="split the adapters are evaluated on")
    eval_tasks: list[str] = Field(default_factory=list, description="evaluation task ids; empty = the catalog's eval_split")
    eval_limit: int | None = Field(None, ge=1, description="at most this many evaluation tasks")
    base_model: str | None = Field(None, description="local path or hub id; None = SmolLM2-135M-Instruct")
    bc_adapter: str | None = Field(None, description="use this behaviour-cloning adapter instead of training one")
    train: TrainConfig = Field(default_factory=TrainConfig)
    explore_temperature: float = Field(1.0, ge=0)
    eval_temperature: float = Field(0.0, ge=0, description="0 = greedy evaluation")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    max_steps: int | None = Field(None, ge=1, description="cap on each episode's step limit")
    seed: int = 0
    workers: int = Field(4, ge=1, le=64, description="concurrent episodes (one game process each)")
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: local transformers; vllm: a vLLM server")
    vllm_url: str | None = Field(None, description="vLLM server, e.g. http://vllm:8000/v1 (default $EEF_VLLM_URL)")
    served_model: str | None = Field(None, description="the base model's name on the vLLM server")
    adapters_dir: str = Field("data/adapters", description="adapters go to <adapters_dir>/<run>/<method>-it<i>")
    max_failed_fraction: float = Field(0.05, ge=0, le=1, description="episodes that may fail (crashed game) before a phase fails")

    @field_validator("env")
    @classmethod
    def _registered_env(cls, value: str) -> str:
        try:
            return registry.backend(value).name
        except EnvError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _method_and_m(self) -> RunConfig:
        if self.method == "rft" and self.n_sims != 0:
            raise ValueError("rft runs have no simulations: n_sims must be 0")
        if self.method == "eef" and self.n_sims == 0:
            raise ValueError("eef needs n_sims >= 1 (n_sims = 0 is the rft baseline: method='rft')")
        return self

    @property
    def task_env(self) -> str:
        """The env of the run's task ids (the backend `env` plays them)."""
        return registry.backend(self.env).task_env


def validation_message(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "settings"
    return f"run settings, {where}: {problem['msg']}"


def config_hash(config: RunConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]

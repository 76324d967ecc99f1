"""Collect flow: run an expert on a set of tasks and store every trajectory it produces.

The story: pick the tasks, run the expert in a pool of environment workers, write each batch of
finished trajectories in one transaction, and leave a summary artifact in the Prefect UI.
Rerunning (or resuming a killed run) skips what is stored; nothing is written twice.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field, field_validator

from eef_tasks import store
from eef_tasks.collect import collect_experts
from eef_tasks.credentials import LLM_KEY_HINT, refuse_url_credentials
from eef_tasks.envs import registry
from eef_tasks.experts.llm import LLMExpertConfig
from flows import artifacts
from flows import local_server  # the __main__ entry point: Ctrl-C / SIGTERM give one line, 130 / 143


class CollectParams(BaseModel):
    """What to collect; shown as a form in the Prefect UI."""

    # a refused parameter (a URL with credentials) is not echoed into logs
    model_config = ConfigDict(hide_input_in_errors=True)

    db: str = Field(str(store.DEFAULT_DB), description="the DuckDB store")
    env: registry.EnvName = Field("scienceworld", description="a registered environment (offline experts: scienceworld, webshop)")
    expert: Literal["gold", "synthetic", "synthetic-cheap", "llm"] = Field(
        "gold", description="gold, synthetic, synthetic-cheap (weaker, priced as GPT-3.5) or an LLM endpoint")
    split: list[Literal["train", "dev", "test"]] = Field(default_factory=lambda: ["train"])
    tasks: list[str] = Field(default_factory=list, description="task names, e.g. boil; empty = all")
    task_ids: list[str] = Field(default_factory=list, description="explicit task ids; overrides split/tasks")
    catalog: Literal["eto", "package"] = "eto"
    limit: int | None = Field(None, ge=1, description="at most this many tasks")
    seeds: list[int] = Field(default_factory=lambda: [0], description="synthetic expert seeds")
    failure_modes: list[str] = Field(default_factory=list, description="synthetic expert: failure modes to draw from; empty = all")
    workers: int = Field(1, ge=1, le=16)
    llm: LLMExpertConfig | None = Field(
        None, description="expert = llm: endpoint, model, API key source (env var or Prefect Secret), prices")

    @field_validator("llm")
    @classmethod
    def _no_credentials_in_url(cls, llm: LLMExpertConfig | None) -> LLMExpertConfig | None:
        # Prefect stores flow parameters in clear: the key comes from the environment instead
        if llm is not None:
            refuse_url_credentials(llm.base_url, "llm.base_url", LLM_KEY_HINT)
        return llm


@task(name="collect-expert-trajectories")
def collect_trajectories(params: CollectParams) -> dict:
    """Thin wrapper over eef_tasks.collect.collect_experts; returns the summary's counts."""
    summary = collect_experts(
        params.db, params.env, params.expert,
        task_ids=params.task_ids or None, split=None if params.task_ids else params.split,
        tasks=params.tasks or None, catalog=params.catalog, limit=params.limit,
        n_workers=params.workers, seed=params.seeds, progress=False, llm=params.llm,
        failure_modes=params.failure_modes or None,
    )
    return {
        "requested": summary.requested, "already_stored": summary.already_stored,
        "written": summary.written, "successes": summary.successes, "failures": summary.failures,
        "prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.completion_tokens,
        "cost_usd": round(summary.cost_usd, 6),
        "errors": [f"{traj_id}: {why}" for traj_id, why in summary.errors],
    }


def _run_name() -> str:
    params = artifacts.current_params(CollectParams)
    return artifacts.collect_run_name(params.expert, params.db)


@flow(name="collect", flow_run_name=_run_name, log_prints=True)
def collect_flow(params: CollectParams = CollectParams()) -> dict:
    counts = collect_trajectories(params)
    rows = "\n".join(f"| {key} | {value if key != 'errors' else len(value)} |" for key, value in counts.items())
    create_markdown_artifact(
        key=f"collect-{params.env}-{params.expert}",
        markdown=f"## {params.expert} expert on {params.env}\n\n| | |\n|---|---|\n{rows}\n",
        description="expert collection summary",
    )
    print(counts)
    return counts


if __name__ == "__main__":
    local_server.main(collect_flow)

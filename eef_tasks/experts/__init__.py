"""Offline experts: produce expert trajectories by running actions in the real environment.

- 'gold' (`gold.py`): ScienceWorld's own gold action sequences, cached on disk.
- 'synthetic' (`synthetic.py`): a seeded expert derived from the gold paths that fails like real
  experts do; labelled `expert='synthetic'`, `meta.synthetic = true`. 'synthetic-cheap' is a weaker
  one (it fails more) at a lower price: both carry a stated cost model's tokens and cost in `meta`.

Both produce `TrajectoryRecord`s with `source='expert'` whose observations and rewards are what
the game returned for the actions (`run_expert`), written by `eef_tasks.collect.collect_experts`.
Trajectory ids are deterministic: 'gold/<task_id>' and 'synthetic/<task_id>/<seed>'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eef_tasks.envs.base import EnvError, TaskSpec
from eef_tasks.experts.gold import GOLD_EXPERT, GoldPath, generate_gold, gold_plan
from eef_tasks.experts.synthetic import SYNTHETIC_EXPERT, SYNTHETIC_EXPERTS, success_rate_of, synthetic_plan
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord

EXPERTS = (GOLD_EXPERT, *SYNTHETIC_EXPERTS)


def traj_id_for(expert: str, task_id: str, seed: int = 0) -> str:
    """Deterministic trajectory id: 'gold/<task_id>' (the gold path has no seed) or
    '<expert>/<task_id>/<seed>'."""
    if expert == GOLD_EXPERT:
        return f"{GOLD_EXPERT}/{task_id}"
    return f"{expert}/{task_id}/{seed}"


@dataclass
class ExpertRun:
    """One expert trajectory as run in the environment (before it becomes a record)."""

    task_id: str
    expert: str
    seed: int
    traj_id: str
    instruction: str
    initial_observation: str
    actions: list[str]
    observations: list[str]
    rewards: list[float]
    reward: float
    meta: dict[str, Any] = field(default_factory=dict)
    new_gold: GoldPath | None = None  # a gold path generated for this run (to be cached)

    @property
    def success(self) -> bool:
        return self.reward >= 1.0


def plan_actions(
    expert: str,
    gold: GoldPath,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    success_rate: float | None = None,
    failure_modes: tuple[str, ...] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The actions an expert takes on a task, and metadata describing them (`failure_modes`:
    the synthetic expert's modes to draw from; None = all; `success_rate` None: the expert's own)."""
    if expert == GOLD_EXPERT:
        return gold_plan(gold)
    if expert in SYNTHETIC_EXPERTS:
        plan = synthetic_plan(
            gold.actions, task_id=gold.task_id, seed=seed, success_rate=success_rate_of(expert, success_rate),
            max_steps=max_steps, modes=failure_modes, expert=expert,
        )
        return plan.actions, {
            "synthetic": True, "mode": plan.mode, "intends_success": plan.intends_success,
            "gold_generated_at": gold.generated_at, **plan.meta,
        }
    raise EnvError(f"unknown expert {expert!r}; offline experts: {', '.join(EXPERTS)}")


def run_expert(
    env: Any,
    task_id: str,
    expert: str = GOLD_EXPERT,
    *,
    seed: int = 0,
    gold: GoldPath | None = None,
    max_steps: int | None = None,
    success_rate: float | None = None,
    failure_modes: tuple[str, ...] | None = None,
) -> ExpertRun:
    """Run an offline expert on one task in `env` (a ScienceWorld or a WebShop); for ScienceWorld
    generates the gold path when none is given (returned as `new_gold` so that the caller can cache
    it). `max_steps` shapes the synthetic expert's plan; the actions themselves are not cut at the
    task's step limit. A synthetic expert's meta gets its stated cost model's tokens and cost for the
    actions the game took."""
    new_gold = None
    if getattr(env, "name", None) == "webshop":
        # WebShop's experts plan from the goal and the search index, with no gold-path cache
        from eef_tasks.experts import webshop

        actions, meta = webshop.plan(
            expert, task_id, seed=seed, max_steps=max_steps, success_rate=success_rate_of(expert, success_rate)
        )
    else:
        if gold is None:
            gold = new_gold = generate_gold(env, task_id)
        actions, meta = plan_actions(
            expert, gold, seed=seed, max_steps=max_steps, success_rate=success_rate,
            failure_modes=failure_modes,
        )
    replay = env.replay(actions, task_id=task_id)
    meta = {
        **meta,
        "initial_observation": replay.initial_observation,
        "simplifications": getattr(env, "simplifications", None),
        "env_version": _env_version(env),
        "invalid_steps": [k for k, info in enumerate(replay.infos) if info.get("invalid")],
        "planned_steps": len(actions),
    }
    if max_steps is not None and replay.n_steps > max_steps:
        meta["exceeds_max_steps"] = max_steps
    if expert in SYNTHETIC_EXPERTS:
        meta.update(SYNTHETIC_EXPERTS[expert].cost.meta(replay.n_steps))
    return ExpertRun(
        task_id=task_id, expert=expert, seed=seed, traj_id=traj_id_for(expert, task_id, seed),
        instruction=replay.instruction, initial_observation=replay.initial_observation,
        actions=list(actions[: replay.n_steps]), observations=replay.observations,
        rewards=replay.rewards, reward=replay.reward, meta=meta, new_gold=new_gold,
    )


def _env_version(env: Any) -> str | None:
    if getattr(env, "name", None) == "scienceworld":
        from eef_tasks.envs.scienceworld import SCIENCEWORLD_VERSION

        return f"scienceworld=={SCIENCEWORLD_VERSION}"
    from eef_tasks.envs.webshop import DATA_VERSION, WebShop

    if isinstance(env, WebShop):  # an AgentGym WebShop server's data is its own
        return DATA_VERSION
    return None


def task_record(spec: TaskSpec, instruction: str | None = None) -> TaskRecord:
    """The tasks-table row of a catalog entry (instruction: the one the game gave, if known)."""
    text = instruction if instruction is not None else spec.instruction
    if text is None:
        raise EnvError(f"no instruction known for {spec.task_id}: run the task once to get it")
    return TaskRecord(
        task_id=spec.task_id, env=spec.env, split=spec.split, instruction=text,
        max_steps=spec.max_steps, meta=dict(spec.meta) or None,
    )


def to_record(run: ExpertRun, spec: TaskSpec, *, with_task: bool = True) -> TrajectoryRecord:
    """The expert trajectory as a `TrajectoryRecord` (source='expert', thought=None).

    With `with_task=False` the record does not describe its task (env/split/instruction): pass
    `task_record(spec, run.instruction)` to `write_trajectories` instead, which also carries the
    task's max_steps and meta.
    """
    return TrajectoryRecord(
        traj_id=run.traj_id,
        task_id=run.task_id,
        env=spec.env if with_task else None,
        split=spec.split if with_task else None,
        instruction=run.instruction if with_task else None,
        source="expert",
        expert=run.expert,
        reward=run.reward,
        meta=run.meta,
        steps=[
            StepRecord(action=a, observation=o, reward=r)
            for a, o, r in zip(run.actions, run.observations, run.rewards, strict=True)
        ],
    )


__all__ = [
    "EXPERTS", "ExpertRun", "GOLD_EXPERT", "SYNTHETIC_EXPERT", "SYNTHETIC_EXPERTS", "plan_actions", "run_expert",
    "task_record", "to_record", "traj_id_for",
]

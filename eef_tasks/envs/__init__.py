"""Text environments behind one small interface (`base.Env`), their task catalogs and a pool of
worker processes to run many episodes in parallel (`pool.EnvPool`).

Task ids are '<env>/<task-name>/<variation>', e.g. 'scienceworld/boil/12'; AgentGym's servers
(`agentgym.AgentGymEnv`: WebShop, SciWorld, ALFWorld, BabyAI, TextCraft) use '<env>/<data_idx>',
e.g. 'webshop/12'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eef_tasks.envs.base import (
    Env,
    EnvCrashed,
    EnvError,
    EpisodeOver,
    ReplayResult,
    Split,
    StepResult,
    TaskSpec,
    find_drift,
    make_task_id,
    parse_task_id,
    same_observation,
)

ENVS = ("scienceworld",)
AGENTGYM_ENVS = ("webshop", "sciworld", "alfworld", "babyai", "textcraft")
AGENTGYM_PREFIX = "agentgym:"


def _agentgym_env(name: str) -> str | None:
    """'webshop' for 'agentgym:webshop' (or a bare AgentGym env name), else None."""
    bare = name.removeprefix(AGENTGYM_PREFIX)
    if name.startswith(AGENTGYM_PREFIX) or bare in AGENTGYM_ENVS:
        return bare
    return None


def make_env(name: str = "scienceworld", **kwargs: Any) -> Env:
    """An environment by name: 'scienceworld' -> ScienceWorld(**kwargs);
    'agentgym:<env>' -> AgentGymEnv(<env>, **kwargs), e.g.
    make_env('agentgym:webshop', base_url='http://127.0.0.1:36001') (base_url defaults to
    $EEF_AGENTGYM_<ENV>_URL, then $EEF_AGENTGYM_URL)."""
    agentgym_env = _agentgym_env(name)
    if agentgym_env is not None:
        from eef_tasks.envs.agentgym import AgentGymEnv

        return AgentGymEnv(agentgym_env, **kwargs)
    if name == "scienceworld":
        from eef_tasks.envs.scienceworld import ScienceWorld

        return ScienceWorld(**kwargs)
    raise EnvError(f"unknown environment {name!r}; known: scienceworld, agentgym:<env>")


def catalog(env: str = "scienceworld", split: Split | Sequence[Split] | None = None,
            **kwargs: Any) -> list[TaskSpec]:
    """An environment's task catalog (ScienceWorld: ETO's split; see scienceworld.catalog)."""
    if env == "scienceworld":
        from eef_tasks.envs import scienceworld

        return scienceworld.catalog(split, **kwargs)
    agentgym_env = _agentgym_env(env)
    if agentgym_env is not None:
        from eef_tasks.envs import agentgym

        return agentgym.catalog(agentgym_env, split, **kwargs)
    raise EnvError(f"unknown environment {env!r}; known: {', '.join(ENVS + AGENTGYM_ENVS)}")


def find_task(task_id: str) -> TaskSpec:
    """The catalog entry of a task id."""
    if task_id.split("/", 1)[0] in AGENTGYM_ENVS:
        from eef_tasks.envs import agentgym

        return agentgym.find_task(task_id)
    env, _, _ = parse_task_id(task_id)
    if env == "scienceworld":
        from eef_tasks.envs import scienceworld

        return scienceworld.find_task(task_id)
    raise EnvError(f"unknown environment {env!r} in {task_id!r}; known: {', '.join(ENVS)}")


__all__ = [
    "AGENTGYM_ENVS", "ENVS", "Env", "EnvCrashed", "EnvError", "EpisodeOver", "ReplayResult",
    "StepResult", "TaskSpec", "catalog", "find_drift", "find_task", "make_env", "make_task_id",
    "parse_task_id", "same_observation",
]

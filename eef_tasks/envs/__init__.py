"""Text environments behind one small interface (`base.Env`), their task catalogs and a pool of
worker processes to run many episodes in parallel (`pool.EnvPool`).

Task ids are '<env>/<task-name>/<variation>', e.g. 'scienceworld/boil/12'; eef's WebShop
(`webshop.WebShop`) and AgentGym's servers (`agentgym.AgentGymEnv`: WebShop, SciWorld, ALFWorld,
BabyAI, TextCraft) use '<env>/<data_idx>', e.g. 'webshop/12' (the same goal in both). Which environments exist, their catalogs, splits and step limits, and the rule
that evaluation tasks are never training tasks live in `registry` (re-exported here).
"""

from __future__ import annotations

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
from eef_tasks.envs.registry import (
    AGENTGYM_PREFIX,
    BACKENDS,
    TASK_ENVS,
    Backend,
    TaskEnv,
    backend,
    catalog,
    check_eval_tasks,
    env_kwargs,
    eval_tasks,
    find_task,
    make_env,
    narrow_tasks,
    task_env_of,
    task_name_filter,
)

ENVS = tuple(BACKENDS)
AGENTGYM_ENVS = ("webshop", "sciworld", "alfworld", "babyai", "textcraft")

__all__ = [
    "AGENTGYM_ENVS", "AGENTGYM_PREFIX", "BACKENDS", "ENVS", "TASK_ENVS", "Backend", "Env", "EnvCrashed",
    "EnvError", "EpisodeOver", "ReplayResult", "Split", "StepResult", "TaskEnv", "TaskSpec", "backend", "catalog",
    "check_eval_tasks", "env_kwargs", "eval_tasks", "find_drift", "find_task", "make_env", "make_task_id",
    "narrow_tasks", "parse_task_id", "same_observation", "task_env_of", "task_name_filter",
]

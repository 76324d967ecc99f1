"""Text environments behind one small interface (`base.Env`), their task catalogs and a pool of
worker processes to run many episodes in parallel (`pool.EnvPool`).

Task ids are '<env>/<task-name>/<variation>', e.g. 'scienceworld/boil/12'.
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


def make_env(name: str = "scienceworld", **kwargs: Any) -> Env:
    """An environment by name: 'scienceworld' -> ScienceWorld(**kwargs)."""
    from eef_tasks.envs.pool import make_env as _make

    return _make(name, kwargs)


def catalog(env: str = "scienceworld", split: Split | Sequence[Split] | None = None,
            **kwargs: Any) -> list[TaskSpec]:
    """An environment's task catalog (ScienceWorld: ETO's split; see scienceworld.catalog)."""
    if env == "scienceworld":
        from eef_tasks.envs import scienceworld

        return scienceworld.catalog(split, **kwargs)
    raise EnvError(f"unknown environment {env!r}; known: {', '.join(ENVS)}")


def find_task(task_id: str) -> TaskSpec:
    """The catalog entry of a task id."""
    env, _, _ = parse_task_id(task_id)
    if env == "scienceworld":
        from eef_tasks.envs import scienceworld

        return scienceworld.find_task(task_id)
    raise EnvError(f"unknown environment {env!r} in {task_id!r}; known: {', '.join(ENVS)}")


__all__ = [
    "ENVS", "Env", "EnvCrashed", "EnvError", "EpisodeOver", "ReplayResult", "StepResult",
    "TaskSpec", "catalog", "find_drift", "find_task", "make_env", "make_task_id",
    "parse_task_id", "same_observation",
]

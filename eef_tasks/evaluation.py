"""Evaluation of a policy (base model + optional LoRA adapter) on held-out tasks (METHOD.md 2.8):
the one evaluation path, used by `eef evaluate` and by the pipeline's evaluate phase.

`evaluate_adapter` runs one episode per task from s0 (greedy unless told otherwise) and stores
each as a `purpose = 'eval'` trajectory of run `run_id` / iteration `iteration` (resumable: stored
episodes are not run again), then reads win rate and mean reward back from the view `win_rates`
(sql/views/50_win_rates.sql: per task, a task's samples averaged first). Which tasks, and the rule
that evaluation tasks are never training tasks, come from `eef_tasks.envs.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eef_tasks import store
from eef_tasks.envs import registry
from eef_tasks.errors import UserError
from eef_tasks.engines import SamplingConfig
from eef_tasks.rollout import RolloutSummary, explore_episodes, run_rollouts


@dataclass
class EvalResult:
    model_id: str
    n_tasks: int
    win_rate: float
    mean_reward: float
    written: int
    already_stored: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    rollouts: RolloutSummary | None = None


def eval_tasks(split: str, task_names: list[str] | None = None, limit: int | None = None,
               env: str = "scienceworld") -> list[str]:
    """Tasks of `split` in the catalog of `env` that are not also training tasks."""
    return registry.eval_tasks(env, split, task_names, limit)


def evaluate_adapter(
    db: str | Path,
    adapter: str | Path | None,
    *,
    run_id: str = "eval",
    iteration: int = 0,
    split: str = "dev",
    task_names: list[str] | None = None,
    task_ids: list[str] | None = None,
    limit: int | None = None,
    base_model: str | None = None,
    n_workers: int = 4,
    max_new_tokens: int = 128,
    max_steps: int | None = None,
    seed: int = 0,
    engine: Any = None,
    engine_factory: Any = None,
    sampling: SamplingConfig | None = None,
    env: str = "scienceworld",
    env_kwargs: dict[str, Any] | None = None,
    on_progress: Any = None,
    prompt_tag: str | None = None,
    rollouts: Any = run_rollouts,
) -> EvalResult:
    """Evaluate `adapter` (None: the base model) on `task_ids`, else on `split`'s tasks of `env`.
    `sampling` defaults to greedy decoding with `max_new_tokens` and `seed`; `prompt_tag` adds NAT's
    marker to every prompt (a nat run's adapter is evaluated with 'positive'). `rollouts` runs the
    episodes (`rollout.run_rollouts`, or `distributed.ray_rollouts(...)` on a Ray cluster)."""
    tasks = registry.check_eval_tasks(task_ids) if task_ids else eval_tasks(split, task_names, limit, env)
    if not tasks:
        raise UserError(f"no {split} tasks to evaluate on" + (f" named {', '.join(task_names)}" if task_names else ""))
    model_id = f"{run_id}/{Path(adapter).name}" if adapter else f"{run_id}/base"
    summary = rollouts(
        db, run_id, iteration, explore_episodes(tasks), purpose="eval", model_path=base_model,
        adapter_dir=adapter, model_id=model_id, engine=engine, engine_factory=engine_factory,
        n_workers=n_workers, max_steps=max_steps, env=env, env_kwargs=env_kwargs, on_progress=on_progress,
        prompt_tag=prompt_tag, sampling=sampling or SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, seed=seed),
    )
    with store.reader(db) as con:
        row = store.first_row(
            con, """SELECT n_tasks, win_rate, mean_reward FROM win_rates
                    WHERE run_id = $r AND iteration = $i AND purpose = 'eval' AND model_id = $m AND split = $s""",
            {"r": run_id, "i": iteration, "m": model_id, "s": registry.find_task(tasks[0]).split if task_ids else split},
        ) or (0, 0.0, 0.0)
    return EvalResult(model_id, int(row[0]), float(row[1]), float(row[2]), summary.written,
                      summary.already_stored, list(summary.errors), summary)

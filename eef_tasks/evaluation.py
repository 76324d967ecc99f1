"""Evaluation of a policy (base model + optional LoRA adapter) on held-out tasks (METHOD.md 2.8).

`evaluate_adapter` runs one greedy episode per task of a split from s0 and stores each as a
`purpose = 'eval'` trajectory of run `run_id` / iteration `iteration` (resumable: stored episodes
are not run again), then reads win rate (share of tasks with reward 1) and mean reward back from
the store. Evaluation tasks are never training tasks: ETO's ScienceWorld dev split shares 54
task/variation pairs with its train split, and those are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eef_tasks import store
from eef_tasks.errors import UserError


@dataclass
class EvalResult:
    model_id: str
    n_tasks: int
    win_rate: float
    mean_reward: float
    written: int
    already_stored: int
    errors: list[tuple[str, str]] = field(default_factory=list)


def eval_tasks(split: str, task_names: list[str] | None = None, limit: int | None = None) -> list[str]:
    """ScienceWorld tasks of `split` (ETO's catalog) that are not also training tasks."""
    from eef_tasks.envs.scienceworld import catalog, find_task

    if split not in ("dev", "test"):
        raise UserError(f"evaluate on 'dev' or 'test', not {split!r}")
    ids = [s.task_id for s in catalog(split, tasks=task_names) if find_task(s.task_id).split == split]
    return ids[:limit] if limit else ids


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
    engine=None,
) -> EvalResult:
    from eef_tasks.engines import SamplingConfig
    from eef_tasks.rollout import explore_episodes, run_rollouts

    tasks = list(task_ids) if task_ids else eval_tasks(split, task_names, limit)
    if not tasks:
        raise UserError(f"no {split} tasks to evaluate on" + (f" named {', '.join(task_names)}" if task_names else ""))
    model_id = f"{run_id}/{Path(adapter).name}" if adapter else f"{run_id}/base"
    summary = run_rollouts(
        db, run_id, iteration, explore_episodes(tasks), purpose="eval", model_path=base_model,
        adapter_dir=adapter, model_id=model_id, engine=engine, n_workers=n_workers, max_steps=max_steps,
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, seed=seed),
    )
    with store.reader(db) as con:
        row = store.first_row(
            con, """SELECT count(*), coalesce(avg(success::INT), 0), coalesce(avg(reward), 0) FROM trajectories
                    WHERE run_id = $r AND iteration = $i AND purpose = 'eval' AND task_id IN (SELECT unnest($t))""",
            {"r": run_id, "i": iteration, "t": tasks},
        )
    return EvalResult(model_id, int(row[0]), float(row[1]), float(row[2]), summary.written,
                      summary.already_stored, list(summary.errors))

"""WebShop's task ids, splits, step limit and catalog.

Task ids are 'webshop/<goal index>': goal i is WebShop's `reset(session=i)` and AgentGym's
`/reset {session_id: i}` (its `agentenv-webshop` server runs this 1,000-product setting with its
6,910 synthetic goals in the same seeded order), so `agentgym:webshop` and eef's own WebShop play
the same goal under one id.

Splits by goal index, as WebShop's own code defines them (princeton-nlp/WebShop
`baseline_models/env.py`: test `range(500)`, eval `range(500, 1500)`, train
`range(1500, len(goals))`): test 0..499, dev 500..1499, train 1500..6909. AgentGym's published
WebShop evaluation runs goals 0..199 (its tutorial), a subset of test; its training items
(AgentTraj-L 'webshop_<i>') are train indices. ETO's WebShop split (`eval_agent/data/webshop/`)
indexes the 12,087 human goals of the 1.18M-product setting, not this one.

Step limit: 10 actions, ETO's (`eval_agent/configs/task/webshop.json` max_steps) and AgentGym's
(max rounds 10 for WebShop).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from eef_tasks.envs.base import EnvError, Split, TaskSpec

ENV_NAME = "webshop"
DATA_VERSION = "webshop-small-1000 (eef data 1)"  # recorded in expert trajectories' meta
MAX_STEPS = 10
SPLIT_RANGES: dict[str, tuple[int, int | None]] = {
    "test": (0, 500), "dev": (500, 1500), "train": (1500, None),  # None: to the last goal
}

_ID_RE = re.compile(r"^webshop/(?:webshop_)?(?P<idx>\d+)$")


def goal_index(task_id: str) -> int:
    """12 from 'webshop/12' (AgentGym's item id 'webshop/webshop_12' is accepted too)."""
    match = _ID_RE.match(str(task_id))
    if not match:
        raise EnvError(f"malformed WebShop task id {task_id!r}: expected 'webshop/<goal index>', "
                       "e.g. 'webshop/12'")
    return int(match["idx"])


def task_id_of(index: int) -> str:
    return f"{ENV_NAME}/{int(index)}"


def split_of(index: int) -> Split:
    for split, (start, stop) in SPLIT_RANGES.items():
        if start <= index and (stop is None or index < stop):
            return split  # type: ignore[return-value]
    raise EnvError(f"no WebShop split holds goal {index}")


def _splits(split: Split | Sequence[Split] | None) -> list[str]:
    if split is None:
        return ["train", "dev", "test"]
    chosen = [split] if isinstance(split, str) else list(split)
    for s in chosen:
        if s not in SPLIT_RANGES:
            raise EnvError(f"unknown split {s!r}: choose train, dev or test")
    return chosen


@cache
def _all_specs() -> tuple[TaskSpec, ...]:
    from eef_tasks.envs.webshop.products import load_webshop

    return tuple(
        TaskSpec(
            task_id=task_id_of(goal.index), env=ENV_NAME, split=split_of(goal.index),
            instruction=goal.instruction_text, max_steps=MAX_STEPS,
            meta={"goal_index": goal.index, "asin": goal.asin, "item_id": f"webshop_{goal.index}",
                  "catalog": "webshop-1k"},
        )
        for goal in load_webshop().goals
    )


def catalog(split: Split | Sequence[Split] | None = None, *, limit: int | None = None) -> list[TaskSpec]:
    """WebShop's goals as TaskSpecs (train 5,410 / dev 1,000 / test 500), in goal order per
    split; `limit` keeps the first n of each split (AgentGym's evaluation: test, limit=200)."""
    specs = []
    for s in _splits(split):
        chosen = [spec for spec in _all_specs() if spec.split == s]
        specs += chosen[:limit] if limit is not None else chosen
    return specs


def find_task(task_id: str) -> TaskSpec:
    """The catalog entry of 'webshop/<goal index>'."""
    index = goal_index(task_id)
    specs = _all_specs()
    if not 0 <= index < len(specs):
        raise EnvError(f"{task_id!r}: WebShop has goals 0..{len(specs) - 1} in this setting")
    return specs[index]

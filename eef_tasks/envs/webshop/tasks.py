"""WebShop's task ids, splits, step limit and catalog.

Task ids are 'webshop/<goal index>' (synthetic goals; human goals below): goal i is WebShop's `reset(session=i)` and AgentGym's
`/reset {session_id: i}` (its `agentenv-webshop` server runs this 1,000-product setting with its
6,910 synthetic goals in the same seeded order), so `agentgym:webshop` and eef's own WebShop play
the same goal under one id.

Splits by goal index, as WebShop's own code defines them (princeton-nlp/WebShop
`baseline_models/env.py`: test `range(500)`, eval `range(500, 1500)`, train
`range(1500, len(goals))`): test 0..499, dev 500..1499, train 1500..6909. AgentGym's published
WebShop evaluation runs goals 0..199 (its tutorial), a subset of test; its training items
(AgentTraj-L 'webshop_<i>') are train indices. ETO's WebShop split (`eval_agent/data/webshop/`)
indexes the 12,087 human goals of the 1.18M-product setting, not this one.

Human goals: the 13 human-written goals of these products (WebShop's `human_goals=True` mode,
which there replaces the synthetic goals; `products.build_human_goals`) are the tasks
'webshop/human/<i>', i their index in that mode. WebShop's index rule puts all of them (0..12) in
its test range, so they are test tasks, listed after the synthetic test goals. Only eef's own
WebShop plays them: AgentGym's server (and eef's server behind its protocol) takes a synthetic
goal's index only, so `catalog(..., human=False)` is what an `agentgym:webshop` run lists.

Step limit: 10 actions, ETO's (`eval_agent/configs/task/webshop.json` max_steps) and AgentGym's
(max rounds 10 for WebShop).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from eef_tasks.envs.base import EnvError, Split, TaskSpec

if TYPE_CHECKING:
    from eef_tasks.envs.webshop.products import Goal, WebShopData

ENV_NAME = "webshop"
DATA_VERSION = "webshop-small-1000 (eef data 1)"  # recorded in expert trajectories' meta
MAX_STEPS = 10
SPLIT_RANGES: dict[str, tuple[int, int | None]] = {
    "test": (0, 500), "dev": (500, 1500), "train": (1500, None),  # None: to the last goal
}

_ID_RE = re.compile(r"^webshop/(?:webshop_)?(?P<idx>\d+)$")
_HUMAN_ID_RE = re.compile(r"^webshop/human/(?P<idx>\d+)$")
HUMAN_SPLIT: Split = "test"  # WebShop's test range (0..499) holds every human goal index (0..12)


def goal_index(task_id: str) -> int:
    """12 from 'webshop/12' (AgentGym's item id 'webshop/webshop_12' is accepted too): a synthetic
    goal's index, WebShop's and AgentGym's session id."""
    match = _ID_RE.match(str(task_id))
    if not match:
        if _HUMAN_ID_RE.match(str(task_id)):
            raise EnvError(f"{task_id!r} is a human goal: only eef's own WebShop (env 'webshop') plays "
                           "it; AgentGym's server takes synthetic goal indices")
        raise EnvError(f"malformed WebShop task id {task_id!r}: expected 'webshop/<goal index>' or "
                       "'webshop/human/<index>', e.g. 'webshop/12'")
    return int(match["idx"])


def task_id_of(index: int, *, human: bool = False) -> str:
    return f"{ENV_NAME}/human/{int(index)}" if human else f"{ENV_NAME}/{int(index)}"


def goal_of(task_id: str, data: WebShopData | None = None) -> Goal:
    """The goal of 'webshop/<index>' (synthetic) or 'webshop/human/<index>' (human)."""
    from eef_tasks.envs.webshop.products import load_webshop

    data = data or load_webshop()
    human = _HUMAN_ID_RE.match(str(task_id))
    goals, what = (data.human_goals, "human goals") if human else (data.goals, "synthetic goals")
    index = int(human["idx"]) if human else goal_index(task_id)
    if not 0 <= index < len(goals):
        raise EnvError(f"{task_id!r}: WebShop has {what} 0..{len(goals) - 1} in this setting")
    return goals[index]


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


def _spec(goal: Goal) -> TaskSpec:
    if goal.human:
        return TaskSpec(
            task_id=task_id_of(goal.index, human=True), env=ENV_NAME, split=HUMAN_SPLIT,
            instruction=goal.instruction_text, max_steps=MAX_STEPS,
            meta={"goal_index": goal.index, "asin": goal.asin, "goals": "human", "catalog": "webshop-1k"},
        )
    return TaskSpec(
        task_id=task_id_of(goal.index), env=ENV_NAME, split=split_of(goal.index),
        instruction=goal.instruction_text, max_steps=MAX_STEPS,
        meta={"goal_index": goal.index, "asin": goal.asin, "item_id": f"webshop_{goal.index}",
              "catalog": "webshop-1k"},
    )


@cache
def _specs() -> tuple[tuple[TaskSpec, ...], tuple[TaskSpec, ...]]:
    """(synthetic goals' specs, human goals' specs), each in goal index order."""
    from eef_tasks.envs.webshop.products import load_webshop

    data = load_webshop()
    return tuple(map(_spec, data.goals)), tuple(map(_spec, data.human_goals))


def catalog(split: Split | Sequence[Split] | None = None, *, limit: int | None = None,
            human: bool = True) -> list[TaskSpec]:
    """WebShop's goals as TaskSpecs (train 5,410 / dev 1,000 / test 500 synthetic goals, then the
    13 human goals in test), in goal order per split; `limit` keeps the first n of each split
    (AgentGym's evaluation: test, limit=200); `human=False` leaves the human goals out."""
    synthetic, humans = _specs()
    specs = []
    for s in _splits(split):
        chosen = [spec for spec in synthetic if spec.split == s]
        chosen += [spec for spec in humans if human and spec.split == s]
        specs += chosen[:limit] if limit is not None else chosen
    return specs


def find_task(task_id: str) -> TaskSpec:
    """The catalog entry of 'webshop/<goal index>' or 'webshop/human/<index>'."""
    synthetic, humans = _specs()
    human = _HUMAN_ID_RE.match(str(task_id))
    specs, what = (humans, "human goals") if human else (synthetic, "goals")
    index = int(human["idx"]) if human else goal_index(task_id)
    if not 0 <= index < len(specs):
        raise EnvError(f"{task_id!r}: WebShop has {what} 0..{len(specs) - 1} in this setting")
    return specs[index]

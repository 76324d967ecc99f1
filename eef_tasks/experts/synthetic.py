"""A seeded, offline stand-in for an LLM expert, derived from ScienceWorld's gold paths.

**Synthetic, clearly labelled**: its trajectories have expert name 'synthetic' and
`meta.synthetic = true`. It exists so that the EEF pipeline can be exercised end to end without
paying for GPT-4 trajectories, and it fails the way real experts do: it follows the plan (the gold
path) and then, at some step, goes wrong — it gives up early, takes a plausible wrong action,
skips steps of the plan, focuses on the wrong object (which ends a ScienceWorld episode), or
wanders until it runs out of steps. Its failed trajectories therefore keep useful prefixes, which
is what EEF's simulations from intermediate expert states rely on. With probability
`success_rate` it follows the plan to the end, sometimes with harmless detours (`look around`,
`inventory`: free actions that change nothing). Some of its mistakes turn out harmless (a skipped
step that was not needed), so more trajectories succeed than `success_rate`: about 46 % with the
default 0.35 on ETO's dev split (gold paths themselves succeed 99 %).

The plan is a pure function of (gold path, task id, seed), so it is reproducible; the observations
and rewards always come from running the plan in the real game.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

SYNTHETIC_EXPERT = "synthetic"
DEFAULT_SUCCESS_RATE = 0.35
FAILURE_MODES = ("stop_early", "wrong_action", "skip_steps", "wrong_focus", "wander")

_SLOTTED = [  # action templates with object slots, most specific first
    re.compile(r"^(?P<verb>move) (?P<a>.+?) to (?P<b>.+)$"),
    re.compile(r"^(?P<verb>pour) (?P<a>.+?) (?:into|in) (?P<b>.+)$"),
    re.compile(r"^(?P<verb>use) (?P<a>.+?) on (?P<b>.+)$"),
    re.compile(r"^(?P<verb>connect) (?P<a>.+?) to (?P<b>.+)$"),
    re.compile(r"^(?P<verb>dunk) (?P<a>.+?) in (?P<b>.+)$"),
    re.compile(
        r"^(?P<verb>focus on|pick up|put down|open|close|activate|deactivate|go to|teleport to|"
        r"look at|look in|examine|eat|flush|read|disconnect|mix|drop) (?P<a>.+)$"
    ),
]
_ROOM_VERBS = ("go to", "teleport to")
_INFORMATIONAL = re.compile(r"^(look around|look at .*|look in .*|examine .*|inventory|wait\d*|task)$")
_HARMLESS = ("look around", "inventory")


@dataclass(frozen=True)
class SyntheticPlan:
    """The actions the synthetic expert will take, and how they relate to the gold path."""

    actions: list[str]
    mode: str  # 'follow', 'follow_with_detours' or one of FAILURE_MODES
    deviate_at: int | None  # index in `actions` of the first action off the plan
    intends_success: bool
    meta: dict[str, Any] = field(default_factory=dict)


def _parse(action: str) -> tuple[str, list[str]] | None:
    for pattern in _SLOTTED:
        match = pattern.match(action)
        if match:
            slots = [match[g] for g in ("a", "b") if g in pattern.groupindex and match[g]]
            return match["verb"], slots
    return None


def _objects(gold: list[str]) -> tuple[list[str], list[str]]:
    """(objects, rooms) named in the gold path, sorted so that the plan does not depend on
    Python's hash seed."""
    objects: set[str] = set()
    rooms: set[str] = set()
    for action in gold:
        parsed = _parse(action)
        if parsed is None:
            continue
        verb, slots = parsed
        (rooms if verb in _ROOM_VERBS else objects).update(slots)
    return sorted(objects), sorted(rooms)


def _is_menu_answer(action: str) -> bool:
    return action.strip().isdigit()


def wrong_version(action: str, gold: list[str], rng: random.Random) -> str:
    """A plausible wrong variant of `action`: the same verb on another object of the plan (or
    another room); failing that, an action of the plan taken out of order."""
    objects, rooms = _objects(gold)
    parsed = _parse(action)
    if parsed is not None:
        verb, slots = parsed
        pool = rooms if verb in _ROOM_VERBS else objects
        slot = rng.randrange(len(slots))
        choices = [o for o in pool if o not in slots]
        if choices:
            replacement = rng.choice(choices)
            return _replace_slot(action, slots[slot], replacement)
    if _is_menu_answer(action):
        return str((int(action) + 1 + rng.randrange(2)) % 3)
    others = [a for a in gold if a != action and not _is_menu_answer(a)]
    return rng.choice(others) if others else "look around"


def _replace_slot(action: str, old: str, new: str) -> str:
    start = action.find(old, action.find(" ") + 1)
    if start < 0:
        return action.replace(old, new, 1)
    return action[:start] + new + action[start + len(old):]


def _essential_positions(gold: list[str]) -> list[int]:
    """Positions >= 1 whose action changes the world (not a look/examine/wait/menu answer)."""
    return [
        k for k in range(1, len(gold))
        if not _INFORMATIONAL.match(gold[k]) and not _is_menu_answer(gold[k])
    ]


def synthetic_plan(
    gold: list[str],
    *,
    task_id: str,
    seed: int,
    success_rate: float = DEFAULT_SUCCESS_RATE,
    max_steps: int | None = None,
) -> SyntheticPlan:
    """The synthetic expert's plan for one task and seed (deterministic)."""
    rng = random.Random(f"{SYNTHETIC_EXPERT}/{task_id}/{seed}")
    gold = list(gold)
    n = len(gold)
    base = {"gold_steps": n, "seed": seed, "success_rate": success_rate}
    essential = _essential_positions(gold)
    if n < 2 or not essential or rng.random() < success_rate:
        return _follow(gold, rng, base)

    modes = ["stop_early", "wrong_action", "skip_steps", "wander"]
    focus = [k for k in range(1, n) if gold[k].startswith("focus on")]
    if focus and _objects(gold)[0]:
        modes.append("wrong_focus")
    mode = rng.choice(modes)
    limit = max_steps or n + 10  # the wanderer runs out of steps

    if mode == "stop_early":
        k = rng.randrange(1, n)
        actions = gold[:k]
        deviate_at = k  # it stops where action k should have been
    elif mode == "wrong_action":
        k = rng.choice(essential)
        actions = gold[:k] + [wrong_version(gold[k], gold, rng)] + gold[k + 1:]
        deviate_at = k
    elif mode == "skip_steps":
        k = rng.choice(essential)
        skip = rng.randint(1, 3)
        actions = gold[:k] + gold[k + skip:]
        deviate_at = k
        base["skipped"] = gold[k:k + skip]
    elif mode == "wrong_focus":
        k = rng.choice(focus)
        actions = gold[:k] + [wrong_version(gold[k], gold, rng)] + gold[k + 1:]
        deviate_at = k
    else:  # wander: leaves the plan and loops over plausible actions until it runs out of steps
        k = rng.randrange(1, n)
        objects, rooms = _objects(gold)
        candidates = (
            [f"teleport to {r}" if "teleport" in " ".join(gold) else f"go to {r}" for r in rooms]
            + [f"look at {o}" for o in objects[:6]]
            + ["look around", "inventory", "wait1"]
        )
        loop = rng.sample(candidates, k=min(len(candidates), rng.randint(2, 3)))
        actions = gold[:k]
        while len(actions) < max(limit, k + 2):
            actions.append(loop[(len(actions) - k) % len(loop)])
        deviate_at = k
    return SyntheticPlan(actions, mode, deviate_at, False, {**base, "deviate_at": deviate_at})


def _follow(gold: list[str], rng: random.Random, base: dict[str, Any]) -> SyntheticPlan:
    n_detours = rng.choice([0, 0, 1, 2])
    positions = [k for k in range(1, len(gold)) if not _is_menu_answer(gold[k])]
    if not n_detours or not positions:
        return SyntheticPlan(list(gold), "follow", None, True, {**base, "deviate_at": None})
    chosen = sorted(rng.sample(positions, k=min(n_detours, len(positions))))
    actions: list[str] = []
    for k, action in enumerate(gold):
        if k in chosen:
            actions.append(rng.choice(_HARMLESS))
        actions.append(action)
    first = chosen[0]
    return SyntheticPlan(
        actions, "follow_with_detours", first, True, {**base, "deviate_at": first, "detours": len(chosen)}
    )

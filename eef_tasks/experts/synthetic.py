"""A seeded, offline stand-in for an LLM expert, derived from ScienceWorld's gold paths.

**Synthetic, clearly labelled**: its trajectories have expert name 'synthetic' and
`meta.synthetic = true`. It exists so that the EEF pipeline can be exercised end to end without
paying for GPT-4 trajectories, and it fails the way real experts do: it follows the plan (the gold
path) and then, at some step, goes wrong — it gives up early, takes a plausible wrong action,
skips steps of the plan, focuses on the wrong object (which ends a ScienceWorld episode), or
wanders until it runs out of steps. Its failed trajectories therefore keep useful prefixes, which
is what EEF's simulations from intermediate expert states rely on.

Three of its modes are **harmful but non-terminal** — the expert plays on after the harmful step,
which is what gives EEF need-recover states (a checkpoint after the harm from which the policy
fails, after one before it from which the policy succeeds):

- `wrong_turn`: right after entering a room of the plan it walks back out (the harmful step) and
  returns at once (the recovery), plays the plan on, and gives up one action before the end;
- `carry_wrong`: picks up another object of the plan instead of the one the plan picks up
  (never corrected) and plays the plan on with the wrong object in hand;
- `budget_detour`: stops to look at things (which changes nothing but the clock), then plays
  the plan on and runs out of steps (the detour burnt the step budget).

Their `meta` names the harmful steps (`harmful_steps`, action indices) and, for `wrong_turn`, the
recovery (`recovery_step`). With probability
`success_rate` it follows the plan to the end, sometimes with harmless detours (`look around`,
`inventory`: free actions that change nothing). Some of its mistakes turn out harmless (a skipped
step that was not needed), so more trajectories succeed than `success_rate`: about 46 % with the
default 0.35 on ETO's dev split (gold paths themselves succeed 99 %).

The plan is a pure function of (gold path, task id, seed), so it is reproducible; the observations
and rewards always come from running the plan in the real game.

**Two synthetic experts of different skill and price** stand in for the paper's GPT-4 and GPT-3.5
(`SYNTHETIC_EXPERTS`): `synthetic` (success_rate 0.35, priced as GPT-4) and `synthetic-cheap`
(success_rate 0.15: it fails more, priced as GPT-3.5 Turbo). Neither calls a model: what a
trajectory would have cost is a **stated cost model** (`CostModel`), written into its `meta` as an
LLM expert's is (`prompt_tokens`, `completion_tokens`, `cost_usd`, plus `cost_model`): at step k the
expert reads a prompt of `first_prompt_tokens + k * tokens_per_turn` tokens (the chat grows by one
action and observation a step) and writes `completion_tokens_per_step` tokens; tokens are priced at
the stated list prices (dollars per 1M tokens). The numbers are assumptions, not measurements.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

SYNTHETIC_EXPERT = "synthetic"
CHEAP_SYNTHETIC_EXPERT = "synthetic-cheap"
DEFAULT_SUCCESS_RATE = 0.35
FAILURE_MODES = ("stop_early", "wrong_action", "skip_steps", "wrong_focus", "wander",
                 "wrong_turn", "carry_wrong", "budget_detour")
# failure modes after which the expert plays on (EEF's need-recover states come from these)
NON_TERMINAL_MODES = ("wrong_turn", "carry_wrong", "budget_detour")



@dataclass(frozen=True)
class CostModel:
    """What a synthetic expert's trajectory would have cost from the LLM it stands for (stated, not
    measured): at step k a prompt of `first_prompt_tokens + k * tokens_per_turn` tokens and a reply of
    `completion_tokens_per_step` tokens, at `price_in` / `price_out` dollars per 1M tokens."""

    stands_for: str
    price_in: float
    price_out: float
    first_prompt_tokens: int = 600  # system prompt, instruction, first observation
    tokens_per_turn: int = 150  # one action and its observation join the chat each step
    completion_tokens_per_step: int = 30

    def usage(self, n_steps: int) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of a trajectory of `n_steps` actions."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, not {n_steps}")
        prompt = n_steps * self.first_prompt_tokens + self.tokens_per_turn * n_steps * (n_steps - 1) // 2
        return prompt, n_steps * self.completion_tokens_per_step

    def meta(self, n_steps: int) -> dict[str, Any]:
        """The cost fields of a trajectory's meta (the keys an LLM expert's trajectories carry)."""
        prompt, completion = self.usage(n_steps)
        return {
            "prompt_tokens": prompt, "completion_tokens": completion,
            "cost_usd": round((prompt * self.price_in + completion * self.price_out) / 1_000_000, 8),
            "cost_model": {"stated": True, "stands_for": self.stands_for, "price_in": self.price_in,
                           "price_out": self.price_out, "first_prompt_tokens": self.first_prompt_tokens,
                           "tokens_per_turn": self.tokens_per_turn,
                           "completion_tokens_per_step": self.completion_tokens_per_step},
        }


@dataclass(frozen=True)
class SyntheticExpert:
    """A labelled synthetic expert: its name (trajectories' `expert`), skill and price."""

    name: str
    success_rate: float
    cost: CostModel


# list prices per 1M tokens: GPT-4 (8k context) $30 in / $60 out; GPT-3.5 Turbo (0125) $0.50 / $1.50
SYNTHETIC_EXPERTS = {
    SYNTHETIC_EXPERT: SyntheticExpert(SYNTHETIC_EXPERT, DEFAULT_SUCCESS_RATE,
                                      CostModel("gpt-4 (8k context), list price", 30.0, 60.0)),
    CHEAP_SYNTHETIC_EXPERT: SyntheticExpert(CHEAP_SYNTHETIC_EXPERT, 0.15,
                                            CostModel("gpt-3.5-turbo-0125, list price", 0.5, 1.5)),
}


def success_rate_of(expert: str, given: float | None = None) -> float:
    """`given`, else the synthetic expert's own success rate (DEFAULT_SUCCESS_RATE for any other)."""
    if given is not None:
        return given
    known = SYNTHETIC_EXPERTS.get(expert)
    return known.success_rate if known else DEFAULT_SUCCESS_RATE


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
    modes: tuple[str, ...] | None = None,
    expert: str = SYNTHETIC_EXPERT,
) -> SyntheticPlan:
    """The synthetic expert's plan for one task and seed (deterministic). `modes` restricts the
    failure modes drawn from (default: every mode the gold path allows); `expert` (a name of
    SYNTHETIC_EXPERTS) seeds the draws, so two experts make different plans for the same seed."""
    rng = random.Random(f"{expert}/{task_id}/{seed}")
    gold = list(gold)
    n = len(gold)
    base = {"gold_steps": n, "seed": seed, "success_rate": success_rate}
    essential = _essential_positions(gold)
    if n < 2 or not essential or rng.random() < success_rate:
        return _follow(gold, rng, base)

    allowed = ["stop_early", "wrong_action", "skip_steps", "wander"]
    focus = [k for k in range(1, n) if gold[k].startswith("focus on")]
    if focus and _objects(gold)[0]:
        allowed.append("wrong_focus")
    limit = max_steps or n + 10  # the wanderer runs out of steps
    allowed += [m for m, ok in (("wrong_turn", _room_entries(gold)), ("carry_wrong", _pickups(gold)),
                                ("budget_detour", True)) if ok]
    if modes is not None:
        unknown = set(modes) - set(FAILURE_MODES)
        if unknown:
            raise ValueError(f"unknown synthetic failure modes {sorted(unknown)}: one of {', '.join(FAILURE_MODES)}")
        allowed = [m for m in allowed if m in modes]
        if not allowed:  # none of them fits this gold path: the expert follows the plan
            return _follow(gold, rng, base)
    mode = rng.choice(allowed)
    if mode in NON_TERMINAL_MODES:
        return _non_terminal(mode, gold, rng, base, limit)

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


def _room_entries(gold: list[str]) -> list[tuple[int, str, str]]:
    """(k, room entered by action k, room it came from) for each room move of the gold path that
    is not its last action and whose previous room is known (an earlier room move, or the room the
    move's door leads from: 'open door to X' is done in the room one came from)."""
    entries, here = [], None
    for k, action in enumerate(gold):
        parsed = _parse(action)
        if parsed is None or parsed[0] not in _ROOM_VERBS:
            continue
        room = parsed[1][0]
        if here is not None and here != room and k < len(gold) - 1:
            entries.append((k, room, here))
        here = room
    return entries


def _portable(gold: list[str]) -> list[str]:
    """Objects of the plan one could pick up instead: not doors, not things already carried."""
    return [o for o in _objects(gold)[0] if not o.startswith("door to") and "inventory" not in o]


def _pickups(gold: list[str]) -> list[int]:
    """Positions of 'pick up X' for which the plan names another portable object."""
    return [k for k in range(1, len(gold))
            if (p := _parse(gold[k])) and p[0] == "pick up" and set(_portable(gold)) - {p[1][0]}]


def _non_terminal(mode: str, gold: list[str], rng: random.Random, base: dict[str, Any],
                  limit: int) -> SyntheticPlan:
    """A plan of one of NON_TERMINAL_MODES: the harm, then the rest of the plan (module doc)."""
    n = len(gold)
    if mode == "wrong_turn":
        k, room, came_from = rng.choice(_room_entries(gold))
        # in `room` (action k), it walks back out to where it came from, returns, and plays on,
        # giving up one action before the end
        verb = _parse(gold[k])[0]
        actions = gold[:k + 1] + [f"{verb} {came_from}", f"{verb} {room}"] + gold[k + 1:n - 1]
        meta = {"harmful_steps": [k + 1], "recovery_step": k + 2, "then": "stop_early"}
        deviate_at = k + 1
    elif mode == "carry_wrong":
        k = rng.choice(_pickups(gold))
        _, slots = _parse(gold[k])
        wrong = rng.choice([o for o in _portable(gold) if o != slots[0]])
        actions = gold[:k] + [f"pick up {wrong}"] + gold[k + 1:]
        meta = {"harmful_steps": [k], "carried": wrong, "instead_of": slots[0]}
        deviate_at = k
    else:  # budget_detour: looks at things (nothing changes) until the plan no longer fits the budget
        k = rng.randrange(1, n)
        looks = [f"look at {o}" for o in _objects(gold)[0][:6]] + ["look around", "inventory"]
        detour_len = max(2, limit - n + 1 + rng.randrange(2))
        detour = [looks[rng.randrange(len(looks))] for _ in range(detour_len)]
        actions = (gold[:k] + detour + gold[k:])[:limit]
        meta = {"harmful_steps": list(range(k, min(k + detour_len, limit))), "detour_len": detour_len}
        deviate_at = k
    return SyntheticPlan(actions, mode, deviate_at, False, {**base, "deviate_at": deviate_at, **meta})


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

"""Offline WebShop experts: a gold expert and a labelled synthetic expert that fails like GPT-4.

- gold: searches, pages with `Next >` until the target product appears, opens it, picks the
  goal's options and buys. It knows the goal's product (that is what makes it gold) but acts
  only through the page: its query is the goal's instruction (without the options and price),
  falling back to the product's search query and then its title when the target would be out of
  reach within the step limit. Its reward comes from running it in the env (1 on all but a few
  goals, see `tests/test_webshop.py`).
- synthetic (`expert='synthetic'`, `meta.synthetic = true`): with probability `success_rate`
  the gold plan, sometimes with a detour that a real agent makes and recovers from (opening a
  wrong product and going back with `< Prev`, reading Description/Features); otherwise one of
  the failures seen in GPT-4 WebShop runs, named in `meta.mode`:
    first_page    buys the best-ranked wrong product of the first results page
    stop_paging   the target is on a later page; it pages part of the way, then buys from there
    missed_option opens the right product but buys without choosing one of the options
    wrong_option  chooses another value for one option
    gives_up      stops (no purchase) after a prefix of the gold plan
    search_loop   keeps reformulating its search until it runs out of steps
  Failed trajectories keep the gold plan's useful prefix (the search, the right page), which is
  what EEF's simulations from expert states build on.

Plans are pure functions of (task id, seed): reproducible; observations and rewards always come
from running the plan in the env.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from eef_tasks.envs.base import EnvError
from eef_tasks.envs.webshop.env import BACK_TO_SEARCH, BUY_NOW, NEXT_PAGE, PREV_PAGE, PRODUCT_WINDOW
from eef_tasks.envs.webshop.products import Goal, WebShopData, load_webshop
from eef_tasks.envs.webshop.search import ProductSearch, product_search
from eef_tasks.envs.webshop.tasks import MAX_STEPS, goal_of
from eef_tasks.experts.synthetic import SYNTHETIC_EXPERTS  # the synthetic experts' names, skill and price

GOLD_EXPERT = "gold"
SYNTHETIC_EXPERT = "synthetic"
DEFAULT_SUCCESS_RATE = 0.35
FAILURE_MODES = ("first_page", "stop_paging", "missed_option", "wrong_option", "gives_up",
                 "search_loop")


def click(name: str) -> str:
    return f"click[{name.lower()}]"


@dataclass(frozen=True)
class GoldRoute:
    """How the gold expert reaches the target: its query, the page and rank the target has."""

    query: str
    query_kind: str  # 'instruction' | 'product_query' | 'title'
    page: int
    rank: int  # 0-based within the results
    results: tuple[str, ...] = field(repr=False)  # the result asins, best first


_PRICE_TEXT = re.compile(r", and price lower than [\d.]+ dollars$")


def _queries(goal: Goal, data: WebShopData) -> list[tuple[str, str]]:
    product = data.by_asin[goal.asin]
    # a human goal's own words (its price cap cut off); a synthetic goal's instruction before the
    # options and price were appended to it
    said = _PRICE_TEXT.sub("", goal.instruction_text) if goal.human else product.instruction_text
    return [
        ("instruction", (said or goal.instruction_text).lower()),
        ("product_query", goal.query),
        ("title", product.title.lower()),
    ]


def gold_route(goal: Goal, *, max_steps: int = MAX_STEPS, data: WebShopData | None = None,
               search: ProductSearch | None = None) -> GoldRoute:
    """The first query (instruction, product query, title) whose results hold the target close
    enough to buy it within `max_steps`; the title query when none does."""
    data = data or load_webshop()
    search = search or product_search()
    fallback: GoldRoute | None = None
    for kind, query in _queries(goal, data):
        asins = tuple(p.asin for p in search.search(query))
        if goal.asin not in asins:
            continue
        rank = asins.index(goal.asin)
        route = GoldRoute(query, kind, rank // PRODUCT_WINDOW + 1, rank, asins)
        fallback = fallback or route
        if _gold_length(route, goal) <= max_steps:
            return route
    if fallback is None:
        raise EnvError(f"the target of WebShop goal {goal.index} ({goal.asin}) is found by none "
                       "of the gold expert's queries")
    return fallback


def _gold_length(route: GoldRoute, goal: Goal) -> int:
    return 1 + (route.page - 1) + 1 + len(goal.options) + 1


def gold_actions(goal: Goal, route: GoldRoute) -> list[str]:
    return [
        f"search[{route.query}]",
        *[click(NEXT_PAGE)] * (route.page - 1),
        click(goal.asin),
        *[click(value) for value in goal.options.values()],
        click(BUY_NOW),
    ]


def _page_asins(route: GoldRoute, page: int) -> list[str]:
    return list(route.results[(page - 1) * PRODUCT_WINDOW: page * PRODUCT_WINDOW])


def _buy_other(asin: str, goal: Goal, data: WebShopData, rng: random.Random) -> list[str]:
    """Open `asin`, choose options as a hurried agent does (the goal's value where the product
    has it, else the first value), buy."""
    product = data.by_asin[asin]
    actions = [click(asin)]
    for name, values in product.options.items():
        wanted = goal.options.get(name)
        if wanted in values:
            actions.append(click(wanted))
        elif rng.random() < 0.5:
            actions.append(click(values[0]))
    return actions + [click(BUY_NOW)]


def plan(expert: str, task_id: str, *, seed: int = 0, success_rate: float = DEFAULT_SUCCESS_RATE,
         max_steps: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """The actions an offline expert takes on a WebShop goal, and metadata describing them."""
    data = load_webshop()
    goal = goal_of(task_id, data)
    limit = max_steps or MAX_STEPS
    route = gold_route(goal, max_steps=limit, data=data)
    gold = gold_actions(goal, route)
    base = {"gold_steps": len(gold), "query_kind": route.query_kind, "target_page": route.page,
            "target_rank": route.rank}
    if expert == GOLD_EXPERT:
        return gold, base
    if expert not in SYNTHETIC_EXPERTS:
        raise EnvError(f"unknown WebShop expert {expert!r}; offline experts: gold, {', '.join(SYNTHETIC_EXPERTS)}")
    rng = random.Random(f"{expert}/{task_id}/{seed}")  # 'synthetic': the draws it always made
    meta = {**base, "synthetic": True, "seed": seed, "success_rate": success_rate}
    if rng.random() < success_rate:
        actions, mode = _follow(gold, goal, route, rng)
        return actions, {**meta, "mode": mode, "intends_success": True}
    actions, mode, extra = _fail(gold, goal, route, data, rng, limit)
    return actions, {**meta, "mode": mode, "intends_success": False, **extra}


def _follow(gold: list[str], goal: Goal, route: GoldRoute,
            rng: random.Random) -> tuple[list[str], str]:
    detour = rng.choice(["none", "none", "wrong_item", "read"])
    open_at = gold.index(click(goal.asin))
    others = [a for a in _page_asins(route, route.page) if a != goal.asin]
    if detour == "wrong_item" and others:
        wrong = rng.choice(others)
        return gold[:open_at] + [click(wrong), click(PREV_PAGE)] + gold[open_at:], "follow_recover"
    if detour == "read":
        sub = rng.choice(["Description", "Features"])
        at = open_at + 1
        return gold[:at] + [click(sub), click(PREV_PAGE)] + gold[at:], "follow_read"
    return list(gold), "follow"


def _fail(gold: list[str], goal: Goal, route: GoldRoute, data: WebShopData, rng: random.Random,
          limit: int) -> tuple[list[str], str, dict[str, Any]]:
    first_page = [a for a in _page_asins(route, 1) if a != goal.asin]
    modes = ["gives_up", "search_loop"]
    if first_page:
        modes.append("first_page")
    if route.page > 1:
        modes += ["stop_paging", "stop_paging"]  # the paper's motivating failure: not paging on
    if goal.options:
        modes.append("missed_option")
    if any(len(data.by_asin[goal.asin].options[n]) > 1 for n in goal.options):
        modes.append("wrong_option")
    mode = rng.choice(modes)
    search = gold[0]
    open_at = gold.index(click(goal.asin))
    if mode == "first_page":
        wrong = first_page[0] if rng.random() < 0.7 else rng.choice(first_page)
        return [search] + _buy_other(wrong, goal, data, rng), mode, {"bought": wrong}
    if mode == "stop_paging":
        pages = rng.randrange(route.page - 1)  # 0 .. page-2 Next clicks: short of the target
        candidates = _page_asins(route, pages + 1)
        wrong = candidates[0]
        actions = [search] + [click(NEXT_PAGE)] * pages + _buy_other(wrong, goal, data, rng)
        return actions, mode, {"bought": wrong, "pages_seen": pages + 1}
    if mode == "missed_option":
        names = list(goal.options)
        skipped = rng.choice(names)
        actions = gold[: open_at + 1] + [click(v) for n, v in goal.options.items() if n != skipped]
        return actions + [click(BUY_NOW)], mode, {"skipped_option": skipped}
    if mode == "wrong_option":
        product = data.by_asin[goal.asin]
        names = [n for n in goal.options if len(product.options[n]) > 1]
        name = rng.choice(names)
        value = rng.choice([v for v in product.options[name] if v != goal.options[name]])
        chosen = {**goal.options, name: value}
        actions = gold[: open_at + 1] + [click(v) for v in chosen.values()] + [click(BUY_NOW)]
        return actions, mode, {"wrong_option": {name: value}}
    if mode == "gives_up":
        k = rng.randrange(1, len(gold) - 1)  # at least the search, never the purchase
        return gold[:k], mode, {"stopped_at": k}
    # search_loop: over-specific reformulations, back to search between them, until the limit
    words = goal.instruction_text.lower().replace(",", "").split()
    actions = [search]
    while len(actions) < limit:
        if len(actions) % 2 == 1:
            actions.append(click(BACK_TO_SEARCH))
        else:
            n = min(len(words), rng.randint(6, 12))
            start = rng.randrange(max(1, len(words) - n + 1))
            actions.append(f"search[{' '.join(words[start:start + n])}]")
    return actions[:limit], mode, {}

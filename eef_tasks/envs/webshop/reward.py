"""WebShop's reward for a purchase, as WebShop defines it (princeton-nlp/WebShop
`web_agent_site/engine/goal.py`: `get_reward`, `get_type_reward`, `get_attribute_reward`,
`get_option_reward`; `engine/normalize.py`: `normalize_color`).

    reward = r_type * (attributes matched + options matched + [price <= cap])
                    / (goal attributes + goal options + 1)

- r_type: 1.0 when the purchased product shares the goal's search query, or two product-category
  levels, or more than 20 % of the goal title's nouns; 0.5 otherwise; 0.1 under 10 % of the
  nouns, 0.0 with none (0.2 is the noun score of a title without nouns). The nouns come from
  spaCy's small English model, precomputed per title (`build_data`).
- an attribute matches when a purchased attribute scores > 85 in thefuzz's `token_set_ratio`,
  or when it is a substring of the title, features or description (lowercased).
- an option matches when a purchased option value scores > 85 against it. WebShop passes the
  goal's options as `(name, value)` pairs, so a goal option is compared as the text of that pair
  ("('size', 'large')", i.e. the tokens "size large") unless its value is exactly a colour word of
  `COLOR_SET`; purchased values are reduced to the first colour word they contain. This is why
  "large" matches "xx-large tall" for the value alone but the pair needs its tokens covered.
  A human goal's options are the instruction's option values themselves (WebShop's human goals
  hold a list), compared as values (`Goal.reward_options`).

thefuzz's `token_set_ratio(a, b)` is rapidfuzz's on both strings with the characters 128..255
removed and rapidfuzz's `default_process` applied, rounded to an int; it is reimplemented here
on rapidfuzz so that thefuzz is not needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from eef_tasks.envs.webshop.products import Goal, Product

MATCH_THRESHOLD = 85

COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue",
    "blush", "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne",
    "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper",
    "coral", "cranberry", "cream", "crystal", "dark", "denim", "eggplant", "elephant", "espresso",
    "fuchsia", "gold", "granite", "grape", "graphite", "grass", "gray", "green", "grey", "heather",
    "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac", "lime",
    "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom",
    "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink", "plum",
    "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver",
    "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal", "tiger",
    "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)

_LATIN1 = {i: None for i in range(128, 256)}  # thefuzz's "ascii dammit" table


def token_set_ratio(a: Any, b: Any) -> int:
    """thefuzz's `fuzz.token_set_ratio(a, b)` (full processing, force_ascii)."""
    a = default_process(str(a).translate(_LATIN1))
    b = default_process(str(b).translate(_LATIN1))
    return int(round(fuzz.token_set_ratio(a, b)))


def normalize_color(value: Any) -> Any:
    """The first colour word `value` contains (for a pair: equals), else `value` unchanged."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


@dataclass(frozen=True)
class RewardInfo:
    """The reward of one purchase and its parts (WebShop's verbose reward info)."""

    reward: float
    r_type: float
    r_att: float
    r_option: float | None
    r_price: bool
    query_match: bool
    category_match: bool
    title_score: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def type_reward(purchased: Product, goal: Goal, goal_nouns: Iterable[str]) -> tuple[float, bool, bool, float]:
    """(r_type, query_match, category_match, title_score)."""
    query_match = purchased.query == goal.query
    bought = {x.strip() for x in purchased.product_category.split("›")}
    wanted = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(bought & wanted) >= 2
    desired = list(goal_nouns)
    if not desired:
        title_score = 0.2
    else:
        title_score = len(set(purchased.title_nouns) & set(desired)) / len(desired)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def attribute_matches(purchased: Product, goal: Goal) -> int:
    title = purchased.title.lower()
    features = " ".join(purchased.bullet_points).lower()
    description = purchased.description.lower()
    matches = 0
    for wanted in goal.attributes:
        if any(token_set_ratio(have, wanted) > MATCH_THRESHOLD for have in purchased.attributes):
            matches += 1
        elif wanted in title or wanted in features or wanted in description:
            matches += 1
    return matches


def option_matches(purchased_values: Iterable[str], goal: Goal) -> int:
    bought = [normalize_color(v) for v in purchased_values]
    wanted = [normalize_color(option) for option in goal.reward_options]
    return sum(
        1 for w in wanted if any(token_set_ratio(b, w) > MATCH_THRESHOLD for b in bought)
    )


def get_reward(purchased: Product, goal: Goal, goal_nouns: Iterable[str], price: float,
               options: dict[str, str]) -> RewardInfo:
    """The reward of buying `purchased` at `price` with the chosen `options` for `goal`."""
    r_type, query_match, category_match, title_score = type_reward(purchased, goal, goal_nouns)
    r_price = price <= goal.price_upper
    n_att = attribute_matches(purchased, goal)
    n_opt = option_matches(options.values(), goal)
    n_options = len(goal.reward_options)
    total = (n_att + n_opt + int(r_price)) / (len(goal.attributes) + n_options + 1)
    return RewardInfo(
        reward=total * r_type,
        r_type=r_type,
        r_att=n_att / len(goal.attributes) if goal.attributes else 0.0,
        r_option=n_opt / n_options if n_options else None,
        r_price=r_price,
        query_match=query_match,
        category_match=category_match,
        title_score=title_score,
    )

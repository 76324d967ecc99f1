"""WebShop's products and goals for its small setting (1,000 products, 6,910 synthetic goals and
13 human goals), read from the data shipped in `eef_tasks/data/webshop/` and built as WebShop
builds them.

Rules, from princeton-nlp/WebShop `web_agent_site/engine/engine.py` (`load_products`,
`generate_product_prices`) and `engine/goal.py` (`get_synthetic_goals`), in the variant that
AgentGym's `agentenv-webshop` server runs (`num_products=1000`, synthetic goals, text mode):

- a product's title is its `name`, its features its `small_description` (a list), its price tag
  "$a" or "$a to $b" (Python's float formatting), "$100.0" when it has none; its options map a
  lowercased option name to lowercased values with '/' written ' | '; its attributes come from
  the attribute file (['DUMMY_ATTR'] when absent); rating 'N.A.', no reviews (the small setting
  ships none).
- one price per product: its single price, or a draw from its price range. WebShop draws that
  from an unseeded RNG per process; eef draws it once with `random.Random(PRICE_SEED)` in product
  order, so a goal's price cap is the same in every process.
- goals: for every product with an instruction, one goal per combination of its option values
  (option names sorted), the instruction text followed by " with name: value, and ..." and
  ", and price lower than X dollars", X the larger of two of the four multiples of 10 above the
  product's price, drawn from `random.Random(233)` in product order (AgentGym seeds that draw;
  WebShop leaves it unseeded). The list is then shuffled with `random.Random(233)`, as both do:
  goal i here is `reset(session=i)` there.
- human goals (`get_human_goals`, WebShop's `human_goals=True` mode, which replaces the synthetic
  goals there; here they are kept beside them): for every product with human-written instructions
  (`items_human_ins.json`, 13 for these products), in product order, one goal per instruction with
  instruction attributes: the instruction without its final periods, the same price cap rule and
  draw (a `random.Random(233)` of their own), its attributes, and its instruction options as a
  list of values (so the reward compares option values, not name/value pairs); shuffled with
  `random.Random(233)`. `Goal.options` maps each such value to the product option that offers it
  exactly (what an expert clicks); a value the product does not offer is kept for the reward only.

Everything is loaded once per process (`load_webshop`) and shared read-only by every env.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "webshop"
PRODUCTS_FILE = DATA_DIR / "items_shuffle_1000.json.gz"
ATTRIBUTES_FILE = DATA_DIR / "items_ins_v2_1000.json.gz"
HUMAN_FILE = DATA_DIR / "items_human_ins.json.gz"
NOUNS_FILE = DATA_DIR / "title_nouns.json.gz"

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
GOAL_SEED = 233  # WebShop's `random.seed(233)` before shuffling the goals (AgentGym's before prices too)
PRICE_SEED = 233  # eef's: WebShop draws range prices unseeded
NO_PRICE_CAP = 1_000_000  # WebShop's price_upper of a goal without a price in its text


@dataclass(frozen=True)
class Product:
    """One product as WebShop's pages and reward see it."""

    asin: str
    title: str
    description: str
    bullet_points: tuple[str, ...]
    price_tag: str
    price: float  # the one price used by the reward and the goal's price cap
    options: dict[str, tuple[str, ...]]  # option name -> values, in the shop's order
    attributes: tuple[str, ...]
    category: str
    query: str
    product_category: str
    main_image: str | None
    title_nouns: tuple[str, ...]  # spaCy NOUN/PROPN tokens of the title (precomputed)
    instruction_text: str | None = None
    instruction_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Goal:
    """One goal: buy `asin` with `options`, price at most `price_upper`. A synthetic goal by
    default; a human goal (`human=True`) also keeps its instruction options as WebShop's reward
    sees them (`human_options`)."""

    index: int
    asin: str
    instruction_text: str
    attributes: tuple[str, ...]
    options: dict[str, str] = field(hash=False)  # option name -> value (names sorted)
    price_upper: float
    name: str
    query: str
    category: str
    product_category: str
    human: bool = False
    human_options: tuple[str, ...] = ()

    @property
    def reward_options(self) -> tuple[Any, ...]:
        """The goal options WebShop's reward matches purchased values against: (name, value)
        pairs of a synthetic goal, the instruction's option values of a human goal."""
        return self.human_options if self.human else tuple(self.options.items())


@dataclass(frozen=True)
class WebShopData:
    """The products (in WebShop's order) and goals (goal index order) of this setting."""

    products: tuple[Product, ...]
    by_asin: dict[str, Product]
    goals: tuple[Goal, ...]
    human_goals: tuple[Goal, ...] = ()


def read_gz_json(path: Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _parse_pricing(pricing: Any) -> tuple[list[float], str]:
    if not pricing:
        return [100.0], "$100.0"
    prices = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in str(pricing).split("$")[1:]]
    if len(prices) == 1:
        return prices, f"${prices[0]}"
    return prices[:2], f"${prices[0]} to ${prices[1]}"


def _parse_options(customization: Any) -> dict[str, tuple[str, ...]]:
    options: dict[str, tuple[str, ...]] = {}
    if not customization:
        return options
    for name, contents in customization.items():
        if contents is None:
            continue
        options[name.lower()] = tuple(
            c["value"].strip().replace("/", " | ").lower() for c in contents
        )
    return options


def build_products(raw: list[dict[str, Any]], attributes: dict[str, Any],
                   nouns: dict[str, list[str]]) -> list[Product]:
    """WebShop's `load_products` (synthetic-goal variant) and `generate_product_prices`."""
    rng = random.Random(PRICE_SEED)
    seen: set[str] = set()
    products = []
    for p in raw:
        asin = p["asin"]
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        pricing, price_tag = _parse_pricing(p.get("pricing"))
        price = pricing[0] if len(pricing) == 1 else rng.uniform(*pricing[:2])
        small = p["small_description"]
        entry = attributes.get(asin, {})
        title = str(p["name"])
        if title not in nouns:
            raise ValueError(f"no precomputed title nouns for {asin}: rebuild the data "
                             "(python -m eef_tasks.envs.webshop.build_data)")
        products.append(Product(
            asin=asin,
            title=title,
            description=str(p["full_description"]),
            bullet_points=tuple(small) if isinstance(small, list) else (small,),
            price_tag=price_tag,
            price=price,
            options=_parse_options(p.get("customization_options")),
            attributes=tuple(entry["attributes"]) if "attributes" in entry else ("DUMMY_ATTR",),
            category=p["category"],
            query=p["query"].lower().strip(),
            product_category=p["product_category"],
            main_image=(p.get("images") or [None])[0],
            title_nouns=tuple(nouns[title]),
            instruction_text=entry.get("instruction"),
            instruction_attributes=tuple(entry.get("instruction_attributes") or ()),
        ))
    return products


def _price_cap(price: float, rng: random.Random) -> tuple[float, str]:
    """A goal's price cap and its text (WebShop's rule, shared by synthetic and human goals)."""
    price_range = [p for p in PRICE_RANGE if p > price][:4]
    if len(price_range) >= 2:
        _, price_upper = sorted(rng.sample(price_range, 2))
        return price_upper, f", and price lower than {price_upper:.2f} dollars"
    return NO_PRICE_CAP, ""


def build_goals(products: list[Product]) -> list[Goal]:
    """WebShop's `get_synthetic_goals` (AgentGym's seeded price draw), then the seeded shuffle."""
    rng = random.Random(GOAL_SEED)
    goals: list[dict[str, Any]] = []
    for product in products:
        if product.instruction_text is None:
            continue
        price_upper, price_text = _price_cap(product.price, rng)
        names = sorted(product.options)
        for combination in itertools.product(*(product.options[n] for n in names)):
            chosen = dict(zip(names, combination, strict=True))
            option_text = ", and ".join(f"{k}: {v}" for k, v in chosen.items())
            option_text = " with " + option_text if option_text else ""
            goals.append(dict(
                asin=product.asin,
                instruction_text=f"{product.instruction_text}{option_text}{price_text}",
                attributes=product.instruction_attributes,
                options=chosen,
                price_upper=float(price_upper),
                name=product.title,
                query=product.query,
                category=product.category,
                product_category=product.product_category,
            ))
    random.Random(GOAL_SEED).shuffle(goals)
    return [Goal(index=i, **g) for i, g in enumerate(goals)]


def build_human_goals(products: list[Product], human: dict[str, list[dict[str, Any]]]) -> list[Goal]:
    """WebShop's `get_human_goals` (instructions without instruction attributes skipped, as there),
    with a seeded price draw, then the seeded shuffle."""
    rng = random.Random(GOAL_SEED)
    goals: list[dict[str, Any]] = []
    for product in products:
        for entry in human.get(product.asin, []):
            attributes = tuple(entry.get("instruction_attributes") or ())
            if not attributes:
                continue
            price_upper, price_text = _price_cap(product.price, rng)
            values = tuple(str(v) for v in entry.get("instruction_options") or ())
            offered = {v: name for name, vs in product.options.items() for v in vs}
            goals.append(dict(
                asin=product.asin,
                instruction_text=str(entry["instruction"]).strip(".") + price_text,
                attributes=attributes,
                options={offered[v]: v for v in values if v in offered},
                price_upper=float(price_upper),
                name=product.title,
                query=product.query,
                category=product.category,
                product_category=product.product_category,
                human=True,
                human_options=values,
            ))
    random.Random(GOAL_SEED).shuffle(goals)
    return [Goal(index=i, **g) for i, g in enumerate(goals)]


@cache
def load_webshop() -> WebShopData:
    """The shipped products and goals, built once per process and shared (read-only)."""
    missing = [p.name for p in (PRODUCTS_FILE, ATTRIBUTES_FILE, NOUNS_FILE) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"WebShop data missing from {DATA_DIR}: {', '.join(missing)} (reinstall eef)"
        )
    products = build_products(
        read_gz_json(PRODUCTS_FILE), read_gz_json(ATTRIBUTES_FILE),
        read_gz_json(NOUNS_FILE)["nouns"],
    )
    goals = build_goals(products)
    human = build_human_goals(products, read_gz_json(HUMAN_FILE)) if HUMAN_FILE.exists() else []
    return WebShopData(tuple(products), {p.asin: p for p in products}, tuple(goals), tuple(human))

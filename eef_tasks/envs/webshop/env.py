"""eef's WebShop environment: WebShop's text mode over the shipped 1,000 products, behind `Env`.

    env = WebShop()
    obs = env.reset("webshop/0")          # goal 0: WebShop's / AgentGym's `reset(session=0)`
    env.step("search[decorative pillows]")
    env.step("click[b0743jkhbv]")         # a product from the results
    env.step("click[28\" x 28\"]")        # an option
    result = env.step("click[buy now]")  # done; reward = WebShop's reward of the purchase

Pages and their rules follow princeton-nlp/WebShop `web_agent_site/envs/web_agent_text_env.py`
(`WebAgentTextEnv.step`, `SimServer.receive`) and its page templates; an observation is the
page's visible texts joined by " [SEP] " (WebShop's "text" observation mode, the one ETO and
AgentGym use):

- search page: "WebShop [SEP] Instruction: [SEP] <goal> [SEP] Search"
- results: "Instruction: [SEP] <goal> [SEP] Back to Search [SEP] Page p (Total results: n)
  [SEP] < Prev [SEP] Next > [SEP] <asin> [SEP] <title> [SEP] <price> ..." (10 per page of the
  top 50; "< Prev" only after page 1; "Next >" always, past the end an empty page)
- item: back/prev, each option name and its values, title, "Price: ...", "Rating: N.A.",
  "Description", "Features", "Reviews" ("Attributes" with show_attrs=True), "Buy Now"
- sub-pages (Description, Features, Reviews, Attributes): back/prev and their text
- done (after Buy Now): WebShop's thank-you page with the score.

Actions are `search[keywords]` and `click[name]` (names case-insensitive: a button's text, a
product's asin, an option value). Anything else, an empty search, or a click on something not
on the page changes nothing: the same page comes back with reward 0 (`info['invalid']`), as in
WebShop. `search[...]` works from every page, as in WebShop's text env.

The reward is 0 until Buy Now, then WebShop's reward of the purchase (`reward.get_reward`);
success is reward 1. All envs of a process share one read-only product table and search index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eef_tasks.envs.base import EnvError, EpisodeOver, ReplayResult, StepResult, replay_steps
from eef_tasks.envs.webshop.products import Goal, Product, WebShopData, load_webshop
from eef_tasks.envs.webshop.reward import RewardInfo, get_reward
from eef_tasks.envs.webshop.search import ProductSearch, product_search
from eef_tasks.envs.webshop.tasks import ENV_NAME, goal_of

PRODUCT_WINDOW = 10  # WebShop's results per page
SEP = " [SEP] "
BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BUY_NOW = "Buy Now"
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")

_ACTION_RE = re.compile(r"(.+)\[(.+)\]")  # WebShop's parse_action (greedy, from the start)


def parse_action(action: str) -> tuple[str, str | None]:
    """('click', 'buy now') from 'click[Buy Now]'; (action, None) when it has no [argument]."""
    match = _ACTION_RE.match(action)
    if match is None:
        return action, None
    return match[1], match[2].lower()


@dataclass
class _Session:
    """What WebShop keeps per session, plus the page shown."""

    goal: Goal
    page_name: str = "index"  # index | search_results | item_page | item_sub_page | done
    keywords: str | None = None
    page: int | None = None
    results: list[Product] = field(default_factory=list)
    asin: str | None = None
    asins: set[str] = field(default_factory=set)
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None
    reward: RewardInfo | None = None


class WebShop:
    """WebShop (1,000 products, text mode) behind the `Env` interface; see the module docstring.

    `show_attrs` adds WebShop's Attributes button to item pages (off in AgentGym's and ETO's
    setting). The product table and search index are shared by every instance in the process.
    """

    name = ENV_NAME

    def __init__(self, *, show_attrs: bool = False, data: WebShopData | None = None,
                 search: ProductSearch | None = None) -> None:
        self.show_attrs = show_attrs
        self.data = data or load_webshop()
        self.search_engine = search or product_search()
        self._session: _Session | None = None
        self._clear_episode()

    # -- lifecycle --

    def close(self) -> None:
        self._clear_episode()

    def __enter__(self) -> WebShop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear_episode(self) -> None:
        self._session = None
        self._task_id: str | None = None
        self._initial_observation = ""
        self._actions: list[str] = []
        self._done = False
        self._max_steps: int | None = None

    @property
    def task_id(self) -> str | None:
        return self._task_id

    @property
    def goal(self) -> Goal | None:
        return self._session.goal if self._session else None

    @property
    def instruction(self) -> str:
        return self._session.goal.instruction_text if self._session else ""

    @property
    def actions(self) -> list[str]:
        return list(self._actions)

    @property
    def page_name(self) -> str | None:
        return self._session.page_name if self._session else None

    # -- the Env interface --

    def reset(self, task_id: str, *, max_steps: int | None = None) -> str:
        """Start goal `webshop/<index>` (or human goal `webshop/human/<index>`); returns the search page. With `max_steps`, the episode
        ends (`info['truncated']`) after that many actions."""
        goal = goal_of(task_id, self.data)
        self._clear_episode()
        self._session = _Session(goal=goal)
        self._task_id = task_id
        self._max_steps = max_steps
        self._initial_observation = self.observation
        return self._initial_observation

    def step(self, action: str) -> StepResult:
        if self._session is None:
            raise EpisodeOver("no episode is running: call reset(task_id) first")
        if self._done:
            raise EpisodeOver(f"the episode of {self._task_id} is over: call reset() to start another")
        action = str(action)
        accepted = self._apply(action)
        self._actions.append(action)
        session = self._session
        finished = session.page_name == "done"
        n = len(self._actions)
        truncated = not finished and self._max_steps is not None and n >= self._max_steps
        self._done = finished or truncated
        reward = session.reward.reward if session.reward else 0.0
        info: dict[str, Any] = {
            "invalid": not accepted,
            "ambiguous": False,
            "score": reward,
            "truncated": truncated,
            "steps": n,
            "page": session.page_name,
        }
        if session.reward is not None:
            info["reward_info"] = session.reward.as_dict()
            info["purchased"] = {"asin": session.asin, "options": dict(session.options)}
        return StepResult(self.observation, reward, self._done, info)

    def replay(
        self,
        actions: Sequence[str],
        recorded_observations: Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        max_steps: int | None = None,
    ) -> ReplayResult:
        """Reset `task_id` (default: the current task) and apply `actions` until the episode ends;
        the env is left in the state after the replay."""
        task_id = task_id or self._task_id
        if task_id is None:
            raise EpisodeOver("replay needs a task: pass task_id= or reset(task_id) first")
        self.reset(task_id, max_steps=max_steps)
        return replay_steps(self, task_id, self.instruction, self._initial_observation, actions,
                            recorded_observations, 0.0)

    # -- WebShop's rules --

    def clickables(self) -> list[str]:
        """What `click[...]` accepts on the current page (WebShop's `get_available_actions`
        clickables: buttons and product links lowercased, then option values; 'search' is
        listed on the search page but not clickable)."""
        return list(self._clickable_map())

    def available_actions(self) -> dict[str, Any]:
        """WebShop's `get_available_actions()`: {has_search_bar, clickables}."""
        s = self._require_session()
        return {"has_search_bar": s.page_name == "index", "clickables": self.clickables()}

    def _require_session(self) -> _Session:
        if self._session is None:
            raise EpisodeOver("no episode is running: call reset(task_id) first")
        return self._session

    def _product(self) -> Product:
        s = self._require_session()
        assert s.asin is not None
        return self.data.by_asin[s.asin]

    def _clickable_map(self) -> dict[str, tuple[str, str | None]]:
        """lowercased name -> (kind, option name); later entries win, as in WebShop's dict."""
        s = self._require_session()
        buttons: list[str] = []
        links: list[str] = []
        radios: list[tuple[str, str]] = []
        if s.page_name == "index":
            buttons = ["Search"]
        elif s.page_name == "search_results":
            buttons = [BACK_TO_SEARCH] + ([PREV_PAGE] if (s.page or 1) > 1 else []) + [NEXT_PAGE]
            links = [p.asin for p in self._page_products()]
        elif s.page_name == "item_page":
            product = self._product()
            buttons = [BACK_TO_SEARCH, PREV_PAGE, *SUB_PAGES[: 4 if self.show_attrs else 3], BUY_NOW]
            radios = [(name, v) for name, values in product.options.items() for v in values]
        elif s.page_name == "item_sub_page":
            buttons = [BACK_TO_SEARCH, PREV_PAGE]
        table: dict[str, tuple[str, str | None]] = {}
        for b in buttons:
            table[b.lower()] = ("button", None)
        for asin in links:
            table[asin.lower()] = ("product", None)
        for name, value in radios:
            table[value] = ("option", name)
        return table

    def _apply(self, action: str) -> bool:
        """Apply one action (WebShop's `step` + `receive`); False when it changed nothing."""
        s = self._require_session()
        name, arg = parse_action(action)
        if name == "search" and arg:
            self._search(arg, 1)
            return True
        if name != "click" or arg is None or arg == "search":
            return False
        table = self._clickable_map()
        if arg not in table:
            return False
        kind, option_name = table[arg]
        if arg == BUY_NOW.lower():
            self._buy()
        elif arg == BACK_TO_SEARCH.lower():
            s.page_name, s.keywords, s.page, s.asin = "index", None, None, None
            s.asins, s.options, s.results = set(), {}, []
        elif arg == NEXT_PAGE.lower() and s.page_name == "search_results":
            self._search(s.keywords or "", (s.page or 1) + 1)
        elif arg == PREV_PAGE.lower() and s.page_name == "search_results":
            self._search(s.keywords or "", (s.page or 1) - 1)
        elif arg == PREV_PAGE.lower() and s.page_name == "item_sub_page":
            s.page_name, s.sub_page = "item_page", None
        elif arg == PREV_PAGE.lower() and s.page_name == "item_page":
            self._search(s.keywords or "", s.page or 1)
        elif arg in (p.lower() for p in SUB_PAGES):
            s.page_name = "item_sub_page"
            s.sub_page = next(p for p in SUB_PAGES if p.lower() == arg)
        else:
            if kind == "product":
                s.asin = arg.upper()
                s.asins.add(s.asin)
            elif kind == "option" and option_name is not None:
                s.options[option_name.lower()] = arg
            s.page_name = "item_page"
        return True

    def _search(self, keywords: str, page: int) -> None:
        s = self._require_session()
        s.keywords, s.page = keywords, page
        s.asin, s.options = None, {}
        s.results = self.search_engine.search(keywords)
        s.page_name = "search_results"

    def _page_products(self) -> list[Product]:
        s = self._require_session()
        page = s.page or 1
        # WebShop slices [(page-1)*10 : page*10]; page 0 (Prev from page 1 cannot happen: the
        # button is not shown there) would give Python's negative slice
        return s.results[(page - 1) * PRODUCT_WINDOW: page * PRODUCT_WINDOW]

    def _buy(self) -> None:
        s = self._require_session()
        product = self._product()
        goal_product = self.data.by_asin[s.goal.asin]
        s.reward = get_reward(product, s.goal, goal_product.title_nouns, product.price, s.options)
        s.page_name = "done"

    # -- observation --

    @property
    def observation(self) -> str:
        """The current page in WebShop's text mode."""
        s = self._require_session()
        return SEP.join(_visible(t) for t in self._page_texts(s) if _is_node(t))

    def _page_texts(self, s: _Session) -> list[str]:
        """The page's text nodes as the template renders them (surrounding spaces included)."""
        instruction = ["Instruction:", s.goal.instruction_text]
        if s.page_name == "index":
            return ["WebShop", *instruction, "Search"]
        if s.page_name == "search_results":
            page = s.page or 1
            texts = [*instruction, BACK_TO_SEARCH, f"Page {page} (Total results: {len(s.results)})"]
            if page > 1:
                texts.append(PREV_PAGE)
            texts.append(NEXT_PAGE)
            for p in self._page_products():
                texts += [p.asin, p.title, p.price_tag]
            return texts
        if s.page_name == "done":
            return self._done_texts(s)
        product = self._product()
        texts = [*instruction, BACK_TO_SEARCH, PREV_PAGE]
        if s.page_name == "item_page":
            for name, values in product.options.items():
                texts += [name, *values]
            texts += [product.title, f"Price: {product.price_tag}", "Rating: N.A.",
                      *SUB_PAGES[: 4 if self.show_attrs else 3], BUY_NOW]
        elif s.sub_page == "Description":
            texts.append(product.description)
        elif s.sub_page == "Features":
            texts += [" " + b for b in product.bullet_points]  # the template's "<p> {{b}}</p>"
        elif s.sub_page == "Attributes":
            texts += [*(" " + a for a in product.attributes), product.category, product.query,
                      product.product_category]
        # Reviews: the small setting has none, so the page holds only its buttons
        return texts

    def _done_texts(self, s: _Session) -> list[str]:
        # WebShop's done page as its text env renders it: the purchase (asin, options as sorted
        # JSON) and the score; the target fields are not passed to the template, so empty.
        reward = s.reward.reward if s.reward else 0.0
        return [
            "Thank you for shopping with us!", "Your code:", "None",
            "(Paste it in your MTurk interface.)", "Purchased", "asin", s.asin or "",
            "options", json.dumps(s.options, sort_keys=True), "attrs", "None",
            "category", "None", "query", "None", "product category", "None",
            "Target", "asin", "options", "attrs", "price upper", "instuction text",
            "category", "product category", "query", "Goal", "None", "Reward",
            "Your score (min 0.0, max 1.0)", repr(reward), "Reward Details", "None",
        ]


# BeautifulSoup (html.parser) turns a whitespace-only text node into "\n" when it holds a newline
# (WebShop then drops it) and into " " otherwise (kept, as an empty part between separators).


def _is_node(raw: str) -> bool:
    return raw != "" and not (raw.strip() == "" and "\n" in raw)


def _visible(raw: str) -> str:
    return raw.strip()

"""eef's WebShop: goals, splits, pages, invalid actions, reward, search and the offline experts.

Expected page texts below are WebShop's own: its templates rendered by Flask and converted by its
text-mode rules (the reference harness and its results are described in benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from eef_tasks import envs
from eef_tasks.envs.base import EnvError, EpisodeOver
from eef_tasks.envs.webshop import WebShop, catalog, find_task, goal_index, parse_action
from eef_tasks.envs.webshop.products import load_webshop
from eef_tasks.envs.webshop.reward import get_reward, token_set_ratio
from eef_tasks.envs.webshop.search import analyze, product_search
from eef_tasks.experts import run_expert, to_record
from eef_tasks.experts import webshop as experts

GOAL0 = ("Find me double sided, machine washable decorative pillows with printing technology "
         'with size: 28" x 28", and price lower than 50.00 dollars')
GOAL0_ASIN = "B0743JKHBV"


@pytest.fixture
def env():
    with WebShop() as e:
        yield e


def _goal_digest() -> str:
    return hashlib.sha256("\n".join(
        f"{g.asin}|{g.instruction_text}" for g in load_webshop().goals).encode()).hexdigest()


# sha256 of WebShop's small-setting files (the copies in the project's shared data folder, of
# which items_ins_v2_1000.json is byte-identical to WebShop's original)
SHIPPED_SHA256 = {
    "items_shuffle_1000.json.gz": "472d2b756304ec53317dc4ed78e039b77db9a56f0384dda0002056cb498b1395",
    "items_ins_v2_1000.json.gz": "f88a36314a397b53b3d9c3fa5878e5f7b26d35019a51ec83fbedeca61a948f6f",
    "items_human_ins.json.gz": "8bc0ae02b37351395091c55b29352ba21a26a231d093c151cf1a83847ca66359",
}


def test_shipped_data_is_webshops_files_unchanged():
    import gzip

    from eef_tasks.envs.webshop.products import DATA_DIR

    for name, digest in SHIPPED_SHA256.items():
        assert hashlib.sha256(gzip.decompress((DATA_DIR / name).read_bytes())).hexdigest() == digest
        assert (DATA_DIR / name).stat().st_size < 1_000_000  # compressed, a few hundred KB at most


def test_goals_are_webshops_in_agentgyms_order_and_stable_across_processes():
    data = load_webshop()
    assert len(data.products) == 1000 and len(data.goals) == 6910
    # goal 0 as AgentGym's webshop server shows it (public evaluation logs of agentenv-webshop)
    assert data.goals[0].instruction_text == GOAL0 and data.goals[0].asin == GOAL0_ASIN
    code = ("from tests.test_webshop import _goal_digest; print(_goal_digest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parent.parent)
    assert other.stdout.strip() == _goal_digest()  # the price caps do not change per process


def test_splits_ids_and_catalog():
    assert [len(catalog(s)) for s in ("train", "dev", "test")] == [5410, 1000, 500 + 13]  # + the human goals
    assert len(catalog("test", human=False)) == 500
    test = catalog("test", limit=200)
    assert [s.task_id for s in test[:2]] == ["webshop/0", "webshop/1"] and len(test) == 200
    spec = find_task("webshop/1500")
    assert spec.split == "train" and spec.max_steps == 10 and spec.env == "webshop"
    assert spec.instruction == load_webshop().goals[1500].instruction_text
    assert envs.find_task("webshop/499").split == "test"
    assert envs.find_task("webshop/500").split == "dev"
    assert goal_index("webshop/webshop_12") == 12  # AgentGym's item id
    for bad in ("webshop", "webshop/x", "webshop/1/2", "scienceworld/boil/1"):
        with pytest.raises(EnvError, match="malformed WebShop task id"):
            goal_index(bad)
    with pytest.raises(EnvError, match="goals 0..6909"):
        find_task("webshop/6910")
    assert isinstance(envs.make_env("webshop"), envs.Env)
    assert len(envs.catalog("webshop", "dev")) == 1000


def test_human_goals_are_test_tasks_that_only_eefs_webshop_plays(env):
    """The 13 human goals of these products, as WebShop's human-goal mode builds them: test tasks
    'webshop/human/<i>' after the synthetic test goals; the gold expert wins each; AgentGym's
    backend (whose server takes synthetic goal indices) never lists them."""
    data = load_webshop()
    assert len(data.human_goals) == 13 and all(g.human for g in data.human_goals)
    humans = [s for s in catalog("test") if s.meta.get("goals") == "human"]
    assert [s.task_id for s in humans] == [f"webshop/human/{i}" for i in range(13)]
    assert catalog("test")[-13:] == humans and find_task("webshop/human/5") == humans[5]
    lotion = next(g for g in data.human_goals if g.asin == "B087Y28XLM")
    # WebShop's get_human_goals: the instruction without its final period, a price cap, the
    # instruction attributes, and the instruction options as plain values for the reward
    assert lotion.instruction_text.startswith("i am looking fresh scent body lotion for dry skin")
    assert lotion.attributes == ("dry skin",) and lotion.reward_options == ("fresh",)
    assert lotion.options == {"scent": "fresh"}
    assert envs.catalog("agentgym:webshop", "test") == catalog("test", human=False)
    with pytest.raises(EnvError, match="only eef's own WebShop"):
        goal_index("webshop/human/3")
    with pytest.raises(EnvError, match="human goals 0..12"):
        find_task("webshop/human/13")
    for spec in humans:
        run = run_expert(env, spec.task_id, "gold")
        assert run.reward == 1.0, spec.task_id
    assert env.instruction == humans[-1].instruction


def test_search_page_results_and_paging(env):
    assert env.reset("webshop/0") == f"WebShop [SEP] Instruction: [SEP] {GOAL0} [SEP] Search"
    assert env.available_actions() == {"has_search_bar": True, "clickables": ["search"]}
    first = env.step("search[decorative pillows]")
    head = f"Instruction: [SEP] {GOAL0} [SEP] Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] "
    assert first.observation.startswith(head) and not first.invalid and first.reward == 0
    assert "< prev" not in env.clickables()  # no Prev on page 1
    asins = [c for c in env.clickables() if c.startswith("b0")]
    assert len(asins) == 10
    second = env.step("click[Next >]")
    assert "Page 2 (Total results: 50) [SEP] < Prev [SEP] Next >" in second.observation
    assert not set(asins) & set(env.clickables())
    for _ in range(4):
        env.step("click[next >]")
    past = env.observation  # page 6 of 50 results: WebShop shows an empty page
    assert past.endswith("Page 6 (Total results: 50) [SEP] < Prev [SEP] Next >")
    back = env.step("click[< prev]")
    assert "Page 5 (Total results: 50)" in back.observation
    home = env.step("click[back to search]")
    assert home.observation == f"WebShop [SEP] Instruction: [SEP] {GOAL0} [SEP] Search"
    none = env.step("search[zzzqqq]")
    assert none.observation.endswith("Page 1 (Total results: 0) [SEP] Next >")


def test_item_page_options_sub_pages_and_purchase(env):
    env.reset("webshop/0")
    env.step("search[decorative pillows]")
    item = env.step(f"click[{GOAL0_ASIN}]")  # case-insensitive, like WebShop's lowercasing
    assert item.observation.endswith(
        "Decorative Square Accent Pillow Case, 16\" X 16\", Grey Purple [SEP] Price: $14.95 "
        "[SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now")
    assert "[SEP] size [SEP] 16\" x 16\" [SEP] 18 x 18-inch [SEP]" in item.observation
    assert "attributes" not in env.clickables()  # AgentGym's setting: no Attributes button
    features = env.step("click[features]")
    assert features.observation.split(" [SEP] ")[3] == "< Prev" and env.page_name == "item_sub_page"
    assert env.step("click[< prev]").observation == item.observation
    env.step('click[28" x 28"]')
    assert env.step("click[reviews]").observation.endswith("Back to Search [SEP] < Prev")
    env.step("click[< prev]")
    done = env.step("click[buy now]")
    assert done.done and done.reward == 1.0 and done.success
    assert done.info["purchased"] == {"asin": GOAL0_ASIN, "options": {"size": '28" x 28"'}}
    assert "Your score (min 0.0, max 1.0) [SEP] 1.0" in done.observation
    with pytest.raises(EpisodeOver):
        env.step("click[back to search]")


def test_attributes_page_when_shown():
    with WebShop(show_attrs=True) as env:
        env.reset("webshop/0")
        env.step("search[decorative pillows]")
        env.step(f"click[{GOAL0_ASIN}]")
        assert "attributes" in env.clickables()
        page = env.step("click[attributes]").observation
        assert page.endswith("[SEP] garden [SEP] decorative pillows [SEP] Home & Kitchen › Bedding"
                             " › Decorative Pillows, Inserts & Covers › Throw Pillow Covers")


@pytest.mark.parametrize("action", [
    "click[buy now]", "click[next >]", "click[search]", "search[]", "search", "buy",
    "click[B000000000]", "Action: click[foo]", "", "click[", "click[< prev]",
])
def test_invalid_actions_change_nothing(env, action):
    start = env.reset("webshop/3")
    result = env.step(action)
    assert result.observation == start and result.invalid and result.reward == 0
    assert not result.done and env.page_name == "index"


def test_invalid_clicks_on_an_item_page_and_search_from_anywhere(env):
    env.reset("webshop/0")
    env.step("search[decorative pillows]")
    item = env.step(f"click[{GOAL0_ASIN}]").observation
    for action in ("click[next >]", "click[xx-large]", "click[b09hkzs7lv]"):
        result = env.step(action)
        assert result.invalid and result.observation == item
    result = env.step("search[throw pillow]")  # WebShop's text env searches from any page
    assert not result.invalid and env.page_name == "search_results"


def test_step_limit_truncates_and_replay_reproduces(env):
    env.reset("webshop/7", max_steps=2)
    env.step("search[shoes]")
    result = env.step("click[next >]")
    assert result.done and result.info["truncated"] and result.reward == 0
    actions, _ = experts.plan("gold", "webshop/7")
    first = env.replay(actions, task_id="webshop/7")
    again = env.replay(actions, first.observations)
    assert again.drift == [] and again.observations == first.observations
    assert again.reward == first.reward == 1.0


def test_parse_action_is_webshops_rule():
    assert parse_action("click[Buy Now]") == ("click", "buy now")
    assert parse_action("search[a [b] c]") == ("search[a ", "b] c")  # greedy, as WebShop's regex
    assert parse_action("search[a\nb]") == ("search[a\nb]", None)  # '.' stops at a newline
    assert parse_action("look") == ("look", None)


def test_reward_rules():
    data = load_webshop()
    goal = data.goals[0]
    target = data.by_asin[goal.asin]
    nouns = target.title_nouns
    full = get_reward(target, goal, nouns, target.price, dict(goal.options))
    assert full.reward == 1.0 and full.r_type == 1.0
    # no option chosen: (3 attributes + 0 options + price) / (3 + 1 + 1)
    assert get_reward(target, goal, nouns, target.price, {}).reward == pytest.approx(4 / 5)
    over = get_reward(target, goal, nouns, goal.price_upper + 1, dict(goal.options))
    assert over.reward == pytest.approx(4 / 5) and not over.r_price
    # thefuzz's token_set_ratio: a subset scores 100; a (name, value) pair as WebShop passes it
    assert token_set_ratio("large", "xx-large tall") == 100
    assert token_set_ratio("large", ("size", "x-large")) == 100
    assert token_set_ratio("blue", ("color", "1877blue")) < 85
    # WebShop's colour normalisation: buying goal 1537's exact target and options scores < 1
    goal = data.goals[1537]
    target = data.by_asin[goal.asin]
    info = get_reward(target, goal, target.title_nouns, target.price, dict(goal.options))
    assert goal.options["color"] == "1877blue" and info.reward < 1 and info.r_option == 0.5


# Lucene's analysis of these texts (Anserini 0.22.1's DefaultEnglishAnalyzer, WebShop's index's)
LUCENE_TOKENS = {
    "technology assembly incredibly us uses running caresses ponies relational generalization "
    "hopeful conditional rational feudalism decisiveness formality sensitivity electrical goodness "
    "adjustable dependent adoption communism activate effective bowdlerize controlling rolling "
    "hopping filing agreed sized xs os happy sky dying lying possibly replacement": [
        "technolog", "assembl", "incred", "us", "us", "run", "caress", "poni", "relat", "gener",
        "hope", "condit", "ration", "feudal", "decis", "formal", "sensit", "electr", "good",
        "adjust", "depend", "adopt", "commun", "activ", "effect", "bowdler", "control", "roll",
        "hop", "file", "agre", "size", "xs", "os", "happi", "sky", "dy", "ly", "possibl", "replac"],
    "U.S.A. women's 1,000 3.5mm x-large ❤️ love ✔ ™ ★★ ☆ 琥珀 a_b _ q：a 1⁄2 wi-fi": [
        "u.s.a", "women", "1,000", "3.5mm", "x", "larg", "❤️", "love", "✔", "™", "★", "★", "琥",
        "珀", "a_b", "q：a", "1⁄2", "wi", "fi"],
}


@pytest.mark.parametrize("text", list(LUCENE_TOKENS))
def test_analyzer_matches_lucenes(text):
    assert analyze(text) == LUCENE_TOKENS[text]


def test_search_ranking():
    engine = product_search()
    hits = engine.search("decorative pillows")
    assert len(hits) == 50
    scores = engine.scores("decorative pillows")
    ranked = [scores[engine.products.index(p)] for p in hits]
    assert ranked == sorted(ranked, reverse=True) and min(ranked) > 0
    for a, b in zip(hits, hits[1:], strict=False):  # equal scores: by asin, as Anserini's tie-break
        if scores[engine.products.index(a)] == scores[engine.products.index(b)]:
            assert a.asin < b.asin
    for query, top10 in LUCENE_TOP10.items():
        assert [p.asin for p in engine.search(query)][:10] == top10, query
    assert engine.search("the and of") == []  # stop words only: nothing matches


# WebShop's own prebuilt 1k Lucene index, queried with Anserini 0.22.1 (benchmarks/README.md)
LUCENE_TOP10 = {
    "cabinets": ["B09P8D2Q1Q", "B08R5Z7S2K", "B089B1K9LJ", "B08MFGNXW3", "B09F6SCW47",
                 "B09HXDPKJF", "B004FG6BV2", "B08MB4NQGQ", "B09LVDSDQG", "B09MNNBDTJ"],
    "decorative pillows": ["B09HKZS7LV", "B08QVDNJC7", "B08K7LDM7Q", "B08L2ZDWN2", "B07T9LZKM7",
                           "B07P24ZMXK", "B0743JKHBV", "B09DYFZM1X", "B07V5WMYXS", "B07N33BPQ6"],
    "men's sweaters": ["B09J95S478", "B08L9SFBXV", "B07DKGJR74", "B08KGWLWFN", "B09KRLGSC5",
                       "B09Q37JQZ6", "B09P5CRVQ6", "B09QGK5XHZ", "B09NNMV9LN", "B09Q67H373"],
}


def test_envs_share_one_product_table_and_index():
    a, b = WebShop(), WebShop()
    assert a.data is b.data and a.search_engine is b.search_engine


def test_gold_expert_reaches_reward_one_where_webshops_reward_allows():
    env = WebShop()
    rewards = []
    for spec in catalog("test", human=False):  # the human goals: their own test
        actions, meta = experts.plan("gold", spec.task_id)
        assert len(actions) <= spec.max_steps and meta["target_page"] >= 1
        replay = env.replay(actions, task_id=spec.task_id)
        rewards.append(replay.reward)
        if replay.reward < 1.0:  # it still bought the target with the goal's options: the
            goal = env.goal      # shortfall is WebShop's reward (option normalisation), not a route
            assert replay.infos[-1]["purchased"] == {"asin": goal.asin, "options": goal.options}
    assert sum(r == 1.0 for r in rewards) == 480  # measured: 480 of the 500 test goals


def test_gold_pages_until_the_target_appears():
    env = WebShop()
    paged = next(s.task_id for s in catalog("test")
                 if experts.plan("gold", s.task_id)[1]["target_page"] > 1)
    actions, meta = experts.plan("gold", paged)
    assert actions[1:meta["target_page"]] == ["click[next >]"] * (meta["target_page"] - 1)
    assert env.replay(actions, task_id=paged).reward > 0


def test_synthetic_expert_is_deterministic_labelled_and_fails_like_gpt4():
    env = WebShop()
    modes, outcomes = set(), {}
    for spec in catalog("train")[:300]:
        actions, meta = experts.plan("synthetic", spec.task_id, seed=3)
        assert (actions, meta) == experts.plan("synthetic", spec.task_id, seed=3)
        assert meta["synthetic"] is True and len(actions) >= 1
        modes.add(meta["mode"])
        reward = env.replay(actions, task_id=spec.task_id).reward
        outcomes.setdefault(meta["mode"], []).append(reward)
    assert set(experts.FAILURE_MODES) <= modes
    assert {"follow", "follow_recover", "follow_read"} <= modes
    for mode in ("missed_option", "gives_up", "search_loop"):
        assert max(outcomes[mode]) < 1.0, mode
    assert all(r == 0.0 for r in outcomes["gives_up"] + outcomes["search_loop"])
    assert sum(r == 1.0 for r in outcomes["follow"]) > 0.8 * len(outcomes["follow"])
    other = [experts.plan("synthetic", s.task_id, seed=4)[0] for s in catalog("train")[:50]]
    same = [experts.plan("synthetic", s.task_id, seed=3)[0] for s in catalog("train")[:50]]
    assert other != same


def test_run_expert_on_webshop_gives_expert_records():
    env = WebShop()
    spec = find_task("webshop/600")
    run = run_expert(env, spec.task_id, "gold")
    assert run.success and run.instruction == spec.instruction and run.new_gold is None
    assert run.meta["env_version"].startswith("webshop-small-1000")
    record = to_record(run, spec)
    assert record.expert == "gold" and record.reward == 1.0
    assert [s.action for s in record.steps] == experts.plan("gold", spec.task_id)[0]
    failed = run_expert(env, "webshop/600", "synthetic", seed=1)
    assert failed.traj_id == "synthetic/webshop/600/1" and failed.meta["synthetic"] is True


def test_collect_webshop_experts_into_the_store_resumably(tmp_path):
    import duckdb

    from eef_tasks.collect import collect_experts

    db = tmp_path / "ws.duckdb"
    gold = collect_experts(db, "webshop", "gold", split="dev", limit=4, progress=False)
    assert (gold.ran, gold.successes, gold.errors) == (4, 4, [])
    synthetic = collect_experts(db, "webshop", "synthetic", split="train", limit=5, seed=[0, 1],
                                progress=False)
    assert synthetic.ran == 10 and not synthetic.errors
    again = collect_experts(db, "webshop", "gold", split="dev", limit=4, progress=False)
    assert again.ran == 0 and again.already_stored == 4  # a rerun writes nothing
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT t.env, t.split, count(*) FROM trajectories r JOIN tasks t "
                           "USING (task_id) GROUP BY ALL ORDER BY 2").fetchall()
        modes = {m for (m,) in con.execute(
            "SELECT meta->>'mode' FROM trajectories WHERE expert = 'synthetic'").fetchall()}
    assert rows == [("webshop", "dev", 4), ("webshop", "train", 10)]
    assert modes and modes <= {"follow", "follow_recover", "follow_read", *experts.FAILURE_MODES}


def test_the_cheap_synthetic_expert_plans_webshop_goals_too():
    """synthetic-cheap (README, "Expert cost"): its own draws, so its plans differ from synthetic's."""
    specs = catalog("train")[:30]
    cheap = [experts.plan("synthetic-cheap", s.task_id, seed=3, success_rate=0.15) for s in specs]
    assert all(meta["synthetic"] is True and meta["success_rate"] == 0.15 for _, meta in cheap)
    assert [a for a, _ in cheap] != [experts.plan("synthetic", s.task_id, seed=3)[0] for s in specs]
    with pytest.raises(EnvError, match="unknown WebShop expert 'synthetic-pricey'"):
        experts.plan("synthetic-pricey", specs[0].task_id)

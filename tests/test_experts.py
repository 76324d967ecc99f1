"""Offline experts: cached gold paths and the synthetic expert, run in the real ScienceWorld."""

from __future__ import annotations

import json

import pytest

from eef_tasks.envs import scienceworld as sw
from eef_tasks.envs.base import same_observation
from eef_tasks.experts import gold as gold_mod
from eef_tasks.experts import plan_actions, run_expert, task_record, to_record, traj_id_for
from eef_tasks.experts.synthetic import (
    FAILURE_MODES,
    NON_TERMINAL_MODES,
    SYNTHETIC_EXPERTS,
    success_rate_of,
    synthetic_plan,
    wrong_version,
)

FIND = "scienceworld/find-living-thing/0"
PLANT = "scienceworld/find-plant/3"
LIFESPAN = "scienceworld/lifespan-longest-lived/0"

GOLD = [  # find-living-thing/0 under 'easy', as the game generated it once
    "open door to kitchen", "go to kitchen", "open door to outside", "go to outside",
    "look around", "focus on butterfly", "pick up butterfly", "open door to kitchen",
    "go to kitchen", "move egg butterfly egg in inventory to red box",
]

from game import HAVE_JAVA  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gold-cache")


@pytest.fixture(scope="module")
def env():
    if not HAVE_JAVA:
        pytest.skip("ScienceWorld needs Java")
    world = sw.ScienceWorld()
    yield world
    world.close()


# --- plans (no game needed) ------------------------------------------------------------------------


def test_cost_model_by_hand():
    big, cheap = SYNTHETIC_EXPERTS["synthetic"].cost, SYNTHETIC_EXPERTS["synthetic-cheap"].cost
    # prompt: 600 + 150 k tokens at step k, summed over k < n; completion: 30 per step
    assert [big.usage(n) for n in (0, 1, 2, 4)] == [(0, 0), (600, 30), (1350, 60), (3300, 120)]
    assert big.meta(4)["cost_usd"] == 0.1062  # (3300 * 30 + 120 * 60) / 1e6
    assert cheap.meta(4)["cost_usd"] == 0.00183  # (3300 * 0.5 + 120 * 1.5) / 1e6
    assert big.meta(4)["cost_model"]["stated"] is True
    with pytest.raises(ValueError, match="n_steps must be >= 0"):
        big.usage(-1)
    assert (success_rate_of("synthetic"), success_rate_of("synthetic-cheap"), success_rate_of("gold")) == (
        0.35, 0.15, 0.35)
    assert success_rate_of("synthetic-cheap", 0.5) == 0.5


def test_the_two_synthetic_experts_draw_different_plans():
    gold = gold_mod.GoldPath(task_id=FIND, actions=list(GOLD), instruction="find", simplifications="easy",
                             scienceworld_version="x", generated_at="x", generation_s=0.0)
    same = [plan_actions("synthetic", gold, seed=s)[1]["mode"] for s in range(20)]
    other = [plan_actions("synthetic-cheap", gold, seed=s)[1]["mode"] for s in range(20)]
    assert same == [plan_actions("synthetic", gold, seed=s)[1]["mode"] for s in range(20)]  # seeded
    assert same != other
    assert sum(m.startswith("follow") for m in other) <= sum(m.startswith("follow") for m in same)


def test_synthetic_plans_are_seeded_and_keep_gold_prefixes():
    plans = [synthetic_plan(GOLD, task_id=FIND, seed=s, max_steps=15) for s in range(60)]
    again = [synthetic_plan(GOLD, task_id=FIND, seed=s, max_steps=15) for s in range(60)]
    assert [p.actions for p in plans] == [p.actions for p in again]
    modes = {p.mode for p in plans}
    assert {"follow"} <= modes and len(modes & set(FAILURE_MODES)) >= 4
    for p in plans:
        if p.intends_success:
            assert [a for a in p.actions if a not in ("look around", "inventory")] == [
                a for a in GOLD if a not in ("look around", "inventory")
            ]
        else:
            k = p.deviate_at
            assert k is not None and 1 <= k < len(GOLD)
            assert p.actions[:k] == GOLD[:k]  # the useful prefix
            assert p.actions != GOLD
        if p.mode == "wander":
            assert len(p.actions) == 15


def test_non_terminal_failures_play_on_after_the_harm():
    plans = [synthetic_plan(GOLD, task_id=FIND, seed=s, max_steps=15, modes=NON_TERMINAL_MODES)
             for s in range(80)]
    failed = [p for p in plans if not p.intends_success]
    assert {p.mode for p in failed} == set(NON_TERMINAL_MODES)
    for p in failed:
        harm = p.meta["harmful_steps"]
        assert harm and harm[0] == p.deviate_at and p.actions[:harm[0]] == GOLD[:harm[0]]
        assert not any(a.startswith("focus on") and a not in GOLD for a in p.actions)  # nothing ends it early
        after = p.actions[harm[-1] + 1:]
        if p.mode == "wrong_turn":  # out of the room it just entered, straight back, then the plan but its last action
            k = harm[0] - 1
            assert p.actions[k].startswith("go to ") and p.actions[k + 2] == p.actions[k]
            assert p.meta["recovery_step"] == k + 2 and after == [GOLD[k]] + GOLD[k + 1:-1]
        elif p.mode == "carry_wrong":  # the wrong thing picked up, then the rest of the plan as planned
            assert p.actions[harm[0]] == f"pick up {p.meta['carried']}" != GOLD[harm[0]]
            assert p.meta["carried"] != "butterfly" and not p.meta["carried"].startswith("door")
            assert after == GOLD[harm[0] + 1:]
        else:  # budget_detour: looking around until the plan no longer fits into 15 steps
            assert len(p.actions) == 15 and all(p.actions[k].startswith(("look ", "inventory")) for k in harm)
            assert after == GOLD[harm[0]:harm[0] + len(after)] and len(after) < len(GOLD) - harm[0]
    assert synthetic_plan(GOLD, task_id=FIND, seed=3, max_steps=15, modes=("wrong_turn",)).mode in (
        "wrong_turn", "follow", "follow_with_detours")
    with pytest.raises(ValueError, match="unknown synthetic failure modes"):
        synthetic_plan(GOLD, task_id=FIND, seed=0, modes=("oops",))


def test_wrong_actions_are_plausible():
    import random

    rng = random.Random(0)
    wrong = wrong_version("focus on butterfly", GOLD, rng)
    assert wrong.startswith("focus on ") and wrong != "focus on butterfly"
    wrong = wrong_version("go to kitchen", GOLD, rng)
    assert wrong == "go to outside"
    assert wrong_version("look around", GOLD, rng) in GOLD


def test_gold_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("EEF_CACHE_DIR", str(tmp_path / "root"))
    assert gold_mod.gold_cache_dir() == tmp_path / "root" / "gold"
    path = gold_mod.gold_file(FIND)
    assert path == tmp_path / "root" / "gold" / "scienceworld" / "easy" / "find-living-thing" / "0.json"
    assert gold_mod.load_gold(FIND) is None
    gold = gold_mod.GoldPath(
        FIND, GOLD, "Your task is ...", "easy", "1.2.3", "2025-01-01T00:00:00+00:00", 0.1
    )
    gold_mod.save_gold(gold)
    assert gold_mod.load_gold(FIND) == gold
    assert gold_mod.gold_path(FIND) == gold  # from the cache: no game started
    path.write_text("{not json")
    assert gold_mod.load_gold(FIND) is None  # a corrupt file is ignored (and regenerated)
    path.write_text(json.dumps({**gold.to_json(), "task_id": PLANT}))
    assert gold_mod.load_gold(FIND) is None


def test_traj_ids_are_deterministic():
    assert traj_id_for("gold", FIND, 3) == f"gold/{FIND}"
    assert traj_id_for("synthetic", FIND, 3) == f"synthetic/{FIND}/3"


# --- in the game ----------------------------------------------------------------------------------------


def test_gold_expert_generates_caches_and_succeeds(env, cache_dir):
    gold = gold_mod.gold_path(LIFESPAN, env=env, cache_dir=cache_dir)
    assert gold.actions and gold.instruction.startswith("Your task is to find the animal")
    assert gold_mod.gold_file(LIFESPAN, cache_dir=cache_dir).exists()
    assert gold_mod.gold_path(LIFESPAN, cache_dir=cache_dir) == gold  # cached, same actions
    run = run_expert(env, LIFESPAN, "gold", gold=gold)
    assert run.success and run.reward == 1.0 and run.new_gold is None
    record = to_record(run, sw.find_task(LIFESPAN))
    assert record.source == "expert" and record.expert == "gold" and record.success
    assert record.traj_id == f"gold/{LIFESPAN}" and record.split == "train"
    assert record.steps[-1].reward == 1.0 and all(s.thought is None for s in record.steps)
    task = task_record(sw.find_task(LIFESPAN), run.instruction)
    assert task.max_steps == 10 and task.instruction == gold.instruction


def test_synthetic_expert_succeeds_and_fails_with_real_observations(env, cache_dir):
    results = []
    for task_id in (FIND, PLANT):
        gold = gold_mod.gold_path(task_id, env=env, cache_dir=cache_dir)
        reference = env.replay(gold.actions, task_id=task_id)
        spec = sw.find_task(task_id)
        for seed in range(5):
            run = run_expert(env, task_id, "synthetic", seed=seed, gold=gold, max_steps=spec.max_steps)
            record = to_record(run, spec)
            assert record.expert == "synthetic" and record.meta["synthetic"] is True
            # the stated cost model's tokens and cost, for the actions the game took
            assert {k: record.meta[k] for k in ("prompt_tokens", "completion_tokens", "cost_usd", "cost_model")} == \
                SYNTHETIC_EXPERTS["synthetic"].cost.meta(record.n_steps)
            assert record.source == "expert" and 0.0 <= record.reward <= 1.0
            assert record.traj_id == f"synthetic/{task_id}/{seed}"
            planned, _ = plan_actions("synthetic", gold, seed=seed, max_steps=spec.max_steps)
            assert [s.action for s in record.steps] == planned[: len(record.steps)]
            k = run.meta["deviate_at"] or 0
            for step in range(min(k, len(record.steps))):  # the prefix is the gold path's, as played
                assert same_observation(record.steps[step].observation, reference.observations[step])
            results.append(record)
    successes = [r for r in results if r.success]
    failures = [r for r in results if not r.success]
    assert successes and failures
    assert all(r.reward < 1.0 for r in failures)
    assert any(r.meta["mode"] in FAILURE_MODES and r.n_steps > 1 for r in failures)


def test_the_cheap_synthetic_expert_is_its_own_labelled_expert_in_the_game(env, cache_dir):
    gold = gold_mod.gold_path(FIND, env=env, cache_dir=cache_dir)
    spec = sw.find_task(FIND)
    run = run_expert(env, FIND, "synthetic-cheap", seed=0, gold=gold, max_steps=spec.max_steps)
    record = to_record(run, spec)
    assert (record.traj_id, record.expert, record.meta["synthetic"]) == (f"synthetic-cheap/{FIND}/0", "synthetic-cheap", True)
    assert record.meta["success_rate"] == 0.15
    assert record.meta["cost_usd"] == SYNTHETIC_EXPERTS["synthetic-cheap"].cost.meta(record.n_steps)["cost_usd"]
    assert record.meta["cost_model"]["stands_for"].startswith("gpt-3.5")


def test_wrong_turn_in_the_game_walks_out_comes_back_and_fails(env, cache_dir):
    gold = gold_mod.gold_path(FIND, env=env, cache_dir=cache_dir)
    spec = sw.find_task(FIND)
    seed = next(s for s in range(50) if synthetic_plan(
        gold.actions, task_id=FIND, seed=s, max_steps=spec.max_steps, modes=("wrong_turn",)).mode == "wrong_turn")
    run = run_expert(env, FIND, "synthetic", seed=seed, gold=gold, max_steps=spec.max_steps,
                     failure_modes=("wrong_turn",))
    harm, back = run.meta["harmful_steps"][0], run.meta["recovery_step"]
    assert run.meta["mode"] == "wrong_turn" and not run.success and run.reward < 1.0
    assert len(run.actions) == len(gold.actions) + 1  # played on to one action before the plan's end
    assert not run.meta["invalid_steps"]  # the way out and back are moves the game accepts
    entered = run.observations[harm - 1]  # the room it had just entered, left at `harm` and re-entered at `back`
    assert "You move to the" in run.observations[harm] and same_observation(run.observations[back], entered)

"""The hf rollout engine and driver: KV-cache reuse is exact, real ScienceWorld episodes from s0
and from a replayed gold-expert state are stored with the right fields, reruns skip stored ids.

CPU, the real SmolLM2-135M-Instruct checkpoint, the real game and a real DuckDB file; kept tiny
(few tokens, 2-3 steps) so that the whole file runs in about a minute or two on 2 cores."""

from __future__ import annotations

import dataclasses

import json

import pytest

from eef_tasks import store
from eef_tasks.chat import build_chat, observation_text
from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.hf import HFEngine
from eef_tasks.rollout import (
    RolloutEpisode,
    run_rollouts,
    simulation_episodes,
    traj_id_for_rollout,
)

pytestmark = pytest.mark.slow

FIND = "scienceworld/find-living-thing/0"

from game import needs_java  # noqa: E402



@pytest.fixture(scope="module")
def engine() -> HFEngine:
    import torch

    from eef_tasks.models import ModelError, default_model_path

    torch.manual_seed(0)
    try:
        path = default_model_path()
    except ModelError as exc:
        pytest.skip(str(exc))
    return HFEngine(path, device="cpu", max_batch_size=8)


def _chat(instruction: str) -> list[dict[str, str]]:
    return [t.message() for t in build_chat("scienceworld", instruction, [])]


def test_cached_batched_generation_equals_plain_generate(engine: HFEngine) -> None:
    """Greedy decoding with per-session KV reuse, batched over sessions of different lengths,
    gives the tokens of `model.generate` on the full history, turn after turn."""
    from eef_tasks.precision import choose_precision

    # in the dtype the engine runs in on this machine (bf16 on a CPU with bf16 instructions)
    assert str(engine.model.dtype) == f"torch.{choose_precision('cpu').dtype}"
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
    chats = [
        _chat("Your task is to find a(n) living thing. First, focus on the thing."),
        _chat("Your task is to boil water. First, focus on the substance."),
    ]
    # a longer history for the second one: rows with different cached and new lengths
    chats[1] += [
        {"role": "assistant", "content": "Thought: I should look.\nAction: look around"},
        {"role": "user", "content": observation_text("This room is called the kitchen. " * 4)},
    ]
    sessions = [engine.session(f"s{i}") for i in range(len(chats))]
    for turn in range(3):
        gens = engine.generate(list(zip(sessions, chats, strict=True)), sampling)
        for chat, gen in zip(chats, gens, strict=True):
            assert gen.token_ids == engine.plain_generate(chat, sampling.max_new_tokens)
            assert len(engine.prompt_ids(chat)) == gen.prompt_tokens
            if turn:
                assert gen.prefill_tokens < gen.prompt_tokens / 2  # the history came from the cache
            # the reply goes into the chat re-rendered (e.g. stripped), as rollouts do
            chat.append({"role": "assistant", "content": gen.text.strip() or "(empty reply)"})
            chat.append({"role": "user", "content": observation_text(f"You see item {turn}.")})


def test_sampling_is_seeded_per_session(engine: HFEngine) -> None:
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3)
    chat = _chat("Your task is to find a(n) animal.")
    a = engine.generate([(engine.session("x", 7), chat)], sampling)[0]
    alone = engine.generate([(engine.session("y", 7), chat), (engine.session("z", 8), chat)], sampling)[0]
    assert a.token_ids == alone.token_ids


def _store_gold(db) -> tuple[str, int]:
    from eef_tasks.envs.scienceworld import ScienceWorld, find_task
    from eef_tasks.experts import run_expert, to_record
    from eef_tasks.experts.gold import gold_path
    from eef_tasks.records import write_trajectories

    with ScienceWorld() as env:
        gold = gold_path(FIND, env=env)
        # simulations start from failed expert trajectories (the store refuses others): the gold
        # plan stopped one action short, played for real in the game, is one
        short = dataclasses.replace(gold, actions=gold.actions[:-1])
        run = run_expert(env, FIND, "gold", gold=short)
    record = to_record(run, find_task(FIND))
    assert not record.success
    with store.writer(db) as con:
        write_trajectories(con, [record])
    return record.traj_id, len(run.actions)


@needs_java
def test_rollouts_from_s0_and_from_gold_state_are_stored_and_resumable(engine, db_path) -> None:
    gold_id, n_gold = _store_gold(db_path)
    assert n_gold > 3
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=32, seed=1)
    common = dict(engine=engine, sampling=sampling, n_workers=2, max_steps=None)

    explore = [RolloutEpisode(FIND, sample=0), RolloutEpisode(FIND, sample=1)]
    sims = [RolloutEpisode(FIND, gold_id, 2)]
    s1 = run_rollouts(db_path, "r1", 1, explore, purpose="explore", max_steps=2,
                      **{k: v for k, v in common.items() if k != "max_steps"})
    s2 = run_rollouts(db_path, "r1", 1, sims, purpose="simulate", max_steps=4,
                      **{k: v for k, v in common.items() if k != "max_steps"})
    assert (s1.ran, s1.written, s1.errors) == (2, 2, [])
    assert (s2.ran, s2.written, s2.errors) == (1, 1, [])
    assert s1.generate_calls >= 1 and s1.mean_batch_size >= 1

    with store.reader(db_path) as con:
        rows = con.execute(
            """SELECT traj_id, source, model_id, run_id, iteration, purpose, branch_traj_id,
                      branch_step, n_steps, meta FROM trajectories WHERE run_id = 'r1' ORDER BY traj_id"""
        ).fetchall()
        gold_steps = con.execute(
            "SELECT action, observation FROM steps WHERE traj_id = ? ORDER BY step", [gold_id]
        ).fetchall()
        sim_id = traj_id_for_rollout("r1", 1, "simulate", sims[0])
        sim_steps = con.execute(
            "SELECT action, observation FROM steps WHERE traj_id = ? ORDER BY step", [sim_id]
        ).fetchall()
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == {traj_id_for_rollout("r1", 1, "explore", e) for e in explore} | {sim_id}
    for traj_id, source, model_id, run_id, iteration, purpose, branch, k, n_steps, meta in rows:
        meta = json.loads(meta)
        assert (source, run_id, iteration) == ("policy", "r1", 1)
        assert model_id == "smollm2-135m-instruct"
        assert meta["sampling"]["temperature"] == 0.7 and meta["sampling"]["max_new_tokens"] == 32
        assert meta["sampling"]["top_p"] == 0.95 and meta["sampling"]["seed"] == 1
        assert meta["n_invalid"] == len(meta["invalid_replies"])
        assert meta["n_calls"] >= n_steps - k
        if purpose == "explore":
            assert (branch, k) == (None, 0) and n_steps <= 2
        else:
            assert (purpose, branch, k) == ("simulate", gold_id, 2)
            assert meta["n_prefix"] == 2 and isinstance(meta["drift"], list)
            assert 2 <= n_steps <= 4
    # the replayed prefix is stored: the expert's actions with the observations the game gave now
    assert [a for a, _ in sim_steps[:2]] == [a for a, _ in gold_steps[:2]]

    # a rerun skips what is stored, before loading anything
    again = run_rollouts(db_path, "r1", 1, explore + [RolloutEpisode(FIND, sample=2)], purpose="explore",
                         max_steps=1, **{k: v for k, v in common.items() if k != "max_steps"})
    assert (again.requested, again.already_stored, again.ran, again.written) == (3, 2, 1, 1)


def test_simulation_episodes_from_failed_experts(db_path) -> None:
    from eef_tasks.records import StepRecord, TrajectoryRecord, write_trajectories

    steps = [StepRecord(action=f"a{i}", observation=f"o{i}") for i in range(12)]
    record = TrajectoryRecord(
        traj_id="x/fail", task_id="scienceworld/boil/1", env="scienceworld", split="train",
        instruction="boil", source="expert", expert="x", reward=0.5, steps=steps,
    )
    with store.writer(db_path) as con:
        write_trajectories(con, [record])
    eps = simulation_episodes(db_path, "any", n_sims=5)
    assert [e.branch_step for e in eps] == [2, 4, 6, 8, 10]
    assert {e.branch_traj_id for e in eps} == {"x/fail"}
    assert simulation_episodes(db_path, "any", n_sims=0) == []


def test_lora_adapter_is_applied(engine: HFEngine, tmp_path) -> None:
    """A LoRA adapter folder (peft) loads on top of the base model; a freshly initialised adapter
    (B = 0) leaves greedy replies unchanged, a perturbed one changes the logits."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(engine.model_path)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "zero")
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    lora.save_pretrained(tmp_path / "perturbed")

    sampling = SamplingConfig(temperature=0.0, max_new_tokens=6)
    chat = _chat("Your task is to find a(n) plant.")
    want = engine.generate([(engine.session("b"), chat)], sampling)[0].token_ids
    zero = HFEngine(engine.model_path, tmp_path / "zero", device="cpu")
    assert zero.generate([(zero.session("z"), chat)], sampling)[0].token_ids == want
    perturbed = HFEngine(engine.model_path, tmp_path / "perturbed", device="cpu")
    ids = torch.tensor([perturbed.prompt_ids(chat)])
    with torch.no_grad():
        assert not torch.allclose(perturbed.model(ids).logits, engine.model(ids).logits)

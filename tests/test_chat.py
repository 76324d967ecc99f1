"""The training chat: turn layout, supervision marks, and loading from the store."""

import pytest

from eef_tasks import chat, records, store

STEPS = [
    {"thought": "look first", "action": "look around", "observation": "A kitchen."},
    {"thought": None, "action": "open fridge", "observation": "The fridge is open."},
    {"thought": "take it", "action": "pick up milk", "observation": "You take the milk."},
]


def test_layout_and_supervision():
    turns = chat.build_chat("scienceworld", "Your task is to find milk.", STEPS, loss_from_step=1)
    assert [t.role for t in turns] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert turns[0].content == chat.SYSTEM_PROMPTS["scienceworld"]
    assert turns[1].content == "Your task is to find milk."
    assert turns[2].content == "Thought: look first\nAction: look around"
    assert turns[3].content == "Observation: A kitchen."
    assert turns[4].content == "Action: open fridge"
    assert [t.step for t in turns if t.role == "assistant"] == [0, 1, 2]
    assert [t.supervised for t in turns] == [False, False, False, False, True, False, True]
    # the observation after the last action is context for nothing and is left out
    assert "You take the milk." not in " ".join(t.content for t in turns)


def test_loss_from_step_bounds():
    assert not any(t.supervised for t in chat.build_chat("x", "go", STEPS, loss_from_step=3))
    assert sum(t.supervised for t in chat.build_chat("x", "go", STEPS, loss_from_step=0)) == 3
    with pytest.raises(ValueError):
        chat.build_chat("x", "go", STEPS, loss_from_step=4)


def test_unknown_env_gets_the_generic_prompt():
    assert chat.build_chat("alfworld", "go", [])[0].content == chat.DEFAULT_SYSTEM_PROMPT


def test_load_chat_from_store(tmp_path):
    record = records.TrajectoryRecord(
        traj_id="t1", task_id="sw/1", env="scienceworld", split="train", instruction="find milk",
        source="expert", expert="gold", reward=1.0,
        steps=[records.StepRecord(**s) for s in STEPS],
    )
    with store.writer(tmp_path / "s.duckdb") as con:
        records.write_trajectories(con, [record])
        turns = chat.load_chat(con, "t1", 2)
        assert turns == chat.build_chat("scienceworld", "find milk", STEPS, loss_from_step=2)
        with pytest.raises(store.StoreError, match="between 0 and 3"):
            chat.load_chat(con, "t1", 4)
        with pytest.raises(store.StoreError, match="no trajectory"):
            chat.load_chat(con, "nope", 0)

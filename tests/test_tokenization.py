"""encode_chat: loss labels through the model's own chat template (SmolLM2/ChatML and a
Llama-3-style template), and the truncation policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from eef_tasks import models  # noqa: E402
from eef_tasks.chat import build_chat  # noqa: E402
from eef_tasks.tokenization import (  # noqa: E402
    IGNORE_INDEX,
    ChatTooLong,
    encode_chat,
    supervised_text,
    truncate_turns,
)

LLAMA3_STYLE = Path(__file__).resolve().parent / "data" / "tokenizers" / "llama3-style-tiny"

STEPS = [
    {"thought": "I need to find water.", "action": "teleport to kitchen",
     "observation": "You teleport to the kitchen. You see a sink, a stove and a pot."},
    {"thought": None, "action": "pick up pot", "observation": "You move the pot to the inventory."},
    {"thought": "Fill it at the sink.", "action": "move pot to sink",
     "observation": "You move the pot to the sink. The pot now contains water."},
    {"thought": "Now heat it.", "action": "activate stove", "observation": "The stove is now activated."},
]
INSTRUCTION = "Your task is to boil water. First, focus on the substance."


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    try:
        path = models.default_model_path()
    except models.ModelError as exc:  # pragma: no cover - depends on the installation
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(path)


def _llama3_style_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(LLAMA3_STYLE)


TOKENIZERS = {
    "smollm2": (_smollm2_tokenizer, "<|im_end|>", "<|im_start|>assistant"),
    "llama3-style": (_llama3_style_tokenizer, "<|eot_id|>", "<|start_header_id|>assistant"),
}


@pytest.fixture(params=sorted(TOKENIZERS), scope="module")
def family(request):
    make, end, header = TOKENIZERS[request.param]
    return make(), end, header


def _expected_action_texts(loss_from_step: int) -> list[str]:
    out = []
    for step in STEPS[loss_from_step:]:
        thought = f"Thought: {step['thought']}\n" if step["thought"] else ""
        out.append(f"{thought}Action: {step['action']}")
    return out


@pytest.mark.parametrize("loss_from_step", [0, 2])
def test_supervised_tokens_are_exactly_the_actions_and_end_of_turn(family, loss_from_step):
    tokenizer, end, header = family
    turns = build_chat("scienceworld", INSTRUCTION, STEPS, loss_from_step)
    enc = encode_chat(tokenizer, turns)

    assert enc.input_ids == tokenizer.apply_chat_template([t.message() for t in turns], tokenize=True,
                                                          return_dict=True)["input_ids"]
    assert len(enc.labels) == len(enc.input_ids) and not enc.truncated
    texts = supervised_text(tokenizer, enc)
    assert texts == [t + end for t in _expected_action_texts(loss_from_step)]
    assert all(header not in t for t in texts)
    # labels: the token itself inside the spans, IGNORE_INDEX everywhere else
    inside = {j for s, e in enc.supervised_spans for j in range(s, e)}
    for j, (tok, label) in enumerate(zip(enc.input_ids, enc.labels)):
        assert label == (tok if j in inside else IGNORE_INDEX)
    assert enc.n_supervised_tokens == len(inside)


def test_context_turns_get_no_loss(family):
    tokenizer, end, _ = family
    turns = build_chat("scienceworld", INSTRUCTION, STEPS, loss_from_step=3)
    enc = encode_chat(tokenizer, turns)
    labelled = tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX], skip_special_tokens=False)
    assert labelled == f"Thought: Now heat it.\nAction: activate stove{end}"
    for context in ("teleport to kitchen", "pick up pot", "move pot to sink", "Observation", INSTRUCTION):
        assert context not in labelled
    # every supervised action all context: nothing labelled
    none = encode_chat(tokenizer, build_chat("scienceworld", INSTRUCTION, STEPS, loss_from_step=len(STEPS)))
    assert none.n_supervised_tokens == 0 and set(none.labels) == {IGNORE_INDEX}


def test_truncation_drops_oldest_context_pairs_and_keeps_instruction_and_supervised(family):
    tokenizer, end, _ = family
    turns = build_chat("scienceworld", INSTRUCTION, STEPS, loss_from_step=3)
    full = encode_chat(tokenizer, turns)
    enc = encode_chat(tokenizer, turns, max_length=len(full) - 1)
    assert enc.truncated and enc.n_dropped_turns == 2 and len(enc) <= len(full) - 1
    assert enc.kept_turns[:2] == turns[:2]  # system prompt and instruction
    assert enc.kept_turns[2:] == turns[4:]  # the oldest (action, observation) pair is gone
    assert supervised_text(tokenizer, enc) == supervised_text(tokenizer, full)

    # the tightest fit drops every context pair but keeps the supervised turn
    minimal = turns[:2] + turns[-1:]
    tight = encode_chat(tokenizer, minimal)
    enc = encode_chat(tokenizer, turns, max_length=len(tight))
    assert enc.kept_turns == minimal and enc.input_ids == tight.input_ids
    assert supervised_text(tokenizer, enc) == [f"Thought: Now heat it.\nAction: activate stove{end}"]


def test_truncation_never_drops_a_supervised_turn(family):
    tokenizer, _, _ = family
    turns = build_chat("scienceworld", INSTRUCTION, STEPS, loss_from_step=1)
    needed = len(encode_chat(tokenizer, turns[:2] + turns[2 + 2:]))  # all context dropped
    assert len(truncate_turns(tokenizer, turns, needed)) == len(turns) - 2
    with pytest.raises(ChatTooLong, match="supervised"):
        encode_chat(tokenizer, turns, max_length=needed - 1)
    with pytest.raises(ChatTooLong):
        encode_chat(tokenizer, build_chat("scienceworld", INSTRUCTION, STEPS, 0), max_length=20)


def test_chat_layout_is_checked(family):
    tokenizer, _, _ = family
    turns = build_chat("scienceworld", INSTRUCTION, STEPS, 0)
    with pytest.raises(ValueError):
        encode_chat(tokenizer, turns[1:])


@pytest.mark.parametrize("tag", ["positive", "negative"])
def test_nat_marker_is_context_in_the_instruction_turn(family, tag):
    from eef_tasks.chat import PROMPT_TAGS

    tokenizer, end, _ = family
    tagged = encode_chat(tokenizer, build_chat("scienceworld", INSTRUCTION, STEPS, 0, prompt_tag=tag))
    plain = encode_chat(tokenizer, build_chat("scienceworld", INSTRUCTION, STEPS, 0))
    text = tokenizer.decode(tagged.input_ids, skip_special_tokens=False)
    assert f"{INSTRUCTION}\n\n{PROMPT_TAGS[tag]}" in text
    # the marker is never learned: the supervised spans are the same actions as without it
    assert supervised_text(tokenizer, tagged) == supervised_text(tokenizer, plain)
    assert tagged.n_supervised_tokens == plain.n_supervised_tokens
    labelled = tokenizer.decode([t for t in tagged.labels if t != IGNORE_INDEX], skip_special_tokens=False)
    assert PROMPT_TAGS[tag] not in labelled

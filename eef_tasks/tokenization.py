"""Token ids and loss labels of a training chat, through the model's own chat template.

`encode_chat(tokenizer, turns)` renders the turns of `eef_tasks.chat.build_chat` with
`tokenizer.apply_chat_template` (so training sees exactly what the policy is later prompted
with) and labels every token -100 (no loss) except the tokens of the **supervised assistant
turns**: their content *and* their end-of-turn token(s) (`<|im_end|>` for ChatML/SmolLM2,
`<|eot_id|>` for Llama 3), so that the model learns to stop. The assistant header (role tokens such
as `<|im_start|>assistant\\n`) is context, and so is whitespace the template writes after the
end-of-turn token (ChatML's newline), which the model never generates.

How the spans are found (no `{% generation %}` support needed): for the assistant message at
index i, the conversation is rendered up to i with the generation prompt (`messages[:i]`,
add_generation_prompt=True) and up to and including it (`messages[:i+1]`); both renderings must be
prefixes of the full rendering. The characters between their ends, trailing whitespace removed, are
the supervised span. The full text is tokenized once with offsets, and a token is supervised when
it starts inside a span. A template whose renderings are not prefixes of each other (e.g. one that
rewrites earlier turns) is refused with `ChatTemplateError` rather than mislabelled.

Truncation policy (`max_length` in tokens):
1. The system prompt and the user instruction (the first two turns) are always kept.
2. While the chat is too long, the oldest *context* (assistant, observation) pair after the
   instruction is dropped whole, so roles still alternate and the chat stays a valid conversation.
3. A supervised assistant turn is never dropped, nor the observations between supervised turns
   (they are the context those turns answer).
4. If the chat is still too long when no context pair is left to drop, `ChatTooLong` is raised:
   a supervised turn is never silently lost. Raise `max_length` or drop the example.
`truncate_turns` applies the same policy to a turn list, so prompts at rollout time can be cut the
same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eef_tasks.chat import Turn
from eef_tasks.errors import UserError

IGNORE_INDEX = -100


class ChatTemplateError(UserError):
    """The tokenizer's chat template cannot be used to find the supervised tokens."""


class ChatTooLong(UserError):
    """The system prompt, instruction and supervised turns alone exceed max_length."""


@dataclass(frozen=True)
class EncodedChat:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on supervised tokens
    supervised_spans: list[tuple[int, int]]  # token [start, end) of each supervised assistant turn
    n_supervised_tokens: int
    truncated: bool = False
    n_dropped_turns: int = 0  # turns removed by truncation (always an even number)
    kept_turns: list[Turn] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: Any, messages: list[dict], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _check_turns(turns: Sequence[Turn]) -> None:
    if len(turns) < 2 or turns[0].role != "system" or turns[1].role != "user":
        raise ValueError("a training chat starts with the system prompt and the user instruction")
    for turn in turns[2:]:
        if turn.role == "system":
            raise ValueError("only the first turn may be a system turn")
        if turn.supervised and turn.role != "assistant":
            raise ValueError(f"only assistant turns can be supervised, not a {turn.role} turn")


def _char_spans(tokenizer: Any, turns: Sequence[Turn]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character span of each supervised assistant turn."""
    messages = [t.message() for t in turns]
    full = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, turn in enumerate(turns):
        if not turn.supervised:
            continue
        head = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if head == _render(tokenizer, messages[:i]):
            raise ChatTemplateError(
                "the tokenizer's chat template adds no assistant header for add_generation_prompt=True,"
                " so the supervised tokens cannot be separated from the header"
            )
        if not (full.startswith(head) and full.startswith(upto) and len(upto) > len(head)):
            raise ChatTemplateError(
                "the tokenizer's chat template does not render a conversation as the extension of "
                f"its prefixes (at message {i}); the supervised tokens cannot be located safely"
            )
        end = len(upto.rstrip())
        if end <= len(head):
            continue  # an empty assistant turn: nothing to learn
        spans.append((len(head), end))
    return full, spans


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", True):
        raise ChatTemplateError("encode_chat needs a fast tokenizer (character offsets)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _encode(tokenizer: Any, turns: Sequence[Turn]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    text, char_spans = _char_spans(tokenizer, turns)
    input_ids, offsets = _tokenize(tokenizer, text)
    labels = [IGNORE_INDEX] * len(input_ids)
    token_spans: list[tuple[int, int]] = []
    for c_start, c_end in char_spans:
        inside = [j for j, (s, e) in enumerate(offsets) if c_start <= s < c_end and e > s]
        if not inside:
            continue
        t_start, t_end = inside[0], inside[-1] + 1
        for j in range(t_start, t_end):
            labels[j] = input_ids[j]
        token_spans.append((t_start, t_end))
    return input_ids, labels, token_spans


def _droppable_pairs(turns: Sequence[Turn]) -> int:
    """How many leading (assistant, observation) context pairs after the instruction can go."""
    n, i = 0, 2
    while i + 1 < len(turns) and turns[i].role == "assistant" and not turns[i].supervised \
            and turns[i + 1].role == "user":
        n += 1
        i += 2
    return n


def _n_tokens(tokenizer: Any, turns: Sequence[Turn]) -> int:
    text = _render(tokenizer, [t.message() for t in turns])
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate_turns(tokenizer: Any, turns: Sequence[Turn], max_length: int | None) -> list[Turn]:
    """The turns that fit in `max_length` tokens under the module's truncation policy."""
    turns = list(turns)
    _check_turns(turns)
    if max_length is None or _n_tokens(tokenizer, turns) <= max_length:
        return turns
    n_pairs = _droppable_pairs(turns)

    def cut(k: int) -> list[Turn]:
        return turns[:2] + turns[2 + 2 * k :]

    if n_pairs == 0 or _n_tokens(tokenizer, cut(n_pairs)) > max_length:
        shortest = _n_tokens(tokenizer, cut(n_pairs))
        n_sup = sum(t.supervised for t in turns)
        raise ChatTooLong(
            f"the chat needs {shortest} tokens even with all {n_pairs} context (action, observation) "
            f"pair(s) dropped, more than max_length={max_length}: the system prompt, instruction and "
            f"{n_sup} supervised turn(s) must all be kept; raise max_length or leave this example out"
        )
    lo, hi = 1, n_pairs  # the fewest pairs to drop: length is non-increasing in k
    while lo < hi:
        mid = (lo + hi) // 2
        if _n_tokens(tokenizer, cut(mid)) <= max_length:
            hi = mid
        else:
            lo = mid + 1
    return cut(lo)


def encode_chat(tokenizer: Any, turns: Sequence[Turn], max_length: int | None = None) -> EncodedChat:
    """Input ids and labels of a training chat (see the module docstring for spans and truncation)."""
    kept = truncate_turns(tokenizer, turns, max_length)
    input_ids, labels, spans = _encode(tokenizer, kept)
    n_sup = sum(1 for label in labels if label != IGNORE_INDEX)
    n_dropped = len(turns) - len(kept)
    return EncodedChat(
        input_ids=input_ids,
        labels=labels,
        supervised_spans=spans,
        n_supervised_tokens=n_sup,
        truncated=n_dropped > 0,
        n_dropped_turns=n_dropped,
        kept_turns=kept,
    )


def supervised_text(tokenizer: Any, encoded: EncodedChat) -> list[str]:
    """The decoded text of each supervised span (special tokens kept): what the loss teaches."""
    return [
        tokenizer.decode(encoded.input_ids[s:e], skip_special_tokens=False)
        for s, e in encoded.supervised_spans
    ]


__all__ = [
    "IGNORE_INDEX", "ChatTemplateError", "ChatTooLong", "EncodedChat", "encode_chat",
    "supervised_text", "truncate_turns",
]

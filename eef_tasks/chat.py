"""The chat a trajectory becomes for training and for the policy's prompts.

`build_chat` is the one place that turns (instruction, steps, loss_from_step) into messages:
`eef example` renders it, the trainer tokenizes it, and rollouts extend it turn by turn, so what
the model is trained on is exactly what it is later prompted with.

Layout: system prompt; user turn with the instruction; then per action a_k an assistant turn
("Thought: …\\nAction: …") and a user turn with its observation ("Observation: …"). The
observation after the last action is left out: no action follows it, so it is never context for
anything supervised. Assistant turns with step >= loss_from_step are supervised; everything else
is context.

Negative-aware training (NAT, Wang et al. 2024: "Learning From Failure") tells the model in the
prompt whether the trajectory it is shown succeeded: a `prompt_tag` ('positive' | 'negative')
appends the matching sentence of `PROMPT_TAGS` to the instruction turn. A 'nat' training example
carries the tag of its trajectory's outcome (sql/select/expert_examples.sql); a nat run's policy is
always prompted with the positive tag, so at rollout and evaluation time it is asked for a success.

`parse_action` is its inverse on the model's side: it reads (thought, action) back out of a reply,
so the policy, the LLM expert and training agree on one format. A reply is parsed, never executed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

import duckdb

from eef_tasks.store import StoreError, first_row

SYSTEM_PROMPTS = {
    "scienceworld": (
        "You are a helpful assistant doing scientific experiments in a text environment.\n"
        "The environment has several rooms: kitchen, foundry, workshop, bathroom, outside, "
        "living room, bedroom, greenhouse, art studio, hallway. You can teleport to any room in "
        "one step. Explore to find what the experiment needs.\n"
        "Available actions: open OBJ, close OBJ, activate OBJ, deactivate OBJ, connect OBJ to OBJ, "
        "disconnect OBJ, use OBJ [on OBJ], look around, examine OBJ, look at OBJ, read OBJ, "
        "move OBJ to OBJ, pick up OBJ, pour OBJ into OBJ, mix OBJ, teleport to LOC, focus on OBJ, "
        "wait, wait1.\n"
        "Reply in this format:\nThought: <your reasoning>\nAction: <one action>"
    ),
    "webshop": (
        "You are web shopping. Every round you get an observation and respond with one action: "
        "search[keywords] when a search box is available, or click[value] with a value from the "
        "clickables.\nReply in this format:\nThought: <your reasoning>\nAction: <one action>"
    ),
}
DEFAULT_SYSTEM_PROMPT = (
    "You are an agent acting in a text environment to accomplish the user's task. After each of "
    "your actions you receive an observation.\n"
    "Reply in this format:\nThought: <your reasoning>\nAction: <one action>"
)
# NAT's markers (ours, in the paper's manner: one sentence after the task, telling the outcome)
PROMPT_TAGS = {
    "positive": "Please generate a trajectory that completes the task successfully.",
    "negative": "Please generate a trajectory that fails to complete the task.",
}
# the user turn after a reply that holds no action (the reply itself is shown before it)
INVALID_REPLY_MESSAGE = (
    "Observation: Invalid format. Reply with one line 'Thought: <your reasoning>' and one line "
    "'Action: <one action>'."
)


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    content: str
    step: int | None = None  # the action index a turn belongs to (assistant: a_k; user: its observation)
    supervised: bool = False  # loss on this turn's tokens

    def message(self) -> dict[str, str]:
        """The turn as a chat-template message."""
        return {"role": self.role, "content": self.content}


def system_prompt(env: str) -> str:
    return SYSTEM_PROMPTS.get(env, DEFAULT_SYSTEM_PROMPT)


def assistant_text(action: str, thought: str | None = None) -> str:
    return f"Thought: {thought}\nAction: {action}" if thought else f"Action: {action}"


def observation_text(observation: str) -> str:
    return f"Observation: {observation}"


def tagged_instruction(instruction: str, prompt_tag: str | None) -> str:
    """The instruction turn's text: the instruction, then the NAT marker of `prompt_tag` if any."""
    if prompt_tag is None:
        return instruction
    if prompt_tag not in PROMPT_TAGS:
        raise ValueError(f"unknown prompt tag {prompt_tag!r}: one of {', '.join(PROMPT_TAGS)}")
    return f"{instruction}\n\n{PROMPT_TAGS[prompt_tag]}"


def build_chat(
    env: str,
    instruction: str,
    steps: list[dict],
    loss_from_step: int = 0,
    *,
    include_last_observation: bool = False,
    prompt_tag: str | None = None,
) -> list[Turn]:
    """Messages of a trajectory; `steps` are dicts with thought, action and observation;
    `prompt_tag` adds NAT's marker to the instruction (module doc)."""
    if not 0 <= loss_from_step <= len(steps):
        raise ValueError(f"loss_from_step {loss_from_step} is outside 0..{len(steps)}")
    turns = [Turn("system", system_prompt(env)), Turn("user", tagged_instruction(instruction, prompt_tag))]
    for k, step in enumerate(steps):
        turns.append(
            Turn(
                "assistant",
                assistant_text(step["action"], step.get("thought")),
                step=k,
                supervised=k >= loss_from_step,
            )
        )
        if k < len(steps) - 1 or include_last_observation:
            turns.append(Turn("user", observation_text(step["observation"]), step=k))
    return turns


# --- parsing replies ------------------------------------------------------------------------------

_ACTION_LINE = re.compile(
    r"^[ \t>*_#-]*action(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*[:：][ \t]*[*_]*[ \t]*(?P<rest>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_THOUGHT_PREFIX = re.compile(r"^[ \t>*_#-]*thought(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*[:：][ \t]*[*_]*",
                             re.IGNORECASE | re.MULTILINE)
_OBSERVATION_LINE = re.compile(r"^[ \t>*_#-]*observation(?:[ \t]*\d+)?[ \t]*[*_]*[ \t]*[:：]",
                               re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"^```[\w-]*[ \t]*$", re.MULTILINE)
MAX_ACTION_CHARS = 200


def parse_action(text: str | None) -> tuple[str | None, str | None]:
    """(thought, action) from a model reply; action is None when the reply holds no usable one.

    Tolerant of the usual variations: any case, markdown emphasis or bullets around the labels
    ('**Action:** look around'), numbered labels ('Action 2:'), code fences and backticks, quotes,
    a full-width colon, the action on the line after its label, a trailing period, and a
    continuation the model invented ('Observation: …', a second Thought/Action): only the first
    action counts. A reply without an 'Action:' label is accepted only when it is one short line
    that looks like a command (e.g. 'look around'). The action is never evaluated, only returned.
    """
    if not text or not text.strip():
        return None, None
    body = _FENCE.sub("", text.replace("\r\n", "\n")).strip()
    match = _ACTION_LINE.search(body)
    if match is None:
        return _bare_action(body)
    before = body[: match.start()]
    thought = _clean_thought(before)
    rest = match["rest"]
    if not _strip_action(rest):  # the action on the next non-empty line
        following = body[match.end():].lstrip("\n").split("\n", 1)[0]
        if _OBSERVATION_LINE.match(following) or _THOUGHT_PREFIX.match(following):
            following = ""
        rest = following
    action = _strip_action(rest)
    return thought, action or None


def _clean_thought(text: str) -> str | None:
    obs = _OBSERVATION_LINE.search(text)
    if obs is not None:
        text = text[: obs.start()]
    text = _THOUGHT_PREFIX.sub("", text, count=1).strip().strip("*_").strip()
    return text or None


def _strip_action(text: str) -> str:
    action = text.strip().split("\n", 1)[0].strip()
    for _ in range(4):  # peel markdown, quotes and a closing period, in whatever order they come
        stripped = action.strip().strip("*_`").strip()
        if stripped.endswith(".") and not stripped.endswith(".."):
            stripped = stripped[:-1].rstrip()
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
            stripped = stripped[1:-1].strip()
        if stripped == action:
            break
        action = stripped
    if len(action) > MAX_ACTION_CHARS:
        return ""
    return action


_BARE_ACTION = re.compile(r"^[a-z][a-z0-9 '\-]*(\[[^\]\n]*\])?$", re.IGNORECASE)


def _bare_action(body: str) -> tuple[None, str | None]:
    """A reply that is nothing but a short command, e.g. 'look around' or 'click[Buy Now]': one
    line of at most 6 words, letters/digits/hyphens/apostrophes only (no sentence punctuation)."""
    candidate = body.strip().strip("*_`").strip()
    if "\n" in candidate or _THOUGHT_PREFIX.match(candidate):
        return None, None
    if len(candidate) <= 60 and len(candidate.split()) <= 6 and _BARE_ACTION.match(candidate):
        return None, candidate
    return None, None



def load_chat(con: duckdb.DuckDBPyConnection, traj_id: str, loss_from_step: int,
              prompt_tag: str | None = None) -> list[Turn]:
    """The training chat of a stored trajectory (with NAT's marker when `prompt_tag` is given)."""
    if prompt_tag is not None and prompt_tag not in PROMPT_TAGS:
        raise StoreError(f"unknown prompt tag {prompt_tag!r}: one of {', '.join(PROMPT_TAGS)}")
    row = first_row(
        con,
        """SELECT k.env, k.instruction, t.n_steps
           FROM trajectories AS t JOIN tasks AS k ON k.task_id = t.task_id
           WHERE t.traj_id = $traj_id""",
        {"traj_id": traj_id},
    )
    if row is None:
        raise StoreError(f"no trajectory {traj_id!r} in this store")
    env, instruction, n_steps = row
    if not 0 <= loss_from_step <= n_steps:
        raise StoreError(f"--from-step must be between 0 and {n_steps} for {traj_id!r}")
    steps = [
        {"thought": thought, "action": action, "observation": observation}
        for thought, action, observation in con.execute(
            "SELECT thought, action, observation FROM steps WHERE traj_id = $traj_id ORDER BY step",
            {"traj_id": traj_id},
        ).fetchall()
    ]
    return build_chat(env, instruction, steps, loss_from_step, prompt_tag=prompt_tag)


def chat_as_dicts(turns: list[Turn]) -> list[dict]:
    return [asdict(turn) for turn in turns]

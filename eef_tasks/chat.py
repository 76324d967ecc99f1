"""The chat a trajectory becomes for training and for the policy's prompts.

`build_chat` is the one place that turns (instruction, steps, loss_from_step) into messages:
`eef example` renders it, the trainer tokenizes it, and rollouts extend it turn by turn, so what
the model is trained on is exactly what it is later prompted with.

Layout: system prompt; user turn with the instruction; then per action a_k an assistant turn
("Thought: …\\nAction: …") and a user turn with its observation ("Observation: …"). The
observation after the last action is left out: no action follows it, so it is never context for
anything supervised. Assistant turns with step >= loss_from_step are supervised; everything else
is context.
"""

from __future__ import annotations

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


def build_chat(
    env: str,
    instruction: str,
    steps: list[dict],
    loss_from_step: int = 0,
    *,
    include_last_observation: bool = False,
) -> list[Turn]:
    """Messages of a trajectory; `steps` are dicts with thought, action and observation."""
    if not 0 <= loss_from_step <= len(steps):
        raise ValueError(f"loss_from_step {loss_from_step} is outside 0..{len(steps)}")
    turns = [Turn("system", system_prompt(env)), Turn("user", instruction)]
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


def load_chat(con: duckdb.DuckDBPyConnection, traj_id: str, loss_from_step: int) -> list[Turn]:
    """The training chat of a stored trajectory."""
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
    return build_chat(env, instruction, steps, loss_from_step)


def chat_as_dicts(turns: list[Turn]) -> list[dict]:
    return [asdict(turn) for turn in turns]

"""The one ReAct agent loop: one episode's state and one turn of it.

Used by policy rollouts (any engine, `rollout.run_rollouts`) and by the LLM expert
(`experts.llm.LLMExpert`); they differ only in how a model call is made (`ask`) and in what they
record about it.

A turn (`AgentEpisode.turn`, called by an `EnvPool` worker's policy with the episode so far):

1. the episode so far is rendered with `chat.build_chat` — the replayed expert prefix keeps its
   stored thoughts — plus, after a bad reply, that reply and the format reminder
   (`chat.INVALID_REPLY_MESSAGE`);
2. the step limit: every model call counts against `max_steps`, invalid ones included, and so do
   the replayed prefix's actions; reaching it ends the episode (`stop_reason = 'max_steps'`);
3. `ask(messages)` returns the model's reply; `chat.parse_action` reads (thought, action) from it:
   an action goes to the environment, a reply without one never does — it is counted
   (`invalid_replies`) and the model asked again, until `max_invalid_in_a_row` bad replies in a
   row end the episode (`stop_reason = 'invalid_replies'`).

An `EnvPool` may rerun an episode from scratch (its worker died): `restarted(view)` tells, and
`reset()` forgets the lost attempt. `stop_reason(result, episode)` is the stored reason an episode
ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eef_tasks.chat import INVALID_REPLY_MESSAGE, build_chat, parse_action
from eef_tasks.envs.pool import EpisodeResult, EpisodeView

Messages = list[dict[str, str]]


@dataclass
class AgentEpisode:
    """What the agent keeps about one episode (the environment keeps the actions and observations)."""

    env: str
    max_steps: int | None
    max_invalid_in_a_row: int = 3
    prefix_thoughts: list[str | None] = field(default_factory=list)  # of the replayed expert prefix
    thoughts: list[str | None] = field(default_factory=list)  # one per action the agent chose
    pending: Messages = field(default_factory=list)  # the last bad reply and the format reminder
    invalid_replies: list[dict[str, Any]] = field(default_factory=list)
    invalid_in_a_row: int = 0
    calls: int = 0  # model calls in this attempt
    stop_reason: str | None = None  # why the agent ended the episode, if it did
    restarts: int = 0
    prompt_tag: str | None = None  # NAT's marker in the instruction turn (chat.PROMPT_TAGS); nat runs: 'positive'

    def restarted(self, view: EpisodeView) -> bool:
        """Whether the pool reran the episode from scratch since the last turn."""
        n_prefix = view.n_prefix
        return len(view.actions) < n_prefix + len(self.thoughts) or (
            len(view.actions) == n_prefix and bool(self.thoughts or self.calls)
        )

    def reset(self) -> None:
        """Forget the lost attempt (the caller resets what it keeps, e.g. a KV cache)."""
        self.restarts += 1
        self.thoughts, self.pending, self.invalid_replies = [], [], []
        self.invalid_in_a_row, self.calls, self.stop_reason = 0, 0, None

    def all_thoughts(self, n_prefix: int) -> list[str | None]:
        """One thought per action of the episode: the replayed prefix's, then the agent's."""
        return self.prefix_thoughts[:n_prefix] + self.thoughts

    def messages(self, view: EpisodeView) -> Messages:
        """The prompt of the next model call."""
        steps = [
            {"thought": t, "action": a, "observation": o}
            for t, a, o in zip(self.all_thoughts(view.n_prefix), view.actions, view.observations, strict=True)
        ]
        turns = build_chat(self.env, view.instruction, steps, include_last_observation=True,
                           prompt_tag=self.prompt_tag)
        return [t.message() for t in turns] + self.pending

    def turn(self, view: EpisodeView, ask: Callable[[Messages], str]) -> str | None:
        """The next action, or None to end the episode (see module doc)."""
        while True:
            if self.max_steps is not None and view.n_prefix + self.calls >= self.max_steps:
                self.stop_reason = "max_steps"
                return None
            reply = ask(self.messages(view))
            self.calls += 1
            thought, action = parse_action(reply)
            if action is not None:
                self.thoughts.append(thought)
                self.pending, self.invalid_in_a_row = [], 0
                return action
            self.invalid_replies.append({"after_step": len(view.actions), "reply": reply[:300]})
            self.invalid_in_a_row += 1
            self.pending = [
                {"role": "assistant", "content": reply.strip() or "(empty reply)"},
                {"role": "user", "content": INVALID_REPLY_MESSAGE},
            ]
            if self.invalid_in_a_row >= self.max_invalid_in_a_row:
                self.stop_reason = "invalid_replies"
                return None


def stop_reason(result: EpisodeResult, episode: AgentEpisode) -> str:
    """Why a finished episode ended: 'done', 'max_steps', 'invalid_replies' or 'stopped'."""
    if result.done and not result.truncated:
        return "done"
    if result.truncated or (episode.max_steps is not None and len(result.actions) >= episode.max_steps):
        return "max_steps"
    return episode.stop_reason or "stopped"


def step_limit(*limits: int | None) -> int | None:
    """The tightest of the given step limits (None: no limit)."""
    values = [v for v in limits if v is not None]
    return min(values) if values else None


__all__ = ["AgentEpisode", "Messages", "step_limit", "stop_reason"]

"""The environment interface every text environment implements (ScienceWorld now, others later).

An environment runs one episode at a time:

    obs = env.reset("scienceworld/boil/12")       # initial observation
    result = env.step("open door to kitchen")     # StepResult(observation, reward, done, info)
    replay = env.replay(actions, recorded)        # reset + actions: ReplayResult with drift
    env.close()

`reward` is the episode's reward so far in [0, 1] (for ScienceWorld: score / 100, clipped), not a
per-step delta: the reward of a trajectory is the reward after its last step, and success is
`reward == 1`.

Replays are not byte-deterministic (ScienceWorld reorders object lists; some tasks are
stochastic), so observations are compared order-insensitively (`same_observation`) and a replay
reports the steps whose observation differs from the record (`ReplayResult.drift`) instead of
assuming it away.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from eef_tasks.errors import UserError

Split = Literal["train", "dev", "test"]


class EnvError(UserError):
    """A problem with an environment that the caller can act on; the message says what to do."""


class EnvCrashed(EnvError):
    """The environment's backend died or hung and the episode could not be recovered: rerun the
    whole episode (and store nothing of the failed attempt)."""


class EpisodeOver(EnvError):
    """`step` was called after the episode ended (done) or before any `reset`."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of an environment's catalog.

    `instruction` is the goal text the agent sees (for ScienceWorld the game's own task
    description); None when the catalog cannot know it without running the game.
    `max_steps` is the step limit for policy rollouts (None: no limit known).
    """

    task_id: str
    env: str
    split: Split
    instruction: str | None
    max_steps: int | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class StepResult:
    """What one action returned. `reward` is the episode's reward so far, in [0, 1].

    `info` always holds `invalid` (the game did not accept the action), `ambiguous` (the game
    answered with a numbered menu and the next action should be one of its numbers; `menu` lists
    the choices), `score` (the environment's raw score), `truncated` (done only because the step
    limit was reached) and `steps` (actions taken so far in this episode); environments may add
    more.
    """

    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def invalid(self) -> bool:
        return bool(self.info.get("invalid", False))

    @property
    def success(self) -> bool:
        return self.reward >= 1.0


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of resetting a task and replaying a list of actions.

    `observations[k]`, `rewards[k]` and `infos[k]` are what action k returned (the steps table's
    convention). Replay stops when the episode ends, so fewer than `n_requested` actions may have
    been applied. `drift` lists the step indices whose observation differs order-insensitively
    from the recorded one (only steps with a record are compared).
    """

    task_id: str
    instruction: str
    initial_observation: str
    observations: list[str]
    rewards: list[float]
    reward: float
    done: bool
    drift: list[int]
    n_requested: int
    infos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return len(self.observations)

    @property
    def success(self) -> bool:
        return self.reward >= 1.0

    @property
    def all_applied(self) -> bool:
        """Every requested action was applied (the episode did not end before the last one)."""
        return self.n_steps == self.n_requested

    @property
    def actions_left(self) -> int:
        """Requested actions not applied because the episode had ended."""
        return self.n_requested - self.n_steps


def replay_steps(
    env: Any,
    task_id: str,
    instruction: str,
    initial_observation: str,
    actions: Sequence[str],
    recorded_observations: Sequence[str] | None,
    start_reward: float,
) -> ReplayResult:
    """Apply `actions` to an environment just reset to `task_id`, until the episode ends.

    The shared body of every `Env.replay`: the environment is left in the state after the
    replay, so a policy can continue from it (a simulation from an expert state).
    """
    observations: list[str] = []
    rewards: list[float] = []
    infos: list[dict[str, Any]] = []
    reward, done = start_reward, False
    for action in actions:
        if done:
            break
        result = env.step(action)
        observations.append(result.observation)
        rewards.append(result.reward)
        infos.append(result.info)
        reward, done = result.reward, result.done
    return ReplayResult(
        task_id=task_id,
        instruction=instruction,
        initial_observation=initial_observation,
        observations=observations,
        rewards=rewards,
        reward=reward,
        done=done,
        drift=find_drift(observations, recorded_observations),
        n_requested=len(actions),
        infos=infos,
    )

@runtime_checkable
class Env(Protocol):
    """A text environment running one episode at a time."""

    name: str

    def reset(self, task_id: str) -> str: ...

    def step(self, action: str) -> StepResult: ...

    def replay(
        self, actions: Sequence[str], recorded_observations: Sequence[str] | None = None
    ) -> ReplayResult: ...

    def close(self) -> None: ...


# --- task ids --------------------------------------------------------------------------------

_TASK_ID_RE = re.compile(r"^(?P<env>[a-z0-9_-]+)/(?P<task>[A-Za-z0-9_.-]+)/(?P<variation>\d+)$")


def make_task_id(env: str, task: str, variation: int) -> str:
    """'scienceworld/boil/12' from ('scienceworld', 'boil', 12)."""
    return f"{env}/{task}/{int(variation)}"


def parse_task_id(task_id: str) -> tuple[str, str, int]:
    """('scienceworld', 'boil', 12) from 'scienceworld/boil/12'; a malformed id is an EnvError."""
    match = _TASK_ID_RE.match(task_id)
    if not match:
        raise EnvError(
            f"malformed task id {task_id!r}: expected '<env>/<task-name>/<variation>', "
            "e.g. 'scienceworld/boil/12'"
        )
    return match["env"], match["task"], int(match["variation"])


# --- order-insensitive observation comparison ---------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def observation_key(observation: str) -> Counter[str]:
    """The observation as a bag of tokens (words and punctuation marks): equal for observations
    that differ only in the order of their parts, e.g. the objects listed in a room."""
    return Counter(_TOKEN_RE.findall(observation))


def same_observation(a: str, b: str) -> bool:
    """True when two observations hold the same tokens, in whatever order."""
    return a == b or observation_key(a) == observation_key(b)


def find_drift(observations: Sequence[str], recorded: Sequence[str] | None) -> list[int]:
    """Indices k where observations[k] differs order-insensitively from recorded[k]; steps beyond
    either list are not compared."""
    if recorded is None:
        return []
    return [
        k for k, (seen, expected) in enumerate(zip(observations, recorded, strict=False))
        if not same_observation(seen, expected)
    ]

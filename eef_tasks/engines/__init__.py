"""What a rollout engine is: the small interface `run_rollouts` drives, whatever runs the model.

- `SamplingConfig`: how replies are sampled (stored in every trajectory's `meta.sampling`).
- `Session`: one conversation (one episode) on an engine, with its seed and token counts; an
  engine may keep more in it (the hf engine its KV cache, the vllm engine its turn count).
- `Generation`: one reply and what it cost.
- `Engine`: `session(key, seed)`, `generate([(session, messages), …], sampling)` (one reply per
  request, in order, batched as the engine likes), `name`, `model_path`, `adapter_dir`.

One file per engine: `engines.hf` (transformers in this process, per-conversation KV reuse) and
`engines.vllm` (a vLLM server over its OpenAI-compatible API).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingConfig:
    """How replies are sampled; stored in every trajectory's `meta.sampling`.

    `temperature == 0` is greedy decoding. `seed` is the run's base seed: each episode's generator
    is seeded with `seed` and a hash of its traj_id, so reruns of an episode give the same sample.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")


def episode_seed(seed: int, key: str) -> int:
    """A per-episode seed, stable across processes (no Python hash randomisation)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1)


@dataclass
class Session:
    """One conversation: its seed, its token counts and (hf engine) the ids whose KV is in `cache`."""

    key: str
    seed: int = 0
    cache_ids: list[int] = field(default_factory=list)
    cache: list[tuple[Any, Any]] | None = None  # per layer (key, value), [1, H, len, D]
    generator: Any = None
    prompt_tokens: int = 0  # prompt tokens over all calls (what a stateless server would read)
    prefill_tokens: int = 0  # prompt tokens actually computed (the rest came from the cache)
    completion_tokens: int = 0

    def reset(self) -> None:
        """The episode restarts from scratch: nothing of the conversation is reused."""
        self.cache_ids, self.cache = [], None


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]  # empty when the engine does not see tokens (vllm)
    finish_reason: str  # 'stop' (end-of-turn token), 'length', or what the server said
    prompt_tokens: int
    prefill_tokens: int


class Engine(Protocol):
    """The interface `run_rollouts` uses (see module doc)."""

    name: str
    model_path: str
    adapter_dir: str | None

    def session(self, key: str, seed: int = 0) -> Session: ...

    def generate(
        self, requests: Sequence[tuple[Session, Sequence[dict[str, str]]]], sampling: SamplingConfig
    ) -> list[Generation]: ...


__all__ = ["Engine", "Generation", "SamplingConfig", "Session", "episode_seed"]

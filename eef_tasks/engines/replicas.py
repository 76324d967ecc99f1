"""Which vLLM replica gets the next request: the dispatch policy of `engines.vllm`, without HTTP.

`ReplicaSet` keeps, per replica (one base URL), its requests in flight and whether it is live:

- `acquire()` gives the live replica with the fewest requests in flight; ties go round robin
  (the first tied replica after the last one picked), so sequential requests alternate and a slow
  replica, whose requests pile up, gets fewer new ones. `release(i, served)` ends a request.
- `mark_dead(i, why)`: the replica failed (its retries spent); it gets no requests until a probe
  finds it answering. Its first probe is due `probe_s` after it died; each failed probe doubles the
  wait, up to `max_probe_s`.
- `claim_probes()` hands out the dead replicas whose probe is due (each to one caller, so one
  thread probes a replica at a time); `probe_done(i, ok)` revives it or schedules the next probe.

Thread-safe (one lock); `clock` is injectable so that the back-off is testable without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace


@dataclass
class ReplicaState:
    url: str  # for messages: redacted, never credentials
    in_flight: int = 0
    served: int = 0  # requests answered
    deaths: int = 0  # times it was marked dead
    dead: bool = False
    why: str = ""  # the last failure, while dead
    probe_at: float = 0.0  # when a dead replica may be probed
    backoff_s: float = 0.0  # the wait before the next probe after a failed one
    probing: bool = False


class ReplicaSet:
    """Least-outstanding dispatch over replicas, dead ones skipped and probed back (module doc)."""

    def __init__(
        self, urls: Sequence[str], *, probe_s: float = 5.0, max_probe_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a replica set needs at least one URL")
        if probe_s <= 0 or max_probe_s < probe_s:
            raise ValueError("probe_s must be > 0 and max_probe_s >= probe_s")
        self._states = [ReplicaState(url) for url in urls]
        self.probe_s, self.max_probe_s = probe_s, max_probe_s
        self._clock = clock
        self._next = 0  # where the round robin among ties starts
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._states)

    def acquire(self) -> int | None:
        """The live replica with the fewest requests in flight (counted as one more), or None."""
        n = len(self._states)
        with self._cond:
            live = [i for i, s in enumerate(self._states) if not s.dead]
            if not live:
                return None
            least = min(self._states[i].in_flight for i in live)
            pick = min((i for i in live if self._states[i].in_flight == least),
                       key=lambda i: (i - self._next) % n)
            self._next = (pick + 1) % n
            self._states[pick].in_flight += 1
            return pick

    def release(self, index: int, served: bool) -> None:
        with self._cond:
            state = self._states[index]
            state.in_flight -= 1
            state.served += int(served)

    def mark_dead(self, index: int, why: str) -> bool:
        """Take the replica out of dispatch; False if it was dead already (the why is updated)."""
        with self._cond:
            state = self._states[index]
            state.why = why
            if state.dead:
                return False
            state.dead, state.deaths = True, state.deaths + 1
            state.backoff_s = self.probe_s
            state.probe_at = self._clock() + self.probe_s
            return True

    def claim_probes(self, *, due_only: bool = True) -> list[int]:
        """Dead replicas that nobody is probing (and, with `due_only`, whose wait is over); the
        caller probes each and reports with `probe_done`."""
        now = self._clock()
        with self._cond:
            claimed = [i for i, s in enumerate(self._states)
                       if s.dead and not s.probing and (not due_only or s.probe_at <= now)]
            for i in claimed:
                self._states[i].probing = True
            return claimed

    def probe_done(self, index: int, ok: bool, why: str = "") -> None:
        """A probe's outcome: the replica is live again, or its next probe waits twice as long."""
        with self._cond:
            state = self._states[index]
            state.probing = False
            if ok:
                state.dead, state.why, state.backoff_s = False, "", 0.0
            else:
                state.why = why or state.why
                state.backoff_s = min(self.max_probe_s, state.backoff_s * 2)
                state.probe_at = self._clock() + state.backoff_s
            self._cond.notify_all()

    def wait_for_probes(self, timeout_s: float) -> None:
        """Until no probe is under way (or `timeout_s` passed)."""
        with self._cond:
            self._cond.wait_for(lambda: not any(s.probing for s in self._states), timeout=timeout_s)

    def live(self) -> list[int]:
        with self._cond:
            return [i for i, s in enumerate(self._states) if not s.dead]

    def states(self) -> list[ReplicaState]:
        """A copy of every replica's state, in URL order."""
        with self._cond:
            return [replace(s) for s in self._states]


__all__ = ["ReplicaSet", "ReplicaState"]

"""Stopping cleanly: what Ctrl-C and SIGTERM do to an eef command, and children that never outlive it.

This module owns
- signal → exception: inside `handlers()`, SIGINT (a terminal's Ctrl-C, sent to the whole
  foreground process group) and SIGTERM (`docker stop`, a scheduler, a supervisor: the main
  process only) raise `Interrupted` in the main thread, so `finally` blocks and context managers
  run; a second signal of the same kind while stopping exits at once (children killed first);
- what was interrupted: `doing("explore of run-1 iteration 2")` around a piece of work names it,
  and `message()` is the one line a command prints ("interrupted during explore of run-1
  iteration 2; rerun the same command to resume"), `exit_status()` its status (130 / 143);
- quiet stopping: once an interrupt is seen, console log handlers drop every record (Prefect logs
  each crashed flow and task, with tracebacks): the one line is all a user reads;
- child supervision: `die_with_parent()` (a child gets SIGKILL when its parent dies, even by
  SIGKILL: Linux's parent-death signal), `exit_with_parent()` (the same for workers that a
  short-lived thread starts, by polling), `supervise(proc)` (children killed by a forced exit) and
  `stop_process(proc)` (SIGTERM, a grace period, then SIGKILL).

Prefect's flow engine installs its own SIGTERM handler while a flow runs (it raises
`TerminationSignal`, marks the run crashed, then re-sends SIGTERM to the handler it replaced —
ours), so every interrupt exception is recognised here by `is_interrupt`, not by its class alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHILD_GRACE_S = 10.0  # a phase process gets this long to stop its workers before SIGKILL
PR_SET_PDEATHSIG = 1

try:  # loaded once here: a `preexec_fn` runs in a forked child, where loading libraries is unsafe
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - a Linux without glibc
    _LIBC = None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so libraries clean up as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _State:
    """Process-wide, as signals are: what this process was doing and which signal stopped it."""

    installed: bool = False
    command: str = "eef"             # what `message()` names when no `doing()` is known
    signum: int | None = None        # the first stop signal seen (handler or a library's exception)
    handled: set[int] = field(default_factory=set)  # kinds our handler has seen (a repeat forces exit)
    during: str | None = None        # the innermost `doing()` an interrupt passed through
    doing: list[str] = field(default_factory=list)
    children: list[subprocess.Popen] = field(default_factory=list)


_state = _State()


def is_interrupt(exc: BaseException | None) -> bool:
    """Ctrl-C, our `Interrupted`, or Prefect's `TerminationSignal` (a BaseException with `.signal`)."""
    if exc is None or isinstance(exc, Exception):
        return False
    return isinstance(exc, KeyboardInterrupt) or isinstance(getattr(exc, "signal", None), int)


def _signum_of(exc: BaseException) -> int:
    if isinstance(exc, Interrupted):
        return exc.signum
    return int(getattr(exc, "signal", signal.SIGINT))


def _observe(exc: BaseException) -> None:
    if _state.signum is None:
        _state.signum = _signum_of(exc)


def note_signal(signum: int) -> None:
    """Record a stop signal that a library's own handler received (it stops the work itself)."""
    if _state.signum is None:
        _state.signum = signum


def stopping() -> bool:
    """True once this process has seen SIGINT or SIGTERM (or an interrupt exception)."""
    return _state.signum is not None


def _handler(signum: int, frame: object) -> None:
    if signum in _state.handled:  # asked twice: stop now, children first
        for proc in list(_state.children):
            with contextlib.suppress(OSError):
                proc.kill()
        print(message(), file=sys.stderr, flush=True)
        os._exit(128 + signum)
    _state.handled.add(signum)
    if _state.signum is not None and _state.signum != signum:
        # already stopping for another reason (Ctrl-C reached this child, then its parent's
        # SIGTERM): raising again would cut the clean-up short
        return
    _state.signum = signum
    # the first signal; or Prefect's re-sent SIGTERM after its TerminationSignal: raising
    # replaces that exception by ours on the way out, which changes nothing for the caller
    raise Interrupted(signum)


@contextlib.contextmanager
def handlers(command: str = "eef") -> Iterator[None]:
    """Inside: SIGINT and SIGTERM raise `Interrupted` in the main thread (elsewhere, or nested:
    no-op). `command` names the work in `message()` when no `doing()` is more precise."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.installed, _state.command = True, command
    _state.signum, _state.during, _state.handled = None, None, set()  # a new command (tests run several)
    try:
        for s in SIGNALS:
            signal.signal(s, _handler)
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _state.installed = False


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name a piece of work for `message()`: the innermost one an interrupt passes through."""
    _state.doing.append(what)
    try:
        yield
    except BaseException as exc:
        if is_interrupt(exc):
            _observe(exc)
            if _state.during is None:
                _state.during = what
        raise
    finally:
        _state.doing.pop()


def message() -> str:
    what = _state.during or (_state.doing[-1] if _state.doing else None) or _state.command
    return f"interrupted during {what}; rerun the same command to resume"


def exit_status(exc: BaseException | None = None) -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
    if exc is not None and is_interrupt(exc):
        _observe(exc)
    return 128 + (_state.signum or signal.SIGINT)


# --- quiet stopping -------------------------------------------------------------------------------


class _QuietWhenStopping(logging.Filter):
    """Drops a console record once this process is stopping, or while it handles an interrupt
    (a library logging its crash from inside `except`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for exc in (record.exc_info[1] if record.exc_info else None, sys.exc_info()[1]):
            if is_interrupt(exc):
                _observe(exc)
        return not stopping()


_QUIET = _QuietWhenStopping()


def quiet_console_logs() -> None:
    """Attach the filter to every console handler configured now (call it after the logging
    set-up of the libraries in use, e.g. after importing prefect). Safe to call again."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and _QUIET not in handler.filters:
                handler.addFilter(_QUIET)


# --- child processes ------------------------------------------------------------------------------


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: this process gets `sig` when the thread that started it dies, even by SIGKILL
    (PR_SET_PDEATHSIG). Call it in a child: as `preexec_fn` of Popen (the forking thread waits
    for the exec, so the parent cannot have gone before the call). Nothing checks `getppid()`
    against 1: in a container eef itself may be process 1."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, sig)


def exit_with_parent(poll_s: float = 0.5, parent: int | None = None) -> None:
    """Exit this process (status 1) soon after its parent process is gone, whichever thread of the
    parent started it: for workers started from short-lived threads, where `die_with_parent`
    would fire when that thread ends. A daemon thread polls the parent's pid; `parent`, when the
    caller knows it (multiprocessing does), also catches a parent that died before this call."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="eef-exit-with-parent").start()


def supervise(proc: subprocess.Popen) -> subprocess.Popen:
    """Register a child that a forced exit (a second Ctrl-C) kills before this process goes."""
    _state.children.append(proc)
    return proc


def release(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ValueError):
        _state.children.remove(proc)


def stop_process(proc: subprocess.Popen, grace_s: float = CHILD_GRACE_S) -> int | None:
    """Stop a child: SIGTERM, up to `grace_s` seconds to finish, then SIGKILL; returns its exit
    status. Its piped output is drained meanwhile, so a child logging on its way out never
    blocks on a full pipe."""
    if proc.poll() is None:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                threading.Thread(target=_drain, args=(stream,), daemon=True, name=f"drain-{proc.pid}").start()
        if grace_s > 0:
            with contextlib.suppress(OSError):
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
    try:
        return proc.wait(timeout=30)
    finally:
        release(proc)


def _drain(stream) -> None:
    with contextlib.suppress(OSError, ValueError):
        for _ in stream:
            pass

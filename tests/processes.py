"""Process trees for the stopping tests: start a command the way a terminal does (its own session
and process group), signal it the way a terminal (Ctrl-C: SIGINT to the group) or `docker stop`
(SIGTERM to the main process) does, and check that no process of it survives; and wait for a server
process the tests started to answer over HTTP (`wait_http`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

LINE = "interrupted during {}; rerun the same command to resume"


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie
        return ""


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def survivors(procs: list[psutil.Process]) -> list[str]:
    """The processes of `procs` still running (zombies waiting for a reaper count as gone)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {cmdline(proc)[:120]}")
        except psutil.Error:
            pass
    return alive


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the command ended (status {proc.returncode}) before {what}"
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def has_descendant(proc: subprocess.Popen, needle: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(needle in cmdline(p) for p in tree(proc.pid)[1:])
        except psutil.Error:
            return False
    return check


def send(proc: subprocess.Popen, sig: int) -> None:
    """SIGINT as a terminal's Ctrl-C (the whole process group), SIGTERM as `docker stop` (the
    main process only)."""
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)


def start(args: list[str], env: dict[str, str], stdout: Path, stderr: Path, cwd: Path | None = None) -> subprocess.Popen:
    with stdout.open("w") as out, stderr.open("w") as err:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_and_check(proc: subprocess.Popen, sig: int, stderr: Path, exit_within_s: float = 60.0):
    """Signal a running command; returns (exit status, seconds to exit, stderr written after the
    signal, processes of its tree still alive 3 s after it exited). Kills the survivors."""
    procs = tree(proc.pid)
    offset = stderr.stat().st_size
    started = time.monotonic()
    send(proc, sig)
    try:
        status = proc.wait(timeout=exit_within_s)
    except subprocess.TimeoutExpired:
        status = None
    took = time.monotonic() - started
    deadline = time.monotonic() + 3
    while survivors(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = survivors(procs)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait(timeout=30)
    with stderr.open("rb") as handle:
        handle.seek(offset)
        after = handle.read().decode(errors="replace")
    return status, took, after, alive


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float, what: str, *,
              on_failure: Callable[[str], object], interval_s: float = 0.3) -> None:
    """Until GET `url` answers 200: `on_failure(message)` (pytest.fail or pytest.skip) with the tail of
    `log` when `proc` exits first or `timeout_s` passes. `what` names the server in the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            on_failure(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
            return
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            on_failure(f"{what} did not answer within {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
            return
        time.sleep(interval_s)

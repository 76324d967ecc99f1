"""The temporary Prefect server of a flow run from a shell when no server is configured.

Without PREFECT_API_URL, Prefect itself would start one (`SubprocessASGIServer`) in the caller's
process group and stop it at interpreter exit: a terminal's Ctrl-C then kills it before the flow
could report its state (the client retries a gone server for minutes), SIGTERM skips the `atexit`
stop, and SIGKILL of the caller leaves it running. `temporary_server()` runs the same application
(`prefect.server.api.server:create_app` under uvicorn, without UI) instead, but

- in a session of its own, so Ctrl-C reaches only eef, which stops the server *last*: after the
  phase process, and after the flow has told the server it crashed;
- with a parent-death signal, so it dies with the process that started it, even by SIGKILL;
- with its output in a log file, not on the terminal.

`main(flow)` is the entry point of `python -m flows.<module>`: the same, plus the one-line
interrupt message and exit status of `eef_tasks.interrupt`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from eef_tasks import interrupt
from eef_tasks.errors import UserError

STARTUP_TIMEOUT_S = 120.0  # a loaded 2-core machine needs ~10 s; never wait forever
STOP_GRACE_S = 5.0


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(port: int, log: Path) -> subprocess.Popen:
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",          # an API for this command's flows, nothing to browse
        "PREFECT__SERVER_EPHEMERAL": "1",   # the app's settings for a short-lived server
        "PREFECT__SERVER_FINAL": "1",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=interrupt.die_with_parent,
        )
    return interrupt.supervise(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-800:]
                raise UserError(f"the temporary Prefect server exited with status {proc.returncode}: {tail}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise UserError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s (log: {log})")


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.instance().drain()
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=5)


@contextlib.contextmanager
def temporary_server(timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str | None]:
    """Point Prefect at a temporary local server for the duration (see the module docstring);
    yields its API URL, or None when PREFECT_API_URL already names a server (used as it is)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    interrupt.quiet_console_logs()  # prefect's console handlers exist once prefect is imported
    if PREFECT_API_URL.value():
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="eef-prefect-") as tmp:
        log = Path(tmp) / "server.log"
        proc = None
        try:
            for _ in range(3):  # the free port may be taken between the probe and uvicorn's bind
                port = _free_port()
                proc = _start(port, log)
                url = f"http://127.0.0.1:{port}/api"
                try:
                    _wait_healthy(proc, url, log, timeout_s)
                    break
                except UserError:
                    interrupt.stop_process(proc, grace_s=0)
                    if "address already in use" not in log.read_text(errors="replace").lower():
                        raise
            else:
                raise UserError(f"the temporary Prefect server found no free port: {log.read_text()[-400:]}")
            # no UI is served: no "View at <url>" links to pages that do not exist
            with temporary_settings({PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
                try:
                    yield url
                finally:
                    _drain_prefect_workers()
        finally:
            if proc is not None:
                interrupt.stop_process(proc, grace_s=STOP_GRACE_S)


def main(flow: Callable[[], object], command: str | None = None) -> None:
    """Run a flow as a command: handlers, a temporary server when none is configured, and on
    Ctrl-C / SIGTERM the one-line message and exit status 130 / 143."""
    command = command or f"flow {getattr(flow, 'name', flow.__name__)}"
    with interrupt.handlers(command):
        try:
            with temporary_server():
                flow()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except BaseException as exc:
            if not interrupt.is_interrupt(exc):
                raise
            print(interrupt.message(), file=sys.stderr, flush=True)
            sys.exit(interrupt.exit_status(exc))

"""The real vLLM server's venv for tests: `real_vllm_venv()` returns it, waits for `make test`'s
background install, or skips with the reason.

`make test` starts `make vllm` (scripts/install-vllm.sh) in the background and sets
$EEF_VLLM_INSTALL_STATUS to the file where that install writes its exit status; tests marked
`real_vllm` run last (tests/conftest.py), so the install overlaps the CPU-bound tests. Without
`make test` (a plain `pytest`), the tests run when `.vllm-venv` is installed and skip otherwise."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from eef_tasks.engines.vllm_server import MARKER, installed, venv_path

INSTALL_STATUS_ENV = "EEF_VLLM_INSTALL_STATUS"
INSTALL_WAIT_S = 1500.0


def real_vllm_venv() -> Path:
    venv = venv_path()
    status_file = os.environ.get(INSTALL_STATUS_ENV)
    if status_file:
        status = Path(status_file)
        deadline = time.monotonic() + INSTALL_WAIT_S
        while not status.is_file():
            if time.monotonic() > deadline:
                pytest.fail(f"`make vllm` (started by `make test`) did not finish within {INSTALL_WAIT_S:.0f} s; "
                            f"see {status.with_suffix('.log')}")
            time.sleep(2.0)
        rc = status.read_text().strip()
        if rc != "0":
            log = status.with_suffix(".log")
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.is_file() else ""
            pytest.fail(f"`make vllm` failed (exit status {rc}); {log}:\n{tail}")
    if not installed(venv):
        pytest.skip(f"no real vLLM: {venv} has no {MARKER} (run `make vllm`, or `make test EEF_TEST_VLLM=1`, which installs it)")
    return venv


SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def processes() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgrp, state, cmdline) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0], cmdline)
    return out


def alive_in_group(pgrp: int) -> list[int]:
    return [pid for pid, (_, group, state, _) in processes().items() if group == pgrp and state != "Z"]


def server_children(parent: int) -> list[int]:
    """The vLLM servers (`python -m vllm.entrypoints.openai.api_server`) that `parent` started."""
    return [pid for pid, (ppid, _, _, cmdline) in processes().items() if ppid == parent and SERVER_MODULE in cmdline]


def wait_gone(pgrp: int, timeout_s: float = 30.0) -> None:
    """Until no live process is left in the server's process group (vLLM's engine-core and worker
    processes included); fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while alive_in_group(pgrp):
        if time.monotonic() > deadline:
            pytest.fail(f"vLLM processes outlived their parent: {alive_in_group(pgrp)}")
        time.sleep(0.2)

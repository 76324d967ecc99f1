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
        pytest.skip(f"no real vLLM: {venv} has no {MARKER} (run `make vllm`, or `make test`, which installs it)")
    return venv

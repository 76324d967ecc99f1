"""The machine's model slot: one model phase (explore, simulate, train, evaluate) at a time per
machine, from any flow or shell."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from pathlib import Path

from eef_tasks.models import cache_root

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def gpu_slot(path: str | Path | None = None, *, poll_s: float = 1.0):
    """Hold this machine's model slot: an exclusive lock on a file, so two model phases (from any
    flows or shells) never share a GPU — or, on CPU, the cores. The operating system releases the
    lock when the holder dies, even by SIGKILL, so a killed flow never leaves a stale slot behind.
    The file is $EEF_GPU_LOCK, else <cache>/locks/model-<CUDA_VISIBLE_DEVICES or 'all'>.lock."""
    if path is None:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_") or "none"
        path = os.environ.get("EEF_GPU_LOCK") or cache_root() / "locks" / f"model-{devices}.lock"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    logger.info("waiting for the model slot %s, held by %s", path, holder)
                    waited = True
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({' '.join(sys.argv[:6])})\n")
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)

"""The child-process protocol: one phase in its own Python process.

`python -m eef_tasks.pipeline PHASE --db DB --run RUN --iteration N` runs one phase (the Prefect
flows do this for model work): it logs to stderr and reports progress and its result as
`@@progress [done, total]` / `@@result {...}` lines on stdout. `run_phase_process` is the parent's
side: it starts the child, forwards its log lines and progress, and returns its result. The child
dies with its parent; on Ctrl-C or SIGTERM the parent stops it first (eef_tasks.interrupt), and a
stopped child exits quietly with 130 / 143.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from eef_tasks import interrupt
from eef_tasks.errors import UserError
from eef_tasks.pipeline.phases import run_phase
from eef_tasks.pipeline.runs import MODEL_PHASES, PHASES
from eef_tasks.pipeline.errors import PipelineError

PROGRESS_PREFIX = "@@progress "
RESULT_PREFIX = "@@result "
# the folder holding the parent's own eef_tasks: the child imports the same code, whatever its cwd
CODE_ROOT = str(Path(__file__).resolve().parents[2])


def run_phase_process(
    db: str | Path, run_id: str, iteration: int, phase: str, *,
    on_log: Callable[[str], None] | None = None, on_progress: Callable[[int, int], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run one phase in a fresh Python process (`python -m eef_tasks.pipeline`), forwarding its log
    lines to `on_log` and its progress to `on_progress`; returns the phase summary. The child dies
    with its parent (even by SIGKILL); on Ctrl-C or SIGTERM it is stopped first and given
    `interrupt.CHILD_GRACE_S` to stop its own workers. A failing child raises PipelineError saying why
    in one line (`failure_line`), its last log lines kept on the error as `log_tail`."""
    # -P: the cwd is not put first on the child's path, so an eef checkout in the directory eef runs
    # from (another version's eef_tasks) cannot shadow the parent's code; CODE_ROOT puts that first
    cmd = [sys.executable, "-P", "-m", "eef_tasks.pipeline", phase, "--db", str(db), "--run", run_id,
           "--iteration", str(iteration)]
    path = os.pathsep.join(p for p in (CODE_ROOT, (env or {}).get("PYTHONPATH", os.environ.get("PYTHONPATH"))) if p)
    with interrupt.doing(f"{phase} of {run_id} iteration {iteration}"):
        return _supervise_phase(cmd, phase, run_id, iteration, on_log, on_progress, {**(env or {}), "PYTHONPATH": path})


def _supervise_phase(cmd, phase, run_id, iteration, on_log, on_progress, env) -> dict:
    proc = interrupt.supervise(subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        preexec_fn=interrupt.die_with_parent,
    ))
    result: dict | None = None
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                if on_progress is not None:
                    done, total = json.loads(line[len(PROGRESS_PREFIX):])
                    on_progress(done, total)
                continue
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
                continue
            tail = (tail + [line])[-20:]
            if on_log is not None and line.strip():
                on_log(line)
        rc = proc.wait()
    except BaseException as exc:
        interrupt.stop_process(proc, grace_s=interrupt.CHILD_GRACE_S if interrupt.is_interrupt(exc) else 0)
        raise
    interrupt.release(proc)
    if rc != 0 or result is None:
        error = PipelineError(f"{phase} of run {run_id!r} iteration {iteration} failed (exit status {rc}): "
                              f"{failure_line(tail)}")
        error.log_tail = tail  # the phase's last log lines (on_log saw them all)
        raise error
    return result


def failure_line(tail: list[str], limit: int = 400) -> str:
    """Why a phase process failed, in one line, from the last lines of its log: its own `error: ...`
    line (a UserError), else the last exception line of a traceback (`SomeError: ...`) with the
    lines after it joined on (a pydantic error's details), else the last line it wrote."""
    lines = [line.strip() for line in tail if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return _cut(line.removeprefix("error: "), limit)
    for i in range(len(lines) - 1, -1, -1):
        if _looks_like_exception(lines[i]):
            return _cut("; ".join(lines[i:i + 4]), limit)
    return _cut(lines[-1], limit) if lines else "it wrote nothing"


def _looks_like_exception(line: str) -> bool:
    """`ValueError: ...`, `pydantic_core._pydantic_core.ValidationError: 1 validation error ...`."""
    name, sep, _ = line.partition(":")
    last = name.rsplit(".", 1)[-1]
    return bool(sep) and " " not in name and last[:1].isupper() and last.endswith(("Error", "Exception"))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _busy_seconds(stat_line: str) -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores from /proc/stat's first line ("cpu  user nice system idle
    iowait irq softirq steal ..."), in clock ticks converted to seconds."""
    fields = [int(v) for v in stat_line.split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    busy = user + nice + system + irq + softirq + steal
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return busy / tick, (busy + idle + iowait) / tick


def _others_busy_cores(window_s: float) -> float | None:
    """Cores the rest of the machine kept busy over the last `window_s` seconds (this process's own
    CPU time left out: a phase process is busy importing torch when it asks); None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            before = _busy_seconds(f.readline())
        own_before, wall_before = sum(os.times()[:2]), time.monotonic()
        time.sleep(window_s)
        with open("/proc/stat") as f:
            after = _busy_seconds(f.readline())
        own_after, wall_after = sum(os.times()[:2]), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    wall = max(wall_after - wall_before, 1e-3)
    return max(0.0, (after[0] - before[0]) - (own_after - own_before)) / wall


def idle_cores(window_s: float = 0.5) -> int:
    """Cores not taken by other work, at least 1: the core count less the cores other processes kept
    busy over the last `window_s` seconds (/proc/stat), rounded to the nearest core. Where /proc/stat is
    missing, the last minute's load average stands in; it lags by a minute, so a phase that follows a
    rollout phase would see the rollout's game processes as still running (it did: training got one
    thread on an idle 2-core machine)."""
    n = os.cpu_count() or 1
    busy = _others_busy_cores(window_s)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            busy = 0.0
    return max(1, n - int(busy + 0.5))


def torch_threads(phase: str) -> int:
    """$EEF_TORCH_THREADS, else the idle cores for training and selection, and half the cores (at
    most the idle ones) for rollouts, whose game processes need the rest. More torch threads than
    free cores is far worse than too few: OpenMP's threads wait for each other whenever one is
    descheduled. Measured on the 2-core machine at load ~5: a LoRA step of 2 x ~520 tokens took
    ~40 s with two threads and ~4.4 s with one; two torch threads beside the JVMs made generation
    ~5x slower than one."""
    wanted = os.environ.get("EEF_TORCH_THREADS")
    if wanted:
        return max(1, int(wanted))
    if phase in ("train", "dpo", "select"):
        return idle_cores()
    return max(1, min((os.cpu_count() or 2) // 2, idle_cores()))


def set_torch_threads(phase: str) -> int:
    """Set torch's CPU threads for a phase process (`torch_threads`); returns the number."""
    n = torch_threads(phase)
    try:
        import torch  # heavy: only phase processes and model commands set its threads

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eef_tasks.pipeline", description="run one phase of a run")
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 1.0:
            last[0] = now
            print(PROGRESS_PREFIX + json.dumps([done, total]), flush=True)

    threads = set_torch_threads(args.phase)
    if args.phase in MODEL_PHASES:
        logging.getLogger("eef_tasks.pipeline").info("%s: %d torch thread(s) on %d cores", args.phase, threads,
                                                     os.cpu_count() or 1)
    with interrupt.handlers(f"{args.phase} of {args.run} iteration {args.iteration}"):
        try:
            summary = run_phase(args.db, args.run, args.iteration, args.phase, progress)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 1
        except interrupt.Interrupted as exc:  # stopped: its workers are gone, nothing half-written
            print(interrupt.message(), file=sys.stderr, flush=True)
            return interrupt.exit_status(exc)
    print(RESULT_PREFIX + json.dumps(summary, default=str), flush=True)
    return 0

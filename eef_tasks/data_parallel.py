"""The pipeline's train phase in several processes: data-parallel LoRA training (DDP-style, or
with each decoder layer sharded over the ranks when `train.sharding` is fsdp).

`train_in_processes` starts `processes` copies of this module under torchrun (torch's own
launcher, what `accelerate launch` runs for a multi-process config); each is one rank of
`training.train_adapter`, which joins them (`training.init_data_parallel`: gloo on CPU, NCCL on
CUDA with one GPU per rank), gives each rank its share of every step's micro-batches and sums
the LoRA gradients, so the adapter is the one a single process trains (to float rounding);
under FSDP the ranks also share the base weights (`training.shard_layers`).

Who does what:
- the ranks only *read* the store (read-only connections: DuckDB lets several processes read
  at once); rank 0 writes the adapter folder; nothing else is written by them;
- the phase process that starts them holds the machine's model slot, waits, reads the adapter's
  record, and is the one that marks the phase done in the store;
- a stopped phase (Ctrl-C, SIGTERM) stops torchrun, which stops its ranks; a phase process killed
  outright takes torchrun with it (PR_SET_PDEATHSIG), and each rank exits within a second of
  torchrun's going (`interrupt.exit_with_parent`). An adapter is written by renaming a finished
  folder into place, so a stopped training leaves none half-written.

CPU threads: the phase's torch threads are split evenly over the ranks (at least one each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from eef_tasks import interrupt
from eef_tasks.errors import UserError

logger = logging.getLogger(__name__)


class DataParallelError(UserError):
    pass


def launcher_command(processes: int) -> list[str]:
    """torchrun for `processes` ranks on this machine (`--standalone`: a free local port each time)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(processes)]


def rank_threads(total: int, processes: int) -> int:
    """Torch threads per rank when `total` are the phase's: an even share, at least one."""
    return max(1, total // processes)


def train_in_processes(db: str | Path, run_id: str, iteration: int, method: str, out_dir: str | Path, config,
                       base_model: str | Path | None = None, *, processes: int, threads: int | None = None):
    """`training.train_adapter` in `processes` data-parallel ranks; returns its AdapterInfo (read
    from the adapter that rank 0 wrote). Raises DataParallelError, one line, with the ranks' own errors
    when they fail (a rank's exception of any kind), else torchrun's cause (a rank killed by a signal)."""
    import torch

    from eef_tasks.training import AdapterInfo, read_train_record

    if processes < 2:
        raise DataParallelError(f"train_in_processes needs 2 or more processes, not {processes}")
    threads = threads or torch.get_num_threads()
    per_rank = rank_threads(threads, processes)
    job = {"db": str(db), "run": run_id, "iteration": iteration, "method": method, "out": str(out_dir),
           "config": config.model_dump(mode="json"), "base_model": None if base_model is None else str(base_model),
           "threads": per_rank}
    # one positional argument: torchrun would take options after the module name for its own
    job_dir = Path(tempfile.mkdtemp(prefix="eef-data-parallel-"))
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job))
    cmd = [*launcher_command(processes), "-m", "eef_tasks.data_parallel", str(job_file)]
    logger.info("%s %s it%d: training in %d data-parallel processes, %d torch thread(s) each",
                run_id, method, iteration, processes, per_rank)
    env = {**os.environ, "OMP_NUM_THREADS": str(per_rank), "PYTHONUNBUFFERED": "1"}
    proc = interrupt.supervise(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                bufsize=1, env=env, preexec_fn=interrupt.die_with_parent))
    tail: list[str] = []
    errors: list[str] = []  # the ranks' own one-line errors (main below), torchrun's report aside
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-60:]  # torchrun's failure report is ~15 lines per rank
            if line.startswith("error: rank "):
                errors.append(line.removeprefix("error: "))
            if line.strip():  # the ranks' log lines, as they wrote them (rank0 / rank1 ... prefixes)
                print(line, file=sys.stderr, flush=True)
        rc = proc.wait()
    except BaseException as exc:
        interrupt.stop_process(proc, grace_s=interrupt.CHILD_GRACE_S if interrupt.is_interrupt(exc) else 0)
        raise
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    interrupt.release(proc)
    record = read_train_record(out_dir)
    if rc != 0 or record is None:
        why = _rank_errors(errors) if errors else _torchrun_failures(tail)
        raise DataParallelError(f"data-parallel training of {run_id} {method} it{iteration} in {processes} "
                                f"processes failed (torchrun exit status {rc}): {why}")
    return AdapterInfo(**{f.name: record[f.name] for f in dataclasses.fields(AdapterInfo) if f.name in record})


def _rank_errors(lines: Sequence[str]) -> str:
    """'rank 1: X', 'rank 0: X', 'rank 0: Y' -> 'ranks 0, 1: X; rank 0: Y' (each error once)."""
    by_error: dict[str, list[str]] = {}
    for line in lines:
        rank, _, error = line.removeprefix("rank ").partition(": ")
        by_error.setdefault(error, []).append(rank)
    parts = []
    for error, ranks in by_error.items():
        ranks = sorted(set(ranks), key=lambda r: int(r) if r.isdigit() else -1)
        parts.append(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}: {error}")
    return "; ".join(parts)


def _torchrun_failures(lines: Sequence[str]) -> str:
    """One line from the end of torchrun's output when no rank wrote an `error:` line (a rank killed
    by a signal, or torchrun itself failing): each failed rank's exit code and torchrun's cause,
    the root cause first ('rank 1: exit code -9, Signal 9 (SIGKILL) received by PID 123'), else
    the last line."""
    failures: list[tuple[bool, str]] = []  # (not the root cause, entry): sorted root cause first
    rank = exitcode = None
    root = False
    for raw in lines:
        line = raw.strip()
        root = root or line.startswith("Root Cause")
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if key == "rank":
            rank, exitcode = value.split(" ")[0], None
        elif key == "exitcode" and rank is not None:
            exitcode = value.split(" ")[0]
        elif key == "traceback" and rank is not None:
            cause = "" if value.startswith("To enable traceback") else f", {value}"
            failures.append((not root, f"rank {rank}: exit code {exitcode}{cause}"))
            rank = None
    if failures:
        return "; ".join(dict.fromkeys(entry for _, entry in sorted(failures, key=lambda f: f[0])))
    last = [t.strip() for t in lines if t.strip()]
    return f"no rank reported an error; torchrun's last line: {last[-1]}" if last else "no output"


def main(argv: Sequence[str] | None = None) -> int:
    """One rank (run by torchrun; not a user command)."""
    parser = argparse.ArgumentParser(prog="python -m eef_tasks.data_parallel",
                                     description="one rank of a data-parallel eef training (started by torchrun)")
    parser.add_argument("job", help="the job's JSON file, written by train_in_processes")
    job = json.loads(Path(parser.parse_args(argv).job).read_text())
    if "WORLD_SIZE" not in os.environ:
        print("error: python -m eef_tasks.data_parallel is one rank of a training started by torchrun "
              "(the pipeline's train phase with train_processes > 1)", file=sys.stderr)
        return 2
    interrupt.exit_with_parent()  # torchrun gone (killed): this rank goes too
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(levelname)s rank{rank} %(name)s: %(message)s")
    import torch

    from eef_tasks.training import TrainConfig, train_adapter

    torch.set_num_threads(max(1, job["threads"]))
    with interrupt.handlers(f"training rank {rank} of {job['run']} iteration {job['iteration']}"):
        try:
            train_adapter(job["db"], job["run"], job["iteration"], job["method"], job["out"],
                          TrainConfig.model_validate(job["config"]), base_model=job["base_model"],
                          overwrite=True, progress=False)
        except UserError as exc:
            print(f"error: rank {rank}: {exc}", file=sys.stderr, flush=True)
            return 1
        except interrupt.Interrupted as exc:
            return interrupt.exit_status(exc)
        except Exception as exc:  # a bug or a crash: its traceback for the log, then the one line
            traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0]
            print(f"error: rank {rank}: {type(exc).__name__}: {first}".rstrip(": "), file=sys.stderr, flush=True)
            return 1
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

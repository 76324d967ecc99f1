"""Orchestration overhead: one tiny `iteration` through Prefect vs the same phases called directly.

Set-up (not timed): a store with synthetic expert data on the tiny preset's tasks, a run with its
iteration 0 (behaviour cloning) finished. The store and adapters are then copied, one copy per
measurement, so every measurement runs the same iteration 1 (explore, simulate, select, train,
evaluate) from the same state. Measured, interleaved, `--repeats` times:

- **direct**: `pipeline.run_iteration` with each phase in its own process (`run_phase_process`),
  exactly the processes the flow starts, but no Prefect;
- **prefect**: the `iteration` flow (tasks, caching, the concurrency slot, artifacts, log
  forwarding) against a running local Prefect server (a temporary one, started once and not timed:
  its start-up is reported separately);
- **in-process**: `pipeline.run_iteration` with every phase in this process (no child processes;
  shows what the process isolation costs).

Overhead = prefect / direct - 1 (the goal is under 10 %). Absolute times vary with machine load;
compare rows of one run. Results go to benchmarks/out/bench_orchestration.json.

    .venv/bin/python benchmarks/bench_orchestration.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eef_tasks import pipeline  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
RUN = "bench-eef"


def prepare(work: Path) -> Path:
    """A store with expert data and a run whose iteration 0 is done; returns the store path."""
    from eef_tasks.collect import collect_experts

    base = work / "base"
    db = base / "eef.duckdb"
    config = pipeline.preset_config("tiny", RUN, adapters_dir=str(base / "adapters"))
    collect_experts(db, "scienceworld", "synthetic", split="train", tasks=config.task_names,
                    limit=config.train_limit, seed=[0, 1, 2], progress=False)
    pipeline.register_run(db, config)
    pipeline.run_iteration(db, RUN, runner=lambda r, i, p: pipeline.run_phase_process(db, r, i, p))
    assert pipeline.next_iteration(db, RUN) == 1
    return db


def fresh_copy(base_db: Path, dest: Path) -> Path:
    """Copy the store and the adapters; the run's adapters_dir is rewritten to the copy."""
    shutil.copytree(base_db.parent, dest)
    db = dest / base_db.name
    from eef_tasks import store

    with store.writer(db) as con:
        row = store.first_row(con, "SELECT config FROM runs WHERE run_id = $r", {"r": RUN})
        data = json.loads(row[0])
        for part in ("config", "requested"):
            data[part]["adapters_dir"] = str(dest / "adapters")
        con.execute("UPDATE runs SET config = $c WHERE run_id = $r", {"c": json.dumps(data), "r": RUN})
        for (i, p, s) in con.execute("SELECT iteration, phase, summary FROM run_phases WHERE run_id = $r",
                                     {"r": RUN}).fetchall():
            summary = json.loads(s)
            if "adapter" in summary:
                summary["adapter"] = summary["adapter"].replace(str(base_db.parent), str(dest))
                con.execute("UPDATE run_phases SET summary = $s WHERE run_id = $r AND iteration = $i AND phase = $p",
                            {"s": json.dumps(summary), "r": RUN, "i": i, "p": p})
    return db


def run_direct(db: Path) -> float:
    t0 = time.perf_counter()
    pipeline.run_iteration(db, RUN, runner=lambda r, i, p: pipeline.run_phase_process(db, r, i, p))
    return time.perf_counter() - t0


def run_in_process(db: Path) -> float:
    t0 = time.perf_counter()
    pipeline.run_iteration(db, RUN)
    return time.perf_counter() - t0


def run_prefect(db: Path) -> float:
    from flows.pipeline import IterationParams, iteration_flow

    t0 = time.perf_counter()
    iteration_flow(IterationParams(db=str(db), run_id=RUN))
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=OUT / "orchestration")
    parser.add_argument("--no-in-process", action="store_true")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    base = prepare(args.work)
    print(f"set-up (expert data + iteration 0): {time.perf_counter() - t0:.1f} s", flush=True)

    from prefect.testing.utilities import prefect_test_harness

    t0 = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        server_s = time.perf_counter() - t0
        print(f"temporary Prefect server start-up: {server_s:.1f} s (not in the rows below)", flush=True)
        samples: dict[str, list[float]] = {"direct": [], "prefect": [], "in-process": []}
        modes = [("direct", run_direct), ("prefect", run_prefect)]
        if not args.no_in_process:
            modes.append(("in-process", run_in_process))
        for r in range(args.repeats):
            for name, fn in modes:
                db = fresh_copy(base, args.work / f"{name}-{r}")
                wall = fn(db)
                assert pipeline.next_iteration(db, RUN) is None, f"{name}: the iteration did not finish"
                samples[name].append(wall)
                print(f"repeat {r + 1} {name}: {wall:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    overhead = med["prefect"] / med["direct"] - 1
    result = {"samples_s": samples, "median_s": med, "prefect_overhead": overhead,
              "server_startup_s": server_s, "repeats": args.repeats, "cpus": os.cpu_count()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_orchestration.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n| mode | median wall s | vs direct |\n|---|---:|---:|")
    for name, value in med.items():
        print(f"| {name} | {value:.1f} | {value / med['direct']:.2f}x |")
    print(f"\nPrefect overhead: {overhead:+.1%} (goal < 10 %): {'met' if overhead < 0.10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Ray path (runner=ray) against the local pool, and the one writer under many shards.

    .venv/bin/python benchmarks/bench_ray.py [--episodes 8] [--workers 2] [--max-steps 3]

Needs the `[ray]` extra. Starts a real local Ray cluster (a head and a second worker node, one CPU
each, `ray start`) and a temporary Prefect server, and stops both at the end.

- **rollouts**: the same real ScienceWorld explore episodes (SmolLM2-135M, hf engine, sampled,
  `--max-new-tokens` per reply, `--max-steps` per episode), once through the local pool
  (`rollout.run_rollouts`, `--workers` game processes) and once through Ray (`--workers` game
  processes in all, split over 2 shards), each into its own fresh store; episodes/s of wall time
  and the Ray path's overhead in %. The local run goes first and second (median of the two) so
  that a machine that warms up or slows down shows.
- **writer**: `--shards` shards of `--per-shard` finished trajectories (`--steps` steps each) arrive
  at once; the one writer stores them shard by shard as `distributed` does (one transaction per
  batch of 50): trajectories/s and steps/s.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eef_tasks import store
from eef_tasks.distributed import ray_rollouts
from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.hf import HFEngine
from eef_tasks.models import default_model_path
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord
from eef_tasks.rollout import RolloutEpisode, RolloutSummary, TrajectoryWriter, run_rollouts

TASK = "scienceworld/find-living-thing/0"
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rollouts(args, address: str, work: Path) -> list[tuple[str, float, int]]:
    factory = functools.partial(HFEngine, str(default_model_path()), None, device="cpu", max_batch_size=8)
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=1)
    episodes = [RolloutEpisode(TASK, sample=s) for s in range(args.episodes)]
    common = dict(purpose="explore", engine_factory=factory, sampling=sampling, n_workers=args.workers,
                  max_steps=args.max_steps)
    rows = []
    for i, (name, run) in enumerate([("local pool", run_rollouts), ("ray, 2 shards", ray_rollouts(address, 2)),
                                     ("local pool", run_rollouts)]):
        db = work / f"r{i}.duckdb"
        t0 = time.monotonic()
        summary = run(db, "bench", 1, episodes, **common)
        rows.append((name, time.monotonic() - t0, summary.written))
    return rows


def writer(args, work: Path) -> tuple[float, int, int]:
    task = TaskRecord(task_id=TASK, env="scienceworld", split="train", instruction="find a living thing")
    shards = [[TrajectoryRecord(
        traj_id=f"bench/it1/explore/{TASK}/s0@0/{s}-{i}", task_id=TASK, run_id="bench", source="policy",
        model_id="m", iteration=1, purpose="explore", reward=0.0, meta={"shard": s},
        steps=[StepRecord(action=f"look at thing {k}", observation="You see nothing special. " * 8)
               for k in range(args.steps)],
    ) for i in range(args.per_shard)] for s in range(args.shards)]
    db = work / "writer.duckdb"
    with store.writer(db) as con:
        con.execute("INSERT INTO runs (run_id, n_sims) VALUES ('bench', 0)")
    summary = RolloutSummary(run_id="bench", iteration=1, purpose="explore")
    out = TrajectoryWriter(db, [task], 50, summary)
    t0 = time.monotonic()
    for shard in shards:
        for record in shard:
            out.add(record)
        out.flush()
    elapsed = time.monotonic() - t0
    return elapsed, summary.written, summary.written * args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="eef-bench-ray-"))
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        subprocess.run([str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "1",
                        "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(work / "ray")],
                       check=True, capture_output=True, env=env)
        subprocess.run([str(RAY), "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                        "--disable-usage-stats"], check=True, capture_output=True, env=env)
        with prefect_test_harness(server_startup_timeout=120):
            rows = rollouts(args, f"127.0.0.1:{port}", work)
        w_s, n_traj, n_steps = writer(args, work)
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    local = statistics.median([s for name, s, _ in rows if name == "local pool"])
    ray_s = next(s for name, s, _ in rows if name.startswith("ray"))
    print(f"\n{args.episodes} ScienceWorld explore episodes, {args.workers} game processes in all, "
          f"max {args.max_steps} steps, {args.max_new_tokens} new tokens per reply; {os.cpu_count()} CPUs\n")
    print("| path | wall s | episodes stored | episodes/s |")
    print("|---|---:|---:|---:|")
    for name, s, n in rows:
        print(f"| {name} | {s:.1f} | {n} | {n / s:.3f} |")
    print(f"\nRay overhead vs the local pool (median of its two runs): {100 * (ray_s / local - 1):+.0f} %\n")
    print("| writer | shards | trajectories | steps | s | trajectories/s | steps/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| one writer, batches of 50 | {args.shards} | {n_traj} | {n_steps} | {w_s:.2f} | "
          f"{n_traj / w_s:,.0f} | {n_steps / w_s:,.0f} |")


if __name__ == "__main__":
    main()

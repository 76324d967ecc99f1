#!/usr/bin/env python
"""Benchmark the ScienceWorld environment: fast path vs the package's env.step(), the worker pool,
and prefix replay.

Measures, in one run on this machine:

- steps/s of `eef_tasks.envs.scienceworld.ScienceWorld.step` (the fast path: observation, score,
  completion) against `scienceworld.ScienceWorldEnv.step` (which also lists every valid action,
  look, inventory and task text after each step), both replaying the same gold paths with the
  JVM heap capped at 512 MB;
- the worker pool (`EnvPool`) with 1 and 2 workers running the same batch of gold episodes
  (episodes/s and steps/s, reset included; worker start-up and a warm-up batch excluded);
- prefix replay (reset + the first 20 gold actions of boil/0): median and p90 latency;
- JVM start-up time and resident memory.

Run from the repo root (needs Java 11+ and `scienceworld==1.2.3`):

    .venv/bin/python benchmarks/bench_env.py             # --quick for a smoke run

Gold paths come from the on-disk cache ($EEF_CACHE_DIR/gold or ~/.cache/eef/gold), generated on
first use. Results are printed as a markdown table and written to benchmarks/out/bench_env.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eef_tasks.envs.pool import EnvPool, Episode  # noqa: E402
from eef_tasks.envs.scienceworld import DEFAULT_JAVA_HEAP, ScienceWorld  # noqa: E402
from eef_tasks.experts.gold import gold_path  # noqa: E402

TASKS = [  # a mix of short and long episodes
    "scienceworld/boil/0",
    "scienceworld/find-living-thing/0",
    "scienceworld/use-thermometer/0",
    "scienceworld/test-conductivity/0",
    "scienceworld/chemistry-mix-paint-tertiary-color/0",
    "scienceworld/identify-life-stages-1/0",
]
PREFIX_TASK = "scienceworld/boil/0"
PREFIX_LEN = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the gold paths")
    p.add_argument("--episodes", type=int, default=120, help="episodes per pool measurement")
    p.add_argument("--prefix-reps", type=int, default=40, help="prefix replays to time")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "bench_env.json")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.episodes, args.prefix_reps = 1, 12, 5
    return args


def rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_fast(golds: dict[str, list[str]], repeats: int) -> dict[str, float]:
    started = time.perf_counter()
    env = ScienceWorld()
    start_s = time.perf_counter() - started
    steps, step_time = 0, 0.0
    try:
        for task_id, actions in golds.items():  # warm-up pass (JIT)
            env.replay(actions, task_id=task_id)
        for _ in range(repeats):
            for task_id, actions in golds.items():
                env.reset(task_id)
                t = time.perf_counter()
                for action in actions:
                    steps += 1
                    if env.step(action).done:
                        break
                step_time += time.perf_counter() - t
        rss = rss_mb(env.jvm_pid)
    finally:
        env.close()
    return {"steps": steps, "seconds": step_time, "steps_per_s": steps / step_time,
            "jvm_start_s": start_s, "jvm_rss_mb": rss or float("nan")}


def bench_package(golds: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """The package's own ScienceWorldEnv.step (same JVM heap cap, via JAVA_TOOL_OPTIONS)."""
    os.environ["JAVA_TOOL_OPTIONS"] = f"-Xmx{DEFAULT_JAVA_HEAP}"
    from scienceworld import ScienceWorldEnv

    env = ScienceWorldEnv("", envStepLimit=10_000)
    steps, step_time = 0, 0.0
    try:
        for rep in range(repeats + 1):  # the first pass is a warm-up (JIT)
            if rep == 1:
                steps, step_time = 0, 0.0
            for task_id, actions in golds.items():
                _, name, variation = task_id.split("/")
                env.load(name, int(variation), "easy", generateGoldPath=False)
                env.reset()
                t = time.perf_counter()
                for action in actions:
                    _, _, done, info = env.step(action)
                    steps += 1
                    if done or info["score"] >= 100:
                        break
                step_time += time.perf_counter() - t
        rss = rss_mb(env._gateway.java_process.pid)
    finally:
        env.close()
        os.environ.pop("JAVA_TOOL_OPTIONS", None)
    return {"steps": steps, "seconds": step_time, "steps_per_s": steps / step_time,
            "jvm_rss_mb": rss or float("nan")}


def bench_pool(golds: dict[str, list[str]], n_workers: int, n_episodes: int) -> dict[str, float]:
    items = list(golds.items())
    episodes = [Episode(task_id=t, actions=a, key=i)
                for i, (t, a) in enumerate(items[i % len(items)] for i in range(n_episodes))]
    with EnvPool(n_workers) as pool:
        pool.run(episodes[: 4 * len(items)])  # warm-up: workers started, JIT warmed
        t = time.perf_counter()
        results = pool.run(episodes)
        seconds = time.perf_counter() - t
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"pool episodes failed: {failed[:3]}")
    steps = sum(len(r.actions) for r in results)
    return {"workers": n_workers, "episodes": len(results), "steps": steps, "seconds": seconds,
            "episodes_per_s": len(results) / seconds, "steps_per_s": steps / seconds}


def bench_prefix(actions: list[str], reps: int) -> dict[str, float]:
    prefix = actions[:PREFIX_LEN]
    with ScienceWorld() as env:
        reference = env.replay(prefix, task_id=PREFIX_TASK)
        env.replay(prefix, task_id=PREFIX_TASK)  # warm-up
        times = []
        drifted = 0
        for _ in range(reps):
            t = time.perf_counter()
            replay = env.replay(prefix, reference.observations, task_id=PREFIX_TASK)
            times.append(time.perf_counter() - t)
            drifted += bool(replay.drift)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"actions": len(prefix), "reps": reps, "median_s": statistics.median(times),
            "p90_s": p90, "drifted_replays": drifted}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    golds = {}
    for task_id in TASKS:
        golds[task_id] = gold_path(task_id).actions
    names = ", ".join(f"{t.split('/', 1)[1]} ({len(a)})" for t, a in golds.items())
    print(f"gold paths (actions): {names}", file=sys.stderr)

    fast = bench_fast(golds, 5 * args.repeats)  # ~10x cheaper per step: more passes, same noise
    package = bench_package(golds, args.repeats)
    pools = [bench_pool(golds, n, args.episodes) for n in (1, 2)]
    prefix = bench_prefix(golds[PREFIX_TASK], args.prefix_reps)

    cpu = os.cpu_count()
    lines = [
        f"ScienceWorld 1.2.3, {platform.python_implementation()} {platform.python_version()}, "
        f"{cpu} CPUs, JVM heap -Xmx{DEFAULT_JAVA_HEAP}; gold paths of {len(golds)} tasks",
        "",
        "| measurement | result |",
        "|---|---|",
        f"| fast path `ScienceWorld.step` | {fast['steps_per_s']:.0f} steps/s ({fast['steps']} steps) |",
        f"| package `ScienceWorldEnv.step` | {package['steps_per_s']:.1f} steps/s "
        f"({package['steps']} steps) |",
        f"| speed-up | {fast['steps_per_s'] / package['steps_per_s']:.1f}x |",
    ]
    for pool in pools:
        lines.append(
            f"| pool, {pool['workers']} worker{'s' if pool['workers'] > 1 else ''} | "
            f"{pool['episodes_per_s']:.1f} episodes/s, {pool['steps_per_s']:.0f} steps/s "
            f"({pool['episodes']} gold episodes, reset included) |"
        )
    lines += [
        f"| prefix replay, {prefix['actions']} actions (boil/0, reset included) | "
        f"median {prefix['median_s'] * 1000:.0f} ms, p90 {prefix['p90_s'] * 1000:.0f} ms "
        f"({prefix['reps']} replays, {prefix['drifted_replays']} drifted) |",
        f"| JVM start | {fast['jvm_start_s']:.1f} s |",
        f"| JVM resident memory after the run | {fast['jvm_rss_mb']:.0f} MB (package env: "
        f"{package['jvm_rss_mb']:.0f} MB) |",
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"fast": fast, "package": package, "pool": pools, "prefix": prefix, "cpus": cpu,
         "tasks": {t: len(a) for t, a in golds.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

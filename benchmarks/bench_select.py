#!/usr/bin/env python
"""Benchmark training-example selection: the SQL path against the pure-Python baseline.

On one synthetic store (default ~100k trajectories / ~1.1M steps, made by
`eef_tasks.testing.synthetic_store.generate_store` in benchmarks/out/ when missing) it measures, for
--method eef and rft at the last iteration and bc at iteration 0:

- SQL, CLI: wall time of `eef select --db … --run … --iteration N --method M` through the real
  console script (process start, imports, connect, select, commit);
- SQL, in-process: `eef_tasks.selection.select_examples` on an open connection;
- baseline: `eef_tasks.testing.selection_reference` — `load` (all tasks and trajectories from DuckDB into
  Python objects) and `select` (the rules in Python), timed separately;

checks that `selection.fetch_examples` equals `selection_reference.select` row for row (exit 1
if not), repeats each measurement (--repeats, interleaved) and prints a markdown table of
medians, with the ratio baseline / SQL. Run from the repo root:

    .venv/bin/python benchmarks/bench_select.py            # or: make bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eef_tasks import selection, store  # noqa: E402
from eef_tasks.testing import selection_reference  # noqa: E402
from eef_tasks.testing.synthetic_store import generate_store  # noqa: E402

DEFAULT_DB = REPO / "benchmarks" / "out" / "bench.duckdb"
DEFAULT_TASKS = 3500  # -> ~100k trajectories, ~1.1M steps with the generator's other defaults
GOAL_SECONDS = 2.0
GOAL_SPEEDUP = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, default=DEFAULT_DB, help="store to benchmark (made if missing)")
    p.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="n_tasks when generating")
    p.add_argument("--runs", type=int, default=2, help="n_runs when generating")
    p.add_argument("--iterations", type=int, default=3, help="n_iterations when generating")
    p.add_argument("--seed", type=int, default=0, help="seed when generating")
    p.add_argument("--regenerate", action="store_true", help="rebuild the store even if it exists")
    p.add_argument("--run", default="synthetic-run-1", help="run to select for")
    p.add_argument("--iteration", type=int, default=None,
                   help="iteration for eef/rft (default: the run's last)")
    p.add_argument("--methods", nargs="+", default=["eef", "rft", "bc"],
                   choices=list(selection.METHODS))
    p.add_argument("--repeats", type=int, default=5, help="measurements per path (median shown)")
    p.add_argument("--no-cli", action="store_true", help="skip the `eef select` subprocess path")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results here (default: next to the store)")
    return p.parse_args(argv)


def eef_executable() -> str | None:
    """The `eef` console script of this interpreter's environment, if `eef select` works."""
    candidates = [Path(sys.executable).parent / "eef", REPO / ".venv" / "bin" / "eef"]
    found = shutil.which("eef")
    if found:
        candidates.append(Path(found))
    for exe in candidates:
        if exe.is_file() and os.access(exe, os.X_OK):
            probe = subprocess.run([str(exe), "select", "--help"], check=False,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return str(exe)
    return None


def store_size(db: Path) -> dict[str, int]:
    with store.reader(db) as con:
        row = store.first_row(
            con,
            """SELECT (SELECT count(*) FROM trajectories), (SELECT count(*) FROM steps),
                      (SELECT count(*) FROM tasks), (SELECT count(*) FROM runs)""",
        )
    assert row is not None
    return {"trajectories": row[0], "steps": row[1], "tasks": row[2], "runs": row[3]}


def last_iteration(db: Path, run_id: str) -> tuple[int, int]:
    with store.reader(db) as con:
        row = store.first_row(
            con,
            """SELECT (SELECT max(iteration) FROM trajectories
                       WHERE run_id = $r AND purpose IN ('explore', 'simulate')),
                      (SELECT n_sims FROM runs WHERE run_id = $r)""",
            {"r": run_id},
        )
    if row is None or row[0] is None or row[1] is None:
        sys.exit(f"run {run_id!r} has no explore/simulate trajectories in {db}")
    return int(row[0]), int(row[1])


def time_cli(exe: str, db: Path, run_id: str, iteration: int, method: str) -> float:
    cmd = [exe, "select", "--db", str(db), "--run", run_id, "--iteration", str(iteration),
           "--method", method]
    started = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed


def time_cli_floor() -> float:
    """Wall time of `python -c "import eef_tasks.cli"`: what every `eef` command pays first."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import eef_tasks.cli"], cwd=REPO,
                          check=False, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    return elapsed if done.returncode == 0 else float("nan")


_INSERT_HEAD = re.compile(r"^.*?INSERT\s+INTO\s+training_examples\s*\([^)]*\)\s*", re.DOTALL | re.IGNORECASE)


def query_only_sql(method: str) -> str:
    """The SELECT of the selection statement, without its INSERT INTO training_examples (…)."""
    name = "select/bc_examples" if method == "bc" else "select/shortest_prefix_examples"
    text, n = _INSERT_HEAD.subn("", store.read_sql(name), count=1)
    if n != 1:
        raise RuntimeError(f"sql/{name}.sql is not an INSERT INTO training_examples (...) SELECT")
    return text


def time_query_only(db: Path, run_id: str, iteration: int, method: str) -> float:
    """Just the selection query, read-only, results fetched: no transaction, no write."""
    sql = query_only_sql(method)
    params = {"run_id": run_id} if method == "bc" else {
        "run_id": run_id, "iteration": iteration, "method": method}
    con = store.connect(db, read_only=True)
    try:
        started = time.perf_counter()
        con.execute(sql, params).fetchall()
        return time.perf_counter() - started
    finally:
        con.close()


def time_in_process(db: Path, run_id: str, iteration: int, method: str) -> tuple[float, int]:
    con = store.connect(db)  # fresh connection each time: DuckDB's buffers start cold, like the CLI
    try:
        started = time.perf_counter()
        result = selection.select_examples(con, run_id, iteration, method)
        return time.perf_counter() - started, result.n_examples
    finally:
        con.close()


def time_baseline(db: Path, run_id: str, iteration: int, method: str,
                  n_sims: int) -> tuple[float, float, list[tuple]]:
    con = store.connect(db, read_only=True)
    try:
        started = time.perf_counter()
        splits, trajs = selection_reference.load(con)
        loaded = time.perf_counter()
        rows = selection_reference.select(splits, trajs, run_id, iteration, method, n_sims)
        done = time.perf_counter()
    finally:
        con.close()
    return loaded - started, done - loaded, rows


def check_identical(db: Path, run_id: str, iteration: int, method: str,
                    reference: list[tuple]) -> int:
    with store.reader(db) as con:
        sql_rows = selection.fetch_examples(con, run_id, iteration, method)
    if sql_rows != reference:
        only_sql = sorted(set(sql_rows) - set(reference))[:5]
        only_ref = sorted(set(reference) - set(sql_rows))[:5]
        print(f"MISMATCH for {method} iteration {iteration}: SQL {len(sql_rows)} rows, "
              f"reference {len(reference)} rows\n  only in SQL: {only_sql}\n"
              f"  only in reference: {only_ref}", file=sys.stderr)
        sys.exit(1)
    return len(sql_rows)


def fmt(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    return f"{seconds:.3f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.1f}x"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db: Path = args.db
    generated = None
    if args.regenerate or not db.exists():
        print(f"generating {db} (n_tasks={args.tasks}, n_runs={args.runs}, "
              f"n_iterations={args.iterations}, seed={args.seed}) …", file=sys.stderr)
        generated = generate_store(db, n_tasks=args.tasks, n_runs=args.runs,
                                   n_iterations=args.iterations, seed=args.seed, overwrite=True)
        print(f"  done in {generated['seconds']:.1f} s: {generated}", file=sys.stderr)
    size = store_size(db)
    last, n_sims = last_iteration(db, args.run)
    iteration = args.iteration if args.iteration is not None else last

    exe = None if args.no_cli else eef_executable()
    if exe is None and not args.no_cli:
        print("note: `eef select` is not available; measuring the in-process SQL path only",
              file=sys.stderr)

    results = []
    cli_floor = [time_cli_floor() for _ in range(args.repeats)] if exe else []
    for method in args.methods:
        it = 0 if method == "bc" else iteration
        cli, sql, query, load, compute = [], [], [], [], []
        n_examples = None
        reference: list[tuple] = []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits every path
            if exe:
                cli.append(time_cli(exe, db, args.run, it, method))
            seconds, n_examples = time_in_process(db, args.run, it, method)
            sql.append(seconds)
            query.append(time_query_only(db, args.run, it, method))
            t_load, t_compute, reference = time_baseline(db, args.run, it, method, n_sims)
            load.append(t_load)
            compute.append(t_compute)
        n_rows = check_identical(db, args.run, it, method, reference)
        assert n_rows == n_examples
        med = statistics.median
        row = {
            "method": method, "iteration": it, "examples": n_rows,
            "cli_s": med(cli) if cli else None, "sql_s": med(sql), "query_s": med(query),
            "load_s": med(load), "compute_s": med(compute),
            "baseline_s": med([a + b for a, b in zip(load, compute, strict=True)]),
            "samples": {"cli": cli, "sql": sql, "query": query, "load": load, "compute": compute},
        }
        results.append(row)
        print(f"{method} iteration {it}: {n_rows} examples, identical rows; "
              f"medians cli {fmt(row['cli_s'])} s, in-process {fmt(row['sql_s'])} s, "
              f"baseline {fmt(row['baseline_s'])} s", file=sys.stderr)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    import duckdb
    import polars
    print()
    print(f"Store `{db.relative_to(REPO) if db.is_relative_to(REPO) else db}`: "
          f"{size['trajectories']:,} trajectories, {size['steps']:,} steps, {size['tasks']:,} "
          f"tasks, {size['runs']} runs; run `{args.run}` (M = {n_sims}), iteration {iteration}.")
    print(f"Machine: {machine}; duckdb {duckdb.__version__}, polars {polars.__version__}. "
          f"Medians of {args.repeats} interleaved repeats, seconds.")
    if cli_floor:
        print(f"CLI floor (`python -c 'import eef_tasks.cli'`: interpreter start and imports, "
              f"paid by every `eef` command): {fmt(statistics.median(cli_floor))} s.")
    print()
    print("| method | iteration | examples | SQL: `eef select` (CLI) | SQL: select_examples "
          "(in-process) | SQL: query only | baseline: load | baseline: select | baseline: total "
          "| baseline / SQL in-process | baseline / SQL query only | baseline / CLI |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['iteration']} | {r['examples']:,} | {fmt(r['cli_s'])} "
              f"| {fmt(r['sql_s'])} | {fmt(r['query_s'])} | {fmt(r['load_s'])} "
              f"| {fmt(r['compute_s'])} | {fmt(r['baseline_s'])} "
              f"| {ratio(r['baseline_s'], r['sql_s'])} | {ratio(r['baseline_s'], r['query_s'])} "
              f"| {ratio(r['baseline_s'], r['cli_s'])} |")
    print()
    slowest_sql = max((r["cli_s"] if r["cli_s"] is not None else r["sql_s"]) for r in results)
    worst_speedup = min(r["baseline_s"] / r["sql_s"] for r in results)
    print(f"Goal: SQL path < {GOAL_SECONDS:.0f} s — slowest "
          f"{'CLI' if exe else 'in-process'} median {slowest_sql:.3f} s: "
          f"{'met' if slowest_sql < GOAL_SECONDS else 'MISSED'}. "
          f"Goal: >= {GOAL_SPEEDUP:.0f}x faster than the baseline (in-process) — worst "
          f"{worst_speedup:.1f}x: {'met' if worst_speedup >= GOAL_SPEEDUP else 'MISSED'}.")

    out = args.json or db.with_name("bench_select.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "db": str(db), "size": size, "generated": generated, "run": args.run,
        "iteration": iteration, "n_sims": n_sims, "repeats": args.repeats, "machine": machine,
        "cli": exe, "cli_floor_s": cli_floor, "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

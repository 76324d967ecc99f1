"""Seed 0's extra runs of `eef experiment --preset cpu --name cpu --seeds 0 --extra ...`, run before its
RFT baselines (same functions the experiment calls: flows.pipeline.run_extra); the experiment command,
rerun afterwards, resumes and finds them done."""
import sys, time
from flows.local_server import temporary_server
from flows.seeds import seed_overrides, extra_run_name
from flows.pipeline import run_extra
from eef_tasks import pipeline

db = "data/paper.duckdb"
with temporary_server():
    values = seed_overrides("cpu", {}, 0)
    eef = pipeline.load_run(db, "cpu-eef-s0")
    for extra in sys.argv[1].split(","):
        t = time.monotonic()
        run_extra(db, "cpu", extra_run_name("cpu", extra, 0), extra, values, eef)
        print(f"EXTRA {extra} done in {time.monotonic() - t:.0f} s", flush=True)

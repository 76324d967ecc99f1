"""eef's WebShop: steps/s of one env, and the memory of 16 concurrent envs against one.

    .venv/bin/python benchmarks/bench_webshop.py            # prints a table, writes benchmarks/out/bench_webshop.json

Speed: the same episodes (gold and synthetic plans of the first dev goals) are replayed
(a) in-process on one `WebShop` and (b) through eef's AgentGym-protocol server (`agentgym_server
--env webshop`, a real uvicorn process on 127.0.0.1) with eef's `AgentGymEnv`, the way AgentGym
runs WebShop. Both are timed in this run, interleaved, medians of `--repeats`.

Memory: each configuration runs in a fresh Python process that imports eef's WebShop, then makes
N envs and keeps them all mid-episode (search, paging, an item page), stepping them round-robin;
its peak RSS (`VmHWM` of /proc/self/status) is reported. "shared" is eef's design (one product table and search
index per process); "copied" gives every env its own table and index, as AgentGym's server does
(it loads the products, goals and a Lucene searcher per env), to show what sharing saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eef_tasks.envs import agentgym as ag  # noqa: E402
from eef_tasks.envs.webshop import WebShop, catalog  # noqa: E402
from eef_tasks.experts import webshop as experts  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "bench_webshop.json"

MEMORY_CHILD = r"""
import sys

def peak_kib():
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, kept across exec)
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

n, mode = int(sys.argv[1]), sys.argv[2]
from eef_tasks.envs.webshop import WebShop, catalog
from eef_tasks.envs.webshop.products import build_goals, build_products, load_webshop, WebShopData
from eef_tasks.envs.webshop.search import ProductSearch
from eef_tasks.experts import webshop as experts
import eef_tasks.envs.webshop.products as P

def copied():
    raw = P.read_gz_json(P.PRODUCTS_FILE); attrs = P.read_gz_json(P.ATTRIBUTES_FILE)
    nouns = P.read_gz_json(P.NOUNS_FILE)["nouns"]
    products = build_products(raw, attrs, nouns)
    data = WebShopData(tuple(products), {p.asin: p for p in products}, tuple(build_goals(products)))
    return WebShop(data=data, search=ProductSearch(data.products))

envs = [WebShop() if mode == "shared" else copied() for _ in range(n)]
if n == 0:  # imports only: what any eef process with WebShop's modules costs
    print(peak_kib()); sys.exit()
specs = catalog("dev")[:n]
plans = [experts.plan("gold", s.task_id)[0] for s in specs]
for env, spec in zip(envs, specs):
    env.reset(spec.task_id)
for k in range(max(len(p) for p in plans) - 1):  # all alive, none finished: round-robin steps
    for env, plan in zip(envs, plans):
        if k < len(plan) - 1:
            env.step(plan[k])
print(peak_kib())
"""


def episodes(n: int) -> list[tuple[str, list[str]]]:
    out = []
    for spec in catalog("dev")[:n]:
        out.append((spec.task_id, experts.plan("gold", spec.task_id)[0]))
        out.append((spec.task_id, experts.plan("synthetic", spec.task_id, seed=0)[0]))
    return out


def run_all(env, eps) -> tuple[int, float]:
    steps, started = 0, time.perf_counter()
    for task_id, actions in eps:
        steps += env.replay(actions, task_id=task_id).n_steps
    return steps, time.perf_counter() - started


def start_server(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "eef_tasks.envs.agentgym_server", "--env", "webshop",
         "--port", str(port), "--log-level", "warning"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def peak_rss_kib(n: int, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n), mode], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--goals", type=int, default=100, help="dev goals (x2 episodes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=36017)
    args = parser.parse_args()

    eps = episodes(args.goals)
    local = WebShop()
    server = start_server(args.port)
    url = f"http://127.0.0.1:{args.port}"
    try:
        ag.wait_for_server(url, 60)
        remote = ag.AgentGymEnv("webshop", url, timeout_s=30)
        local_rates, remote_rates = [], []
        for _ in range(args.repeats):
            steps, dt = run_all(local, eps)
            local_rates.append(steps / dt)
            steps, dt = run_all(remote, eps)
            remote_rates.append(steps / dt)
        remote.close()
    finally:
        server.terminate()
        server.wait(timeout=15)

    memory = {}
    for n in (0, 1, 16):
        for mode in ("shared", "copied"):
            if n < 16 and mode == "copied":
                continue
            memory[f"{mode}-{n}"] = peak_rss_kib(n, mode)
    results = {
        "episodes": len(eps),
        "steps_per_s": {"in_process": statistics.median(local_rates),
                        "agentgym_http": statistics.median(remote_rates)},
        "samples": {"in_process": local_rates, "agentgym_http": remote_rates},
        "peak_rss_kib": memory,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))
    sp = results["steps_per_s"]
    print(f"{len(eps)} episodes, medians of {args.repeats}")
    print(f"steps/s in-process {sp['in_process']:.0f}; through the AgentGym server "
          f"{sp['agentgym_http']:.0f} (in-process / HTTP = {sp['in_process'] / sp['agentgym_http']:.1f}x)")
    one, sixteen, copied = memory["shared-1"], memory["shared-16"], memory["copied-16"]
    print(f"peak RSS: imports only {memory['shared-0'] / 1024:.0f} MiB; 1 env {one / 1024:.0f} MiB; 16 envs shared {sixteen / 1024:.0f} MiB "
          f"({sixteen / one:.2f}x of one); 16 envs each with its own index {copied / 1024:.0f} MiB "
          f"({copied / one:.2f}x)")
    print(f"goal 16 envs < 1.5x one env: {'met' if sixteen < 1.5 * one else 'MISSED'}")


if __name__ == "__main__":
    main()

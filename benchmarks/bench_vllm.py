"""Explore-phase throughput on real ScienceWorld episodes: the hf engine vs a real vLLM server.

    .venv/bin/python benchmarks/bench_vllm.py [--concurrency 1,8,32] [--max-steps 6] [--threads 1]

Needs `make vllm` (.vllm-venv). Every mode plays the same episodes (find-living-thing variations
0..n-1, sampled at temperature 1 with the same seeds) through `rollout.run_rollouts` into a fresh
DuckDB file, `c` episodes at once (one game process each; `max(c, 4)` episodes per level), the
policy being the default model plus a rank-16 LoRA adapter (the run's default rank; random small
weights: speed does not depend on their values), bf16 everywhere:

- **hf**: eef's transformers engine in this process, the adapter merged (`--threads` torch threads);
- **vllm lora**: a vLLM server with `--enable-lora --max-lora-rank 16`, the adapter loaded at run
  time under its content-hashed name (the pipeline's `vllm_adapters = "runtime"`);
- **vllm merged**: the adapter merged into a bfloat16 checkpoint (`vllm_server.merge_adapter`) and a
  server without LoRA on it (`--eager`: `--enforce-eager`): what the pipeline's own server does on
  CPU (`vllm_adapters = "merged"`, auto's choice there);
- **vllm base** (`--base`): the base model without adapter, for reference.

A server's start-up (process start to healthy) and the merge are timed separately. On CPU the
server gets `--threads` OMP threads (`VLLM_CPU_OMP_THREADS_BIND`). Prints a markdown table; ratios
are against hf at the same concurrency, measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.hf import HFEngine
from eef_tasks.engines.vllm import VLLMEngine
from eef_tasks.engines.vllm_server import ServerSpec, VLLMServer, installed, merge_adapter
from eef_tasks.models import default_model_path
from eef_tasks.rollout import RolloutEpisode, run_rollouts

TASK = "scienceworld/find-living-thing/{}"


def make_adapter(base: Path, out: Path, rank: int) -> Path:
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    lora = peft.get_peft_model(model, peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    lora.save_pretrained(out / "bench-it1")
    return out / "bench-it1"


def level(db: Path, name: str, engine, c: int, args) -> dict:
    n = max(c, 4)
    episodes = [RolloutEpisode(TASK.format(i), sample=0) for i in range(n)]
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=1)
    start = time.perf_counter()
    summary = run_rollouts(db, f"{name}-c{c}", 1, episodes, purpose="explore", engine=engine, sampling=sampling,
                           n_workers=c, max_steps=args.max_steps)
    wall = time.perf_counter() - start
    row = {"mode": name, "c": c, "episodes": summary.written, "errors": len(summary.errors), "wall_s": wall,
           "completion_tokens": summary.completion_tokens, "prompt_tokens": summary.prompt_tokens,
           "episodes_per_s": summary.written / wall, "tokens_per_s": summary.completion_tokens / wall}
    print(f"  {name} c={c}: {row['episodes']} episodes in {wall:.1f} s, {row['tokens_per_s']:.1f} gen tok/s"
          + (f", errors: {summary.errors[:2]}" if summary.errors else ""), flush=True)
    return row


def vllm_mode(db, name, spec, adapter, args, rows, startup) -> None:
    server = VLLMServer(spec, log_path=Path(args.out) / f"vllm-{name.replace(' ', '-')}.log")
    server.start()
    try:
        startup[name] = server.wait_ready(args.start_timeout)
        print(f"{name}: server up in {startup[name]:.1f} s", flush=True)
        with VLLMEngine(server.url, spec.served_name, adapter) as engine:
            if adapter is not None:
                t = time.perf_counter()
                engine.ensure_ready()
                startup[name + " (adapter load)"] = time.perf_counter() - t
            for c in args.concurrency:
                rows.append(level(db, name, engine, c, args))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32])
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (hf) and OMP threads (vLLM, CPU)")
    parser.add_argument("--modes", default="hf,vllm lora,vllm merged")
    parser.add_argument("--base", action="store_true", help="also the base model on vLLM without adapter")
    parser.add_argument("--out", default="benchmarks/out/vllm")
    parser.add_argument("--start-timeout", type=float, default=1800.0,
                        help="seconds for a server to come up (without LoRA, vLLM compiles the model first)")
    parser.add_argument("--eager", action="store_true", help="servers without LoRA: --enforce-eager (no compile)")
    args = parser.parse_args()
    if not installed():
        sys.exit("bench_vllm: no .vllm-venv: run `make vllm` first")
    import torch

    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",")] + (["vllm base"] if args.base else [])
    base = default_model_path()
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    rows: list[dict] = []
    startup: dict[str, float] = {}
    try:
        adapter = make_adapter(base, work, args.rank)
        db = work / "bench.duckdb"
        eager = ("--enforce-eager",) if args.eager else ()
        common = dict(dtype="bfloat16", cpu_threads=args.threads, max_model_len=8192, kv_cache_gib=2)
        for mode in modes:
            print(f"{mode} ...", flush=True)
            if mode == "hf":
                engine = HFEngine(base, adapter, dtype="bfloat16", max_batch_size=max(8, max(args.concurrency)))
                for c in args.concurrency:
                    rows.append(level(db, "hf", engine, c, args))
                del engine
            elif mode == "vllm lora":
                spec = ServerSpec.for_machine(base, lora_rank=args.rank, **common)
                vllm_mode(db, mode, spec, adapter, args, rows, startup)
            elif mode == "vllm merged":
                merged = work / "merged"
                startup["vllm merged (merge + save)"] = merge_adapter(base, adapter, merged)
                print(f"merged in {startup['vllm merged (merge + save)']:.1f} s", flush=True)
                spec = ServerSpec.for_machine(merged, lora_rank=None, extra_args=eager, **common)
                vllm_mode(db, mode, spec, None, args, rows, startup)
            elif mode == "vllm base":
                spec = ServerSpec.for_machine(base, lora_rank=None, extra_args=eager, **common)
                vllm_mode(db, mode, spec, None, args, rows, startup)
            else:
                sys.exit(f"bench_vllm: unknown mode {mode!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    hf = {r["c"]: r for r in rows if r["mode"] == "hf"}

    def vs_hf(r: dict, key: str) -> str:
        ref = hf.get(r["c"], {}).get(key)
        return f"{r[key] / ref:.2f}x" if ref else "-"

    print("\n| mode | concurrent episodes | episodes | errors | wall s | generated tokens | gen tok/s | episodes/s "
          "| episodes/s vs hf | gen tok/s vs hf |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['c']} | {r['episodes']} | {r['errors']} | {r['wall_s']:.1f} | {r['completion_tokens']:,} "
              f"| {r['tokens_per_s']:.1f} | {r['episodes_per_s']:.3f} | {vs_hf(r, 'episodes_per_s')} "
              f"| {vs_hf(r, 'tokens_per_s')} |")
    print("\n| start-up | seconds |\n|---|---:|")
    for name, seconds in startup.items():
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()

"""Throughput of the hf rollout engine vs a naive per-episode `model.generate` loop.

    .venv/bin/python benchmarks/bench_rollout.py [--episodes 32] [--turns 3] [--max-new-tokens 32]

The "environment" is a synthetic echo (no JVM, so only the model is measured): after each reply
the next user turn is `Observation: You did '<action>'. …` with a few dozen tokens of room text,
as ScienceWorld observations look. Every episode has its own instruction, so the rows differ.

- **hf engine**: all `--episodes` conversations advance together; one batched `generate` per turn,
  each conversation's KV cache reused between turns (only the new observation is prefilled).
- **hf engine, batch 1**: the same engine, one conversation at a time (cache reuse, no batching).
- **naive**: one `model.generate` per episode and turn on the full re-encoded history.

Both baselines run on `--naive-episodes` of the conversations (default 4) to keep the run short;
rates are per second of wall time, so they compare directly. Greedy decoding everywhere; each
reply ends at the end-of-turn token or `--max-new-tokens`. Prints a markdown table.

**Prefill** (`--prefill-batch`, default 8; `--prefill-only` skips the episode rows): for each of
`--dtypes` (default bfloat16,float32; one engine each, SDPA), one batched engine call with one new
token on fresh sessions whose chats hold `--prefill-turns` echo turns (a ~1k-token prompt each),
median of `--repeats`. Its FLOPs are counted by `peak.transformer_flops` (decoder linears and causal
attention on every prompt token, the head on one position per row; padding not counted) and
divided by the bf16 and fp32 matmul peaks measured in the same run (`peak.py`), before and after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from eef_tasks.chat import build_chat, observation_text, parse_action
from eef_tasks.engines import SamplingConfig
from eef_tasks.engines.hf import HFEngine
from eef_tasks.models import default_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peak as peak_mod  # noqa: E402

ROOM = ("This room is called the kitchen. In it, you see: a counter, a sink, a fridge, a stove, "
        "a cupboard, a glass jar, a thermometer, an oven and a door to the hallway.")


def chats(n: int) -> list[list[dict[str, str]]]:
    return [
        [t.message() for t in build_chat(
            "scienceworld", f"Your task is to find a(n) living thing number {i}. First, focus on "
            "the thing. Then, move it to the red box in the kitchen.", [])]
        for i in range(n)
    ]


def echo(chat: list[dict[str, str]], reply: str, turn: int) -> None:
    _, action = parse_action(reply)
    chat.append({"role": "assistant", "content": reply.strip() or "(empty reply)"})
    chat.append({"role": "user", "content": observation_text(f"You did '{action or reply[:40]}'. "
                                                             f"Turn {turn}. {ROOM}")})


def run_engine(engine: HFEngine, n: int, turns: int, sampling: SamplingConfig, batch: bool) -> dict:
    convs = chats(n)
    sessions = [engine.session(f"e{i}") for i in range(n)]
    tokens = prefill = prompt = 0
    start = time.perf_counter()
    for turn in range(turns):
        groups = [list(range(n))] if batch else [[i] for i in range(n)]
        for group in groups:
            gens = engine.generate([(sessions[i], convs[i]) for i in group], sampling)
            for i, gen in zip(group, gens, strict=True):
                tokens += len(gen.token_ids)
                prefill += gen.prefill_tokens
                prompt += gen.prompt_tokens
                echo(convs[i], gen.text, turn)
    wall = time.perf_counter() - start
    return {"episodes": n, "tokens": tokens, "prefill": prefill, "prompt": prompt, "wall": wall}


def run_naive(engine: HFEngine, n: int, turns: int, sampling: SamplingConfig) -> dict:
    convs = chats(n)
    tokens = prompt = 0
    start = time.perf_counter()
    for turn in range(turns):
        for chat in convs:
            prompt += len(engine.prompt_ids(chat))
            out = engine.plain_generate(chat, sampling.max_new_tokens)
            tokens += len(out)
            body = [t for t in out if t not in engine.stop_ids]
            echo(chat, engine.tokenizer.decode(body, skip_special_tokens=True), turn)
    wall = time.perf_counter() - start
    return {"episodes": n, "tokens": tokens, "prefill": prompt, "prompt": prompt, "wall": wall}


def prefill_chats(n: int, turns: int) -> list[list[dict[str, str]]]:
    convs = chats(n)
    for chat in convs:
        for turn in range(turns):
            echo(chat, f"Thought: I look for it.\nAction: look at counter {turn}", turn)
    return convs


def run_prefill(engine: HFEngine, n: int, turns: int, repeats: int) -> dict:
    """One batched call with one new token on fresh sessions: the prompt's prefill."""
    convs = prefill_chats(n, turns)
    sizes = peak_mod.model_sizes(engine.model)
    lengths = [len(engine.prompt_ids(c)) for c in convs]
    flops = peak_mod.transformer_flops(sizes, lengths, n, training=False)
    one = SamplingConfig(temperature=0.0, max_new_tokens=1)
    engine.generate([(engine.session("warm"), convs[0])], one)
    walls = []
    for r in range(repeats):
        sessions = [engine.session(f"p{r}-{i}") for i in range(n)]
        t0 = time.perf_counter()
        gens = engine.generate(list(zip(sessions, convs, strict=True)), one)
        walls.append(time.perf_counter() - t0)
        assert [g.prefill_tokens for g in gens] == lengths
    wall = statistics.median(walls)
    return {"dtype": engine.precision.dtype, "rows": n, "tokens": sum(lengths), "max_length": max(lengths),
            "wall": wall, "walls": walls, "gflop_s": flops["flops"] / wall / 1e9,
            "attention_share": flops["attention_share"]}


def prefill_section(args, model_path: Path) -> None:
    import torch

    peak_runs = [peak_mod.peaks(device=args.device or "cpu")]
    rows = []
    for dtype in args.dtypes:
        engine = HFEngine(model_path, device=args.device, dtype=dtype, max_batch_size=max(args.prefill_batch, 1))
        rows.append(run_prefill(engine, args.prefill_batch, args.prefill_turns, args.repeats))
        print("prefill", rows[-1], flush=True)
        del engine
    peak_runs.append(peak_mod.peaks(device=args.device or "cpu"))
    measured = peak_mod.merge_peaks(*peak_runs)
    bf16, fp32 = measured["bfloat16"]["gflops"], measured["float32"]["gflops"]
    print(f"\nprefill, {torch.get_num_threads()} thread(s); matmul peak measured in this run "
          f"(2048^2, median of {len(measured['bfloat16']['samples'])} samples before and after): "
          f"bf16 {bf16:,.0f} GFLOP/s, fp32 {fp32:,.0f} GFLOP/s\n")
    print("| engine dtype | rows | prompt tokens | longest | wall s (median) | tokens/s | GFLOP/s (counted) | "
          "of bf16 peak | of fp32 peak | attention share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['rows']} | {r['tokens']:,} | {r['max_length']} | {r['wall']:.2f} | "
              f"{r['tokens'] / r['wall']:,.0f} | {r['gflop_s']:,.1f} | {r['gflop_s'] / bf16:.1%} | "
              f"{r['gflop_s'] / fp32:.1%} | {r['attention_share']:.0%} |")
    if len(rows) > 1:
        print(f"\n{rows[0]['dtype']} / {rows[1]['dtype']} prefill tokens/s: "
              f"{rows[1]['wall'] / rows[0]['wall']:.2f}x")


def _timed(fn, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def decode_bytes(model, rows: int, cached: int) -> int:
    """Bytes one decode step must read: every weight once (the embedding's single rows aside; a
    tied head is the embedding matrix, read once) and every row's cached keys and values."""
    sizes = peak_mod.model_sizes(model)
    weights = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    element = next(model.parameters()).element_size()
    return sum(weights.values()) + sizes["layers"] * 2 * rows * sizes["kv_width"] * cached * element


def run_decode(engine: HFEngine, baseline, rows: int, turns: int, new_tokens: int, repeats: int) -> dict:
    """Decode of `rows` conversations over ~1k-token caches: the engine's turn of `new_tokens`
    tokens minus its turn of one token (the prefill of the new tokens, the cache gathering and the
    first token cancel), per extra token; the same for transformers' `generate` on the same prompts
    (left-padded, its default cache and SDPA attention), the baseline."""
    import torch

    convs = prefill_chats(rows, turns)
    turn = [{"role": "assistant", "content": "Thought: I look.\nAction: look around"},
            {"role": "user", "content": observation_text("You see a door.")}]
    stops, engine.stop_ids = engine.stop_ids, set()  # every row decodes the full length
    try:
        def engine_turn(n: int) -> float:
            sessions = [engine.session(f"d{rows}-{i}", i) for i in range(rows)]
            engine.generate(list(zip(sessions, convs, strict=True)), SamplingConfig(0.0, 1.0, 1))
            t0 = time.perf_counter()
            engine.generate([(s, c + turn) for s, c in zip(sessions, convs, strict=True)],
                            SamplingConfig(0.7, 0.95, n))
            return time.perf_counter() - t0

        def median_turn(n: int) -> float:
            return statistics.median(engine_turn(n) for _ in range(repeats))

        t1, tn = median_turn(1), median_turn(new_tokens)
    finally:
        engine.stop_ids = stops
    cached = max(len(engine.prompt_ids(c + turn)) for c in convs)
    tok = engine.tokenizer
    tok.padding_side = "left"
    batch = tok([engine.render(c + turn) for c in convs], return_tensors="pt", padding=True, add_special_tokens=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(n: int) -> None:
        with torch.inference_mode():
            baseline.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.7,
                              top_p=0.95, pad_token_id=pad)

    b1, bn = _timed(lambda: generate(1), repeats), _timed(lambda: generate(new_tokens), repeats)
    step, base_step = (tn - t1) / (new_tokens - 1), (bn - b1) / (new_tokens - 1)
    return {"rows": rows, "cached": cached, "step_s": step, "tokens_s": rows / step, "baseline_step_s": base_step,
            "baseline_tokens_s": rows / base_step, "bytes_per_step": decode_bytes(engine.model, rows, cached)}


def decode_section(args, model_path: Path) -> None:
    import torch

    from eef_tasks.precision import choose_precision, load_causal_lm

    bw_runs = [peak_mod.memory_bandwidth()]
    engine = HFEngine(model_path, device=args.device, max_batch_size=max(args.decode_batches))
    baseline = load_causal_lm(engine.model_path, choose_precision(args.device)).eval()  # transformers' own SDPA
    rows = []
    for b in args.decode_batches:
        rows.append(run_decode(engine, baseline, b, args.prefill_turns, args.max_new_tokens, args.repeats))
        print("decode", rows[-1], flush=True)
    bw_runs.append(peak_mod.memory_bandwidth())
    bw = statistics.median(s for r in bw_runs for s in r["samples"])
    print(f"\ndecode, {engine.precision.dtype}, {torch.get_num_threads()} thread(s), {args.max_new_tokens} tokens per turn; "
          f"memory bandwidth measured in this run (copy of {bw_runs[0]['mib']} MiB, read + write, median of "
          f"{sum(len(r['samples']) for r in bw_runs)} samples before and after): {bw:,.1f} GB/s\n")
    print("| rows | cached tokens | engine ms / step | engine tokens/s | transformers generate ms / step | "
          "generate tokens/s | engine / generate | MB read per step | of memory bandwidth |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['rows']} | {r['cached']:,} | {r['step_s'] * 1e3:.1f} | {r['tokens_s']:.1f} | "
              f"{r['baseline_step_s'] * 1e3:.1f} | {r['baseline_tokens_s']:.1f} | "
              f"{r['baseline_step_s'] / r['step_s']:.2f}x | {r['bytes_per_step'] / 1e6:,.0f} | "
              f"{r['bytes_per_step'] / r['step_s'] / 1e9 / bw:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--naive-episodes", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--prefill-turns", type=int, default=8, help="echo turns in each prefill chat")
    parser.add_argument("--dtypes", type=lambda v: v.split(","), default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3, help="prefill repeats (median)")
    parser.add_argument("--prefill-only", action="store_true", help="only the prefill table")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the decode table: engine vs transformers generate, against memory bandwidth")
    parser.add_argument("--decode-batches", type=lambda v: [int(x) for x in v.split(",")], default=[4, 8, 16])
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode_only:
        return decode_section(args, default_model_path())
    prefill_section(args, default_model_path())
    if args.prefill_only:
        return
    engine = HFEngine(default_model_path(), device=args.device, max_batch_size=max(args.episodes, 1))
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    engine.generate([(engine.session("warmup"), chats(1)[0])], SamplingConfig(0.0, 1.0, 4))

    rows = []
    for name, fn in [
        (f"hf engine, {args.episodes} concurrent, KV reuse",
         lambda: run_engine(engine, args.episodes, args.turns, sampling, batch=True)),
        ("hf engine, batch 1, KV reuse",
         lambda: run_engine(engine, args.naive_episodes, args.turns, sampling, batch=False)),
        ("naive generate per episode, full history",
         lambda: run_naive(engine, args.naive_episodes, args.turns, sampling)),
    ]:
        rows.append((name, fn()))
        print(name, rows[-1][1], flush=True)
    base = rows[-1][1]["tokens"] / rows[-1][1]["wall"]
    print(f"\nmodel {engine.model_path} on {engine.device} ({torch.get_num_threads()} threads), "
          f"{args.turns} turns, max_new_tokens {args.max_new_tokens}, greedy\n")
    print("| setup | episodes | generated tokens | prompt tokens | prefilled | wall s | tokens/s | episodes/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        tps = r["tokens"] / r["wall"]
        print(f"| {name} | {r['episodes']} | {r['tokens']} | {r['prompt']} | {r['prefill']} | "
              f"{r['wall']:.1f} | {tps:.1f} | {r['episodes'] / r['wall']:.3f} | {tps / base:.1f}x |")


if __name__ == "__main__":
    main()

"""The machine's matmul peak, measured, and the FLOP accounting the throughput benchmarks divide by it.

    .venv/bin/python benchmarks/peak.py [--threads 1] [--size 2048] [--repeats 5]

`matmul_peak(dtype)`: median GFLOP/s of `torch.matmul` of two n x n matrices (2 n^3 FLOPs) after
one untimed call, on the current torch threads and device. `bench_train.py` and `bench_rollout.py`
call it in the same run as their measurements (before and after them), because on a shared machine
only ratios taken together mean anything.

`body_matmul_rate(config, tokens, dtype)`: what the same `torch.matmul` reaches on the decoder's own
shapes, a [tokens x in] activation times each projection's [in x out] weight (q, k, v, o, gate, up,
down, from the model's config) and the [tokens x out] x [out x in] product of its input gradient, as
total FLOPs over total time. SmolLM2-135M's projections are 576 and 1,536 wide, far from the 2048^2
of the peak, so this is the ceiling a step of that model's linears can reach on this machine; the
benchmarks print their fraction of it beside the fraction of the peak.

`transformer_flops(model, lengths, head_positions, ...)`: the FLOPs a decoder-only model really
multiplies for one batch, from its modules and config:

- every `nn.Linear` of the decoder layers (N_body parameters, LoRA factors counted apart as
  N_lora): forward 2 N per token;
- attention scores and the weighted sum, causal (only the n(n+1)/2 query-key pairs that exist):
  2 matmuls x 2 x n(n+1)/2 x (heads x head_dim) per layer and sequence of n tokens;
- the output head (N_head = vocabulary x hidden) only on `head_positions` (training: the
  supervised positions; a prefill: one per sequence), as eef computes it;
- training with a frozen base: backward of the body 2 N_body per token (input gradients only),
  of the LoRA factors 4 N_lora (input and weight gradients), of attention 2x its forward, of the
  head 2 N_head per head position; activation checkpointing adds one more forward of the decoder
  layers (not of the head, which is outside them).

Padding is not counted (it is wasted work); the flash-attention kernel's own recomputation in its
backward is not counted either. The usual "6 N T" model-FLOP convention is returned beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

DTYPE_NAMES = ("bfloat16", "float32")


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 5, device: str = "cpu") -> dict[str, Any]:
    """Median GFLOP/s of an n x n matmul in `dtype` (and the samples)."""
    import torch  # heavy: benchmarks only

    dt = getattr(torch, dtype)
    a = torch.randn(size, size, device=device).to(dt)
    b = torch.randn(size, size, device=device).to(dt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        samples.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return {"dtype": dtype, "size": size, "gflops": statistics.median(samples), "samples": samples}


def memory_bandwidth(mib: int = 512, repeats: int = 5, device: str = "cpu") -> dict[str, Any]:
    """Median GB/s of `copy_` between two `mib`-MiB buffers, counting the bytes read and written:
    the bound of a decode step, which reads every weight and cached key and value once per token."""
    import torch  # heavy: benchmarks only

    n = mib * 2**20
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dst.copy_(src)
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        samples.append(2 * n / (time.perf_counter() - t0) / 1e9)
    return {"mib": mib, "gb_s": statistics.median(samples), "samples": samples}


def peaks(size: int = 2048, repeats: int = 5, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """The matmul peak of each dtype. A CPU without native bf16 (AVX2 only: eef trains and rolls out in
    float32 there) emulates bf16 at ~1 GFLOP/s, so a 2048 matmul would take ~30 s a sample: its bf16
    peak is measured on 512 x 512 only, marked `native: False`, and fractions of it mean nothing."""
    from eef_tasks.precision import cpu_supports_bf16

    out = {}
    for d in DTYPE_NAMES:
        emulated = d == "bfloat16" and device.startswith("cpu") and not cpu_supports_bf16()
        out[d] = {**matmul_peak(d, min(size, 512) if emulated else size, repeats, device), "native": not emulated}
    return out


def projection_shapes(config: Any) -> list[tuple[int, int]]:
    """(in, out) of each decoder-layer projection of a Llama-style config: q, k, v, o, gate, up, down."""
    h, i = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    return [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h), (h, i), (h, i), (i, h)]


def body_matmul_rate(config: Any, tokens: int, dtype: str = "bfloat16", repeats: int = 5,
                     device: str = "cpu") -> dict[str, Any]:
    """GFLOP/s of the decoder's projection matmuls at `tokens` rows, forward and input-gradient
    shapes (module docstring): the median over `repeats` of total FLOPs / total time of one pass."""
    import torch  # heavy: benchmarks only

    dt = getattr(torch, dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    pairs = []
    for n_in, n_out in projection_shapes(config):
        w = torch.randn(n_in, n_out, device=device).to(dt)
        pairs += [(torch.randn(tokens, n_in, device=device).to(dt), w),
                  (torch.randn(tokens, n_out, device=device).to(dt), w.t().contiguous())]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)
    for a, b in pairs:
        a @ b
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a, b in pairs:
            a @ b
        sync()
        samples.append(flops / (time.perf_counter() - t0) / 1e9)
    return {"dtype": dtype, "tokens": tokens, "shapes": projection_shapes(config),
            "gflops": statistics.median(samples), "samples": samples}


def merge_peaks(*runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One peak per dtype over several measurements of one run: the median of all samples."""
    out = {}
    for d in DTYPE_NAMES:
        samples = [s for r in runs for s in r[d]["samples"]]
        out[d] = {"dtype": d, "size": runs[0][d]["size"], "gflops": statistics.median(samples), "samples": samples}
    return out


def model_sizes(model: Any) -> dict[str, int]:
    """N_body, N_lora, N_head, layers, attention width and key/value width of a (peft-wrapped) causal LM."""
    import torch  # heavy: benchmarks only

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    body = lora = 0
    for name, module in lm.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if "lora_" in name:
            lora += module.in_features * module.out_features
        else:
            body += module.in_features * module.out_features
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return {"n_body": body, "n_lora": lora, "n_head": head.in_features * head.out_features,
            "layers": cfg.num_hidden_layers, "attn_width": cfg.num_attention_heads * head_dim,
            "kv_width": kv_heads * head_dim}


def transformer_flops(sizes: dict[str, int], lengths: list[int], head_positions: int, *,
                      training: bool, checkpointing: bool = False) -> dict[str, float]:
    """FLOPs of one batch of sequences of `lengths` (see the module docstring)."""
    tokens = sum(lengths)
    attn_fwd = sum(2 * 2 * n * (n + 1) / 2 * sizes["attn_width"] for n in lengths) * sizes["layers"]
    body_fwd = 2 * sizes["n_body"] * tokens
    lora_fwd = 2 * sizes["n_lora"] * tokens
    head_fwd = 2 * sizes["n_head"] * head_positions
    attn = attn_fwd * ((3 + checkpointing) if training else 1)
    total = body_fwd + lora_fwd + head_fwd + attn
    if training:
        total += 2 * sizes["n_body"] * tokens + 4 * sizes["n_lora"] * tokens + 2 * sizes["n_head"] * head_positions
        if checkpointing:
            total += body_fwd + lora_fwd
    n_matmul = sizes["n_body"] + sizes["n_head"]
    return {"flops": total, "attention_share": attn / total,
            "model_flops_6nt": 6 * n_matmul * tokens, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--body-tokens", type=int, default=None,
                        help="also the default model's projection matmuls at this many rows (body_matmul_rate)")
    args = parser.parse_args()
    import torch  # heavy: benchmarks only

    if args.threads:
        torch.set_num_threads(args.threads)
    for d, r in peaks(args.size, args.repeats, args.device).items():
        print(f"{d}: {r['gflops']:,.0f} GFLOP/s (median of {args.repeats}, {args.size}x{args.size}, "
              f"{torch.get_num_threads()} thread(s), {args.device})")
    if args.body_tokens:
        from transformers import AutoConfig

        from eef_tasks.models import resolve_model

        config = AutoConfig.from_pretrained(resolve_model(None))
        for d in DTYPE_NAMES:
            r = body_matmul_rate(config, args.body_tokens, d, args.repeats, args.device)
            print(f"{d}: {r['gflops']:,.0f} GFLOP/s on the default model's projections, {args.body_tokens} rows "
                  f"(shapes {r['shapes']})")


if __name__ == "__main__":
    main()

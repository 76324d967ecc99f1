"""How far bf16 LoRA training strays from float32: per-step losses of a few AdamW steps, eager bf16
vs compiled bf16 vs float32, on the same batch from the same start.

    .venv/bin/python benchmarks/lora_numerics.py                       # lr 5e-5, 5e-4 and 2e-3
    .venv/bin/python benchmarks/lora_numerics.py --lrs 5e-5 --modes eager-bf16,fp32 --steps 8

Each (mode, lr) runs in its own subprocess: SmolLM2-135M-Instruct (the local default checkpoint),
LoRA r 16 / alpha 32 / dropout 0 on every linear projection, activation checkpointing on, one torch
thread, eef's loss (`training._summed_loss`: the output head only on supervised positions) on one
fixed batch of 2 x 300 random token ids (seeded; 350 supervised positions), AdamW at the given
learning rate, no warm-up. The loss printed for step k is the one computed before the k-th update,
so step 0 is the starting loss and later steps show how much each update took the loss down.

Modes: `eager-bf16` (`eef train` with `TrainConfig(compile=False)`: bf16 autocast, frozen base
weights in bf16, LoRA weights and AdamW state in float32; the default before stop 26),
`compile-bf16` (the same with the decoder layers compiled, `training.compile_layers`: what `eef
train` does by default on a bf16 CPU since stop 26, `training.compile_default`), `eager-bf16-sum32` (eager bf16, but each LoRA
layer returns the frozen output plus the delta summed in float32, not rounded back to bf16: a check of
the explanation below, not an eef option), `fp32` (the same trainer in float32).

Why the modes can differ (benchmarks/README.md, "bf16 numerics"): at the start of training the
LoRA product B·A·x is tiny next to the frozen layer's output. Eager autocast rounds the frozen
layer's output to bf16 and then adds the delta in bf16: a delta under half a bf16 unit of the
output rounds back to the same value, every time, so the first small updates do not reach the
forward pass. The compiled layers add inside a fused kernel in float32 and round once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MODES = ("eager-bf16", "compile-bf16", "eager-bf16-sum32", "fp32")


def _sum32_forward(self, x, *args, **kwargs):
    """A peft LoRA Linear's forward (no dropout, no variants) that returns base + delta in float32."""
    result = self.base_layer(x, *args, **kwargs)
    if self.disable_adapters or self.merged:
        return result
    deltas = [self.lora_B[a](self.lora_A[a](self.lora_dropout[a](x))) * self.scaling[a]
              for a in self.active_adapters if a in self.lora_A]
    return result.float() + sum(d.float() for d in deltas) if deltas else result


def run_one(mode: str, lr: float, steps: int) -> dict:
    """Train `steps` updates in this process; returns the per-step losses and the wall time."""
    import torch
    from peft import LoraConfig, get_peft_model

    from eef_tasks.models import default_model_path
    from eef_tasks.precision import choose_precision, load_causal_lm
    from eef_tasks.training import _summed_loss, compile_layers, enable_checkpointing, lora_compute

    torch.set_num_threads(1)
    precision = choose_precision("cpu", "float32" if mode == "fp32" else "bfloat16")
    model = load_causal_lm(default_model_path(), precision)
    enable_checkpointing(model)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"), autocast_adapter_dtype=True)
    model.train()
    if mode.startswith("compile"):
        compile_layers(model)
    if mode.endswith("sum32"):
        import types

        from peft.tuners.lora.layer import Linear as LoraLinear

        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.forward = types.MethodType(_sum32_forward, module)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(100, 20000, (2, 300), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 250:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 200:] = ids[0, 200:]
    labels[1, 150:250] = ids[1, 150:250]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    n = int((labels[:, 1:] != -100).sum())
    losses = []
    started = time.perf_counter()
    with lora_compute(model, precision):
        for _ in range(steps):
            with precision.autocast():
                loss = _summed_loss(model, batch, torch.device("cpu")) / n
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
    return {"mode": mode, "lr": lr, "losses": losses, "wall_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--lrs", default="5e-5,5e-4,2e-3", help="comma-separated learning rates")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/out/lora_numerics.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: mode:lr, run in this process
    args = parser.parse_args(argv)
    if args.one:
        mode, lr = args.one.split(":")
        print(json.dumps(run_one(mode, float(lr), args.steps)))
        return 0
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    rows = []
    for lr in (float(x) for x in args.lrs.split(",")):
        for mode in modes:
            out = subprocess.run([sys.executable, __file__, "--one", f"{mode}:{lr}", "--steps", str(args.steps)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return out.returncode
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = {r["lr"]: r for r in rows if r["mode"] == "fp32"}
    print("| lr | mode | losses, step 0 .. %d | last vs fp32 | drop vs fp32's drop | wall s |" % (args.steps - 1))
    print("|---:|---|---|---:|---:|---:|")
    for r in rows:
        ref = reference.get(r["lr"])
        last = drop = "-"
        if ref:
            last = f"{100 * (r['losses'][-1] / ref['losses'][-1] - 1):+.2f} %"
            ref_drop = ref["losses"][0] - ref["losses"][-1]
            drop = f"{(r['losses'][0] - r['losses'][-1]) / ref_drop:.2f}x" if ref_drop else "-"
        print(f"| {r['lr']:g} | {r['mode']} | {' / '.join(f'{x:.4f}' for x in r['losses'])} | {last} | {drop} "
              f"| {r['wall_s']} |")
    from pathlib import Path

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""LoRA training throughput: eef's trainer vs a naive padded SFT loop, on the same agent examples.

    .venv/bin/python benchmarks/bench_train.py                      # CPU: SmolLM2-135M, 1 thread, eef vs fp32
    .venv/bin/python benchmarks/bench_train.py --config llama-8b --examples 256 --micro-batch 4 \\
        --max-length 4096 --steps 16 --warmup 2 --repeats 3      # an H100/H200 (random 8B weights)

Modes (`--modes`, default `eef,fp32`; the first is the reference of the ratios), each one optimizer
step (AdamW) per micro-batch, the same LoRA adapter (r 16, alpha 32, dropout 0.05, every linear
projection but the output head) on the same frozen base model and the same examples:

- **eef** / **fp32** / **eef-no-ckpt**: eef's trainer (below), eager (no torch.compile: `eef train` compiles by
  default on a bf16 CPU since stop 26, which is the **compile** mode), in the precision
  `eef_tasks.precision` chooses (bf16 autocast where the device has bf16 matmuls, checkpointing by
  its rule), in float32 (checkpointing by the same rule), and in the chosen precision without
  checkpointing;
- **compile** / **compile-no-ckpt**: eef's trainer with `TrainConfig(compile=True)`:
  `training.compile_layers` runs torch.compile (inductor, dynamic sequence length) on each decoder
  layer; the compile time falls in the warm-up steps (give `--warmup 2` or more; printed per run as
  "warm-up steps … s", and stored as `warmup_s`);

- eef's trainer: what `eef_tasks.training` does: micro-batches from `length_grouped_batches` (shuffle,
  megabatches of `--megabatch` micro-batches sorted by length, so little padding), `collate`
  (padded to the longest example of the micro-batch) and `_summed_loss` (decoder hidden states,
  then the vocabulary-sized output head only on the positions that have a label), divided by the
  micro-batch's supervised tokens.
- **naive** (in the chosen precision): the usual SFT loop: random micro-batches of the same size, every example padded to the
  longest example of the whole set (fixed-length padding), loss from the model's full logits
  (`model(input_ids, attention_mask, labels=labels).loss`, a mean over the supervised tokens, so
  the gradients equal eef's).

Every repeat picks `--steps` of eef's micro-batches (default: one whole epoch); the naive mode
trains on exactly the examples of those micro-batches, re-shuffled into random micro-batches of the
same size, so both modes do the same useful work and their rates compare directly. `--warmup`
untimed steps come first. Each (mode, repeat) runs in a **fresh subprocess** (the model is loaded
there; loading is not timed), so its peak memory is its own: on CPU the peak resident set size of
the training steps (`VmHWM` reset through /proc/self/clear_refs after set-up; `ru_maxrss` where
that is not possible), on CUDA `torch.cuda.max_memory_allocated` (reset after set-up, so it
includes the weights). Modes alternate (eef, naive, naive, eef, ...) across `--repeats`; the
table shows medians. Before training, each subprocess computes the loss of the shortest example
in its own way (no gradient); the two modes must agree (padding and the head shortcut change no
loss), else the script exits with status 1.

Counted FLOPs (the table's "GFLOP/s (counted)" and its fractions): `peak.transformer_flops` on the
timed micro-batches, eef's useful work whatever the mode (decoder linears and LoRA factors, causal
attention, the output head on the supervised positions, the frozen-base backward, the recomputed
forward when checkpointing; padding not counted), divided by the bf16 and fp32 `torch.matmul`
peaks (2048^2, 1 thread on CPU) that `peak.py` measures in the same run, before and after the
workers. Model FLOPs (the usual convention, also printed): 6 * N * T, N = parameters that take part
in matrix multiplications (all parameters except the input embedding table; a tied table counts
once, as the output head), T = tokens trained on; attention-score FLOPs are left out. "MFU" (CUDA)
uses the non-pad tokens; "MFU padded" every computed position. Peak bf16 dense FLOP/s on CUDA from
the device name (H100 SXM / H200: 989 TFLOP/s), or `--peak-tflops`.

The examples are synthetic but shaped like eef's training chats (`eef_tasks.chat.build_chat`):
ScienceWorld system prompt, an instruction, then 5-20 steps of assistant "Thought/Action" turns
and user "Observation: ..." turns of 100-300 tokens, from a seeded RNG. Half of them are supervised
from step 0, half from a random later step (like eef's recovery examples); a chat longer than
`--max-length` is cut by `eef_tasks.tokenization.encode_chat` (oldest context pairs dropped), and
where even that cannot fit, supervision starts one step later until it does. Tokenized with the
default SmolLM2 tokenizer (also for the random Llama configs: the token counts are what matter).

Models: `--model` (default the local SmolLM2-135M-Instruct checkpoint) or `--config llama-tiny`
(small random Llama, quick CPU runs) or `--config llama-8b` (Llama-3-8B's sizes, random bf16
weights; CUDA only). Precision and checkpointing as `training.training_precision` (per mode).
Results (all samples) go to `--json`
(default benchmarks/out/bench_train.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eef_tasks.chat import build_chat  # noqa: E402
from eef_tasks.tokenization import IGNORE_INDEX, ChatTooLong, EncodedChat, encode_chat  # noqa: E402
from eef_tasks.training import _n_loss_tokens, _summed_loss, collate, length_grouped_batches  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import peak as peak_mod  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
# mode: (loss and batching, dtype, activation checkpointing); "auto"/None = eef_tasks.precision's choice
MODES = {
    "eef": ("eef", "auto", None),
    "fp32": ("eef", "float32", None),
    "eef-no-ckpt": ("eef", "auto", False),
    "naive": ("naive", "auto", None),
    "compile": ("eef", "auto", None),
    "compile-no-ckpt": ("eef", "auto", False),
}
COMPILED = {"compile", "compile-no-ckpt"}  # eef's trainer with training.compile_layers

LLAMA_CONFIGS = {
    # Llama-3-8B's sizes (vocabulary included); weights are random
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                     rms_norm_eps=1e-5, tie_word_embeddings=False),
    # a few million parameters: quick CPU runs (vocabulary of the SmolLM2 tokenizer)
    "llama-tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=688, vocab_size=49152, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, tie_word_embeddings=True),
}

# dense bf16 peak FLOP/s by device name (first match wins)
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12)]

# --- synthetic agent examples -------------------------------------------------------------------

ROOMS = ["kitchen", "foundry", "workshop", "bathroom", "outside", "living room", "bedroom", "greenhouse",
         "art studio", "hallway"]
THINGS = ["counter", "sink", "fridge", "stove", "cupboard", "glass jar", "thermometer", "oven", "table",
          "chair", "lighter", "metal pot", "ceramic cup", "flower pot", "seed jar", "battery", "wire",
          "light bulb", "red wire", "blue box", "orange", "apple", "banana", "soap", "bowl", "freezer",
          "painting", "book shelf", "bed", "closet", "drawer", "mirror", "bathtub", "toilet", "axe",
          "shovel", "bee hive", "fire pit", "fountain", "picnic table", "wood cup", "paper", "tin cup"]
STATES = ["open", "closed", "on", "off", "empty", "containing nothing", "containing water",
          "containing a substance called air"]
ACTIONS = ["open {t}", "close {t}", "activate {t}", "deactivate {t}", "look at {t}", "examine {t}",
           "pick up {t}", "move {t} to {u}", "pour {t} into {u}", "focus on {t}", "teleport to {r}",
           "look around", "wait1", "connect {t} to {u}", "use {t} on {u}"]


def _sentences(rng: random.Random) -> str:
    r, t = rng.choice(ROOMS), rng.choice(THINGS)
    kind = rng.randrange(5)
    if kind == 0:
        return f"This room is called the {r}. In it, you see: the agent, a substance called air, " + ", ".join(
            f"a {rng.choice(THINGS)}" for _ in range(rng.randint(3, 8))) + "."
    if kind == 1:
        return f"A {t} (which is {rng.choice(STATES)}). On the {t} is: a {rng.choice(THINGS)}."
    if kind == 2:
        return f"You also see: A door to the {r} (that is {rng.choice(['open', 'closed'])})."
    if kind == 3:
        return f"The {t} measures a temperature of {rng.randint(-20, 300)} degrees celsius."
    return f"a {t} (containing a {rng.choice(THINGS)}, a {rng.choice(THINGS)} and {rng.choice(STATES)})"


def observation(rng: random.Random, tokenizer, n_tokens: int) -> str:
    parts: list[str] = []
    count = 0
    while count < n_tokens:
        s = _sentences(rng)
        parts.append(s)
        count += len(tokenizer(" " + s, add_special_tokens=False)["input_ids"])
    return " ".join(parts)


def action(rng: random.Random) -> dict:
    act = rng.choice(ACTIONS).format(t=rng.choice(THINGS), u=rng.choice(THINGS), r=rng.choice(ROOMS))
    thought = (f"The {rng.choice(THINGS)} should be in the {rng.choice(ROOMS)}; I need it before I can "
               f"{rng.choice(['heat', 'measure', 'mix', 'move', 'test'])} the {rng.choice(THINGS)}."
               if rng.random() < 0.5 else None)
    return {"thought": thought, "action": act}


def make_examples(tokenizer, n: int, max_length: int, seed: int) -> tuple[list[EncodedChat], dict]:
    """`n` encoded agent chats and how they were made (see the module docstring)."""
    rng = random.Random(seed)
    out: list[EncodedChat] = []
    shifted = 0
    for i in range(n):
        n_steps = rng.randint(5, 20)
        steps = [{**action(rng), "observation": observation(rng, tokenizer, rng.randint(100, 300))}
                 for _ in range(n_steps)]
        instruction = (f"Your task is to find a(n) {rng.choice(['animal', 'plant', 'living thing', 'non-living thing'])}"
                       f" (number {i}). First, focus on the thing. Then, move it to the "
                       f"{rng.choice(['red', 'green', 'blue', 'orange'])} box in the {rng.choice(ROOMS)}.")
        start = 0 if rng.random() < 0.5 else rng.randint(1, n_steps - 1)
        while True:
            try:
                out.append(encode_chat(tokenizer, build_chat("scienceworld", instruction, steps, start), max_length))
                break
            except ChatTooLong:
                if start >= n_steps - 1:
                    raise SystemExit(f"--max-length {max_length} is too short for one agent step; use >= 512")
                start += 1
                shifted += 1
    lengths = [len(e) for e in out]
    info = {
        "n_examples": n, "seed": seed, "max_length": max_length,
        "tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                   "total": sum(lengths)},
        "supervised_tokens": sum(e.n_supervised_tokens for e in out),
        "supervised_share": round(sum(e.n_supervised_tokens for e in out) / sum(lengths), 4),
        "truncated": sum(e.truncated for e in out),
        "supervision_moved_later": shifted,
    }
    return out, info


# --- schedules ----------------------------------------------------------------------------------


def schedules(lengths: list[int], micro_batch: int, megabatch: int, steps: int, warmup: int,
              rng: random.Random) -> dict[str, dict[str, list[list[int]]]]:
    """Warm-up and timed micro-batches of both modes for one repeat (timed: the same examples)."""
    n_micro = math.ceil(len(lengths) / micro_batch)
    epoch = length_grouped_batches(lengths, micro_batch, megabatch, rng)
    if steps < n_micro:  # a random sample of one epoch's micro-batches, in schedule order
        picked = sorted(rng.sample(range(n_micro), steps))
        timed = [epoch[j] for j in picked]
    else:
        timed = list(epoch)
        while len(timed) < steps:
            timed += length_grouped_batches(lengths, micro_batch, megabatch, rng)
        timed = timed[:steps]
    spare = length_grouped_batches(lengths, micro_batch, megabatch, rng)
    eef_warm = [spare[k % len(spare)] for k in range(warmup)]
    naive_timed: list[list[int]] = []
    for start in range(0, len(timed), n_micro):  # re-chunk each epoch's worth on its own
        pool = [i for b in timed[start:start + n_micro] for i in b]
        rng.shuffle(pool)
        sizes = [len(b) for b in timed[start:start + n_micro]]
        sizes.sort(reverse=True)
        pos = 0
        for size in sizes:
            naive_timed.append(pool[pos:pos + size])
            pos += size
    order = list(range(len(lengths)))
    rng.shuffle(order)
    naive_warm = [[order[(k * micro_batch + j) % len(order)] for j in range(min(micro_batch, len(order)))]
                  for k in range(warmup)]
    return {"eef": {"warmup": eef_warm, "timed": timed}, "naive": {"warmup": naive_warm, "timed": naive_timed}}


# --- the worker (one mode, one repeat, its own process) -----------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build_model(spec: dict, precision):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from eef_tasks.precision import load_causal_lm

    if spec["config"]:
        cfg = LlamaConfig(**LLAMA_CONFIGS[spec["config"]], pad_token_id=spec["pad_id"],
                          bos_token_id=1, eos_token_id=2)
        with torch.device(precision.device):
            return AutoModelForCausalLM.from_config(cfg, dtype=precision.torch_dtype,
                                                    attn_implementation=precision.attn_implementation)
    return load_causal_lm(spec["model_path"], precision)


def worker(spec_path: str) -> None:
    import resource

    import torch
    from peft import LoraConfig, get_peft_model

    from eef_tasks.training import (
        TrainConfig,
        _seed_everything,
        compile_layers,
        enable_checkpointing,
        lora_compute,
        training_precision,
    )

    spec = json.loads(Path(spec_path).read_text())
    mode = spec["mode"]
    loss_kind, dtype_name, ckpt = MODES[mode]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    precision, checkpointing = training_precision(TrainConfig(
        device=spec["device"], dtype=dtype_name, gradient_checkpointing=ckpt,
        micro_batch=spec["micro_batch"], max_length=spec["max_length"]))
    device, dtype = torch.device(precision.device), precision.torch_dtype
    cuda = device.type == "cuda"
    examples = [EncodedChat(ids, labels, [], sum(1 for x in labels if x != IGNORE_INDEX))
                for ids, labels in spec["examples"]]
    pad_id, width = spec["pad_id"], max(len(e) for e in examples)

    _seed_everything(spec["seed"])
    model = build_model(spec, precision)
    n_params = sum(p.numel() for p in model.parameters())
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    n_matmul = n_params - (0 if tied else emb.weight.numel())
    if checkpointing:
        enable_checkpointing(model)
    model.config.use_cache = False
    _seed_everything(spec["seed"])
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=spec["lora_dropout"], target_modules="all-linear",
                                             task_type="CAUSAL_LM", bias="none"))
    compiled_layers = compile_layers(model) if mode in COMPILED else 0
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = peak_mod.model_sizes(model)
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=5e-5)

    def naive_batch(idx: list[int]) -> dict:
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            e = examples[i]
            ids[row, :len(e)] = torch.tensor(e.input_ids)
            labels[row, :len(e)] = torch.tensor(e.labels)
            mask[row, :len(e)] = 1
        return {k: v.to(device) for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}

    def loss_of(idx: list[int]):
        """Mean loss per supervised token of the micro-batch, the mode's way."""
        with precision.autocast():
            if loss_kind == "eef":
                chunk = [examples[i] for i in idx]
                return _summed_loss(model, collate(chunk, pad_id), device) / max(1, sum(_n_loss_tokens(e) for e in chunk))
            return model(**naive_batch(idx)).loss

    def step(idx: list[int]) -> float:
        loss = loss_of(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    # the same loss in both modes: the shortest example, no gradient, dropout off (LoRA B is 0 at init)
    model.eval()
    shortest = min(range(len(examples)), key=lambda i: len(examples[i]))
    with torch.no_grad():
        check_loss = float(loss_of([shortest]))
    model.train()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    lora_compute(model, precision).__enter__()  # as the trainer does, for the rest of this process
    t_warm = time.perf_counter()
    for b in spec["warmup"]:
        step(b)
    sync()
    warmup_s = time.perf_counter() - t_warm  # with torch.compile: the compile time is in here
    import gc

    gc.collect()
    rss_setup_kb = _status_kb("VmRSS")
    peak_reset = _reset_peak_rss()
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_s, losses = [], []
    start = time.perf_counter()
    for k, b in enumerate(spec["timed"]):
        t0 = time.perf_counter()
        losses.append(step(b))
        sync()
        step_s.append(time.perf_counter() - t0)
        print(f"  {mode} repeat {spec['repeat']}: step {k + 1}/{len(spec['timed'])} "
              f"{step_s[-1]:.2f} s, loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start

    timed = spec["timed"]
    computed = sum(len(b) * (width if loss_kind == "naive" else max(len(examples[i]) for i in b)) for b in timed)
    # the useful work of eef's way (no padding, head on supervised positions), whatever the mode
    flops = [peak_mod.transformer_flops(sizes, [len(examples[i]) for i in b], sum(_n_loss_tokens(examples[i]) for i in b),
                                        training=True, checkpointing=checkpointing) for b in timed]
    result = {
        "mode": mode, "repeat": spec["repeat"], "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "gradient_checkpointing": checkpointing,
        "threads": torch.get_num_threads(), "compiled_layers": compiled_layers, "n_params": n_params, "n_matmul_params": n_matmul,
        "n_trainable": n_trainable, "steps": len(timed), "warmup": len(spec["warmup"]),
        "examples": sum(len(b) for b in timed),
        "supervised_tokens": sum(examples[i].n_supervised_tokens for b in timed for i in b),
        "tokens": sum(len(examples[i]) for b in timed for i in b),
        "computed_tokens": computed,
        "wall_s": wall, "warmup_s": warmup_s, "step_s": step_s, "losses": losses, "check_loss": check_loss,
        "attn_implementation": precision.attn_implementation, "sizes": sizes,
        "flops": sum(f["flops"] for f in flops), "attention_share": statistics.mean(f["attention_share"] for f in flops),
    }
    if cuda:
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_mem_kind"] = "torch.cuda.max_memory_allocated (weights included)"
    else:
        if peak_reset and _status_kb("VmHWM") is not None:
            peak_kb = _status_kb("VmHWM")
            kind = "peak RSS of the timed steps (VmHWM after clear_refs)"
        else:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kind = "ru_maxrss of the process" + (" (set-up peak or higher)" if peak_kb == maxrss_before_kb else "")
        result["peak_mem_mb"] = peak_kb / 1024
        result["peak_mem_kind"] = kind
        result["rss_setup_mb"] = (rss_setup_kb or 0) / 1024
        result["peak_mem_over_setup_mb"] = (peak_kb - (rss_setup_kb or 0)) / 1024
    Path(spec["out"]).write_text(json.dumps(result))


# --- the driver ---------------------------------------------------------------------------------


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAK_BF16:
        if key.lower() in device_name.lower():
            return value
    return None


def run_one(spec: dict, work: Path) -> dict:
    name = f"{spec['mode']}-{spec['repeat']}"
    spec = {**spec, "out": str(work / f"{name}.out.json")}
    path = work / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(path)], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the {spec['mode']} worker (repeat {spec['repeat']}) failed with status {proc.returncode}")
    return json.loads(Path(spec["out"]).read_text())


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint name or path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--config", choices=sorted(LLAMA_CONFIGS), default=None,
                        help="a random-weight Llama instead of --model (llama-8b needs CUDA)")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--megabatch", type=int, default=16, help="micro-batches per length-grouping megabatch")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per mode (default: one epoch)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 1 on CPU, torch's default on CUDA; 0: torch's default)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s for MFU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", type=lambda v: v.split(","), default=["eef", "fp32"],
                        help=f"comma-separated, first is the reference: {', '.join(MODES)} (default eef,fp32)")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (TrainConfig's default 0.05)")
    parser.add_argument("--json", type=Path, default=OUT / "bench_train.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    import torch
    from transformers import AutoTokenizer

    from eef_tasks.models import resolve_model

    if args.config and args.model:
        parser.error("give --model or --config, not both")
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"unknown mode(s) {', '.join(unknown) or '(none)'}: use {', '.join(MODES)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.config == "llama-8b" and not device.startswith("cuda"):
        raise SystemExit("--config llama-8b (8B parameters, bf16, gradient checkpointing) needs a CUDA GPU with "
                         "~40+ GB (an H100 or H200); on this CPU machine use the default SmolLM2 or --config llama-tiny")
    threads = args.threads if args.threads is not None else (0 if device.startswith("cuda") else 1)
    tokenizer_path = resolve_model(None)
    model_path = None if args.config else resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path or tokenizer_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    t0 = time.perf_counter()
    examples, data = make_examples(tokenizer, args.examples, args.max_length, args.seed)
    data["build_s"] = round(time.perf_counter() - t0, 1)
    lengths = [len(e) for e in examples]
    n_micro = math.ceil(len(examples) / args.micro_batch)
    steps = args.steps or n_micro
    print(f"{len(examples)} examples in {data['build_s']} s: tokens min/median/max {data['tokens']['min']}/"
          f"{data['tokens']['median']}/{data['tokens']['max']}, supervised share {data['supervised_share']:.1%}, "
          f"{data['truncated']} truncated; {steps} timed + {args.warmup} warm-up steps per mode, "
          f"{args.repeats} repeats", flush=True)

    base = {"device": device, "threads": threads, "config": args.config, "model_path": model_path,
            "pad_id": pad_id, "seed": args.seed, "examples": [[e.input_ids, e.labels] for e in examples],
            "micro_batch": args.micro_batch, "max_length": args.max_length, "lora_dropout": args.lora_dropout}
    modes = args.modes
    # the machine's matmul peak, measured in this run (before and after the workers), same threads
    if threads:
        torch.set_num_threads(threads)
    peak_runs = [peak_mod.peaks(device=device)]
    print("matmul peak before: " + ", ".join(f"{d} {r['gflops']:,.0f} GFLOP/s" for d, r in peak_runs[0].items()),
          flush=True)
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for r in range(args.repeats):
            plan = schedules(lengths, args.micro_batch, args.megabatch, steps, args.warmup,
                             random.Random(args.seed * 1000 + r))
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                print(f"repeat {r + 1}/{args.repeats}: {mode}", flush=True)
                res = run_one({**base, **plan[MODES[mode][0]], "mode": mode, "repeat": r}, Path(tmp))
                samples.append(res)
                print(f"  {mode}: {res['wall_s']:.1f} s, {res['tokens'] / res['wall_s']:.1f} "
                      f"non-pad tokens/s, peak {res['peak_mem_mb']:.0f} MB; {res['warmup']} warm-up "
                      f"steps {res['warmup_s']:.1f} s", flush=True)
    peak_runs.append(peak_mod.peaks(device=device))
    print("matmul peak after: " + ", ".join(f"{d} {r['gflops']:,.0f} GFLOP/s" for d, r in peak_runs[1].items()),
          flush=True)
    measured = peak_mod.merge_peaks(*peak_runs)
    bf16_peak, fp32_peak = measured["bfloat16"]["gflops"] * 1e9, measured["float32"]["gflops"] * 1e9
    # the same matmul on the model's own projection shapes, at one micro-batch's rows (peak.body_matmul_rate)
    body_rates = {}
    if not args.config:
        from transformers import AutoConfig

        rows = max(1, round(statistics.median(s["computed_tokens"] / s["steps"] for s in samples)))
        model_config = AutoConfig.from_pretrained(model_path)
        body_rates = {d: peak_mod.body_matmul_rate(model_config, rows, d, device=device) for d in peak_mod.DTYPE_NAMES}
        print(f"projection matmuls at {rows} rows: " + ", ".join(
            f"{d} {r['gflops']:,.0f} GFLOP/s" for d, r in body_rates.items()), flush=True)

    first = samples[0]
    peak = peak_flops(first["device_name"], args.peak_tflops) if first["device"].startswith("cuda") else None
    checks = {s["mode"]: s["check_loss"] for s in samples}
    all_fp32 = all(s["dtype"] == "float32" for s in samples)
    tol = 1e-4 if all_fp32 else 1e-2  # bf16: the 1 % of tests/test_training.py
    ref = checks[modes[0]]
    check_ok = all(abs(v - ref) <= tol * max(1.0, abs(ref)) for v in checks.values())

    summary: dict[str, dict] = {}
    med = statistics.median
    for mode in modes:
        mine = [s for s in samples if s["mode"] == mode]
        row = {
            "dtype": mine[0]["dtype"], "gradient_checkpointing": mine[0]["gradient_checkpointing"],
            "steps": mine[0]["steps"], "examples": med([s["examples"] for s in mine]),
            "supervised_tokens": med([s["supervised_tokens"] for s in mine]),
            "tokens": med([s["tokens"] for s in mine]), "computed_tokens": med([s["computed_tokens"] for s in mine]),
            "padding_share": med([1 - s["tokens"] / s["computed_tokens"] for s in mine]),
            "wall_s": med([s["wall_s"] for s in mine]),
            "supervised_tok_s": med([s["supervised_tokens"] / s["wall_s"] for s in mine]),
            "tok_s": med([s["tokens"] / s["wall_s"] for s in mine]),
            "peak_mem_mb": med([s["peak_mem_mb"] for s in mine]),
            "gflop_s": med([s["flops"] / s["wall_s"] / 1e9 for s in mine]),
            "attention_share": med([s["attention_share"] for s in mine]),
            "model_tflop_s": med([6 * s["n_matmul_params"] * s["tokens"] / s["wall_s"] / 1e12 for s in mine]),
        }
        row["of_bf16_peak"] = row["gflop_s"] * 1e9 / bf16_peak
        row["of_fp32_peak"] = row["gflop_s"] * 1e9 / fp32_peak
        rate = body_rates.get(row["dtype"])
        row["of_body_rate"] = row["gflop_s"] / rate["gflops"] if rate else None
        if peak:
            row["mfu"] = med([6 * s["n_matmul_params"] * s["tokens"] / s["wall_s"] / peak for s in mine])
            row["mfu_padded"] = med([6 * s["n_matmul_params"] * s["computed_tokens"] / s["wall_s"] / peak for s in mine])
        summary[mode] = row
    paired = {
        other: [a["tokens"] / a["wall_s"] / (b["tokens"] / b["wall_s"])
                for a in samples if a["mode"] == modes[0]
                for b in samples if b["mode"] == other and b["repeat"] == a["repeat"]]
        for other in modes[1:]
    }

    what = args.config or Path(model_path).name
    print(f"\nmodel {what} ({first['n_params'] / 1e6:,.1f}M parameters, N = {first['n_matmul_params'] / 1e6:,.1f}M in "
          f"matmuls, LoRA {first['n_trainable'] / 1e6:.2f}M trainable) on {first['device_name']}, "
          f"{first['attn_implementation']} attention, {first['threads']} thread(s); {args.examples} examples, "
          f"micro-batch {args.micro_batch}, max-length {args.max_length}, LoRA dropout {args.lora_dropout}; "
          f"medians of {args.repeats} repeats")
    print(f"matmul peak measured in this run ({measured['bfloat16']['size']}^2, median of "
          f"{len(measured['bfloat16']['samples'])} samples before and after): bf16 {bf16_peak / 1e9:,.0f} GFLOP/s, "
          f"fp32 {fp32_peak / 1e9:,.0f} GFLOP/s\n")
    cols = ["mode", "dtype", "checkpointing", "steps", "supervised tokens", "non-pad tokens", "padding", "wall s",
            "non-pad tok/s", "peak memory MB", "GFLOP/s (counted)", "of bf16 peak", "of fp32 peak",
            "of its dtype's projection-matmul rate", "attention share", "model TFLOP/s (6NT)"]
    if peak:
        cols += ["MFU", "MFU padded"]
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    for mode in modes:
        s = summary[mode]
        cells = [mode, s["dtype"], "on" if s["gradient_checkpointing"] else "off", str(s["steps"]),
                 fmt(s["supervised_tokens"], 0), fmt(s["tokens"], 0), f"{s['padding_share']:.0%}", fmt(s["wall_s"]),
                 fmt(s["tok_s"]), fmt(s["peak_mem_mb"], 0), fmt(s["gflop_s"]), f"{s['of_bf16_peak']:.1%}",
                 f"{s['of_fp32_peak']:.1%}", "-" if s["of_body_rate"] is None else f"{s['of_body_rate']:.1%}",
                 f"{s['attention_share']:.0%}", f"{s['model_tflop_s']:.4f}"]
        if peak:
            cells += [f"{s['mfu']:.1%}", f"{s['mfu_padded']:.1%}"]
        print("| " + " | ".join(cells) + " |")
    for other, ratios in paired.items():
        print(f"\n{modes[0]} / {other} non-pad tokens/s: **{med(ratios):.2f}x** (paired repeats: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}); peak memory {modes[0]} / {other} "
              f"{summary[modes[0]]['peak_mem_mb'] / summary[other]['peak_mem_mb']:.2f}")
    print(f"peak memory: {first['peak_mem_kind']}")
    print("loss check (shortest example, before training): "
          + ", ".join(f"{m} {v:.6f}" for m, v in checks.items()) + f" -> {'same' if check_ok else 'DIFFERENT'}"
          + f" (relative tolerance {tol:g})")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
              "data": data, "peak_flops": peak, "matmul_peak": measured, "projection_matmul_rate": body_rates,
              "flops_formula": "benchmarks/peak.py transformer_flops (counted: frozen-base LoRA training, causal "
                               "attention, head on supervised positions, checkpointing recompute); model TFLOP/s: "
                               "6 * N * T, N = parameters in matmuls, T = non-pad tokens",
              "summary": summary, "paired_ratios": paired,
              "loss_check": {**checks, "same": check_ok, "tolerance": tol}, "samples": samples}
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"raw samples: {args.json}")
    if not check_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

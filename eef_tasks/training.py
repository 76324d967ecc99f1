"""LoRA fine-tuning of the policy on one iteration's training examples (METHOD.md steps 1 and 2.7).

`train_adapter(db, run_id, iteration, method, out_dir)` reads the examples that `eef select` wrote
(`training_examples`), turns each into its chat (`chat.load_chat` with the example's
`loss_from_step`, and NAT's prompt marker for a 'nat' example's `prompt_tag`), tokenizes it with
the base model's own chat template (`tokenization.encode_chat`: loss only on the supervised
assistant turns and their end-of-turn token) and trains a **fresh** LoRA adapter on the base model.

Defaults follow METHOD.md: 6 epochs, learning rate 5e-5, batch 64 (an effective batch reached by
gradient accumulation over micro-batches). The loss of an optimizer step is the mean over all
supervised tokens of its whole effective batch (not a mean of per-micro-batch means), so long and
short examples weigh by their action tokens. Batches are length-grouped: each epoch shuffles the
examples, cuts them into megabatches, sorts each megabatch by length and cuts it into
micro-batches, so little padding is computed; padding never enters the loss. The number format,
attention kernel and activation checkpointing come from `eef_tasks.precision`: bfloat16 matmuls
where the device has them (CUDA, and CPUs with AVX-512 BF16 or AMX), the frozen base weights in
bf16 and the LoRA weights and optimizer state in float32 (autocast), SDPA attention, checkpointing
on CUDA and for CPU micro-batches above 1,024 tokens; float32 elsewhere. On a bf16 CPU the decoder
layers are compiled (torch.compile, `compile_default`): eager bf16 adds each small LoRA delta to an
output already rounded to bf16, so the first updates of a small learning rate vanish from the forward
pass, while the compiled layers add before rounding. Everything random (LoRA
init, dropout, shuffling) follows `seed`: on one machine the same seed gives the same adapter weights.

**Full fine-tuning** (`finetune='full'`, issue 11's option for the 135M model) trains every weight
instead: float32 master weights and AdamW state, the matmuls in bf16 under autocast where the device
has it, the same loss, batches and compile; its folder is a whole model checkpoint
(`models.is_full_checkpoint`), which the hf engine and `load_policy` load as the model. The vllm
engine and DPO work on LoRA adapters only and refuse it with one line.

The adapter folder (`save_pretrained`, plus the tokenizer and `eef-train.json` with the config,
base model, example keys, token counts and losses) is written to a temporary folder beside
`out_dir` and renamed into place, so a reader never sees half an adapter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from eef_tasks.chat import Turn, load_chat
from eef_tasks.errors import UserError
from eef_tasks.precision import Precision, checkpointing_default, choose_precision, load_causal_lm
from eef_tasks.selection import check_request
from eef_tasks.store import reader
from eef_tasks.tokenization import IGNORE_INDEX, ChatTooLong, EncodedChat, encode_chat

logger = logging.getLogger(__name__)

TRAIN_FILE = "eef-train.json"
DEFAULT_ADAPTERS_DIR = Path("data/adapters")


class TrainingError(UserError):
    """Training cannot start or its output cannot be written; the message says why."""


class TrainConfig(BaseModel):
    """Hyper-parameters of one adapter; defaults from METHOD.md (6 epochs, lr 5e-5, batch 64)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=6, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=64, ge=1, description="effective batch (examples per optimizer step)")
    micro_batch: int = Field(default=4, ge=1, description="examples per forward/backward pass")
    max_length: int = Field(default=4096, ge=16, description="tokens per example; see tokenization")
    megabatch: int = Field(default=16, ge=1, description="micro-batches per length-grouping megabatch")
    finetune: Literal["lora", "full"] = Field(
        default="lora", description="lora: a fresh LoRA adapter on the frozen base (lora_* fields); full: every "
        "weight of the base model trained (float32 master weights and AdamW state, matmuls in `dtype` under "
        "autocast); the folder is then a whole model checkpoint that the hf engine loads as the model")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        default="all-linear", description="peft target_modules; 'all-linear': every linear projection but the output head"
    )
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 where the device multiplies it natively (precision.auto_dtype)")
    gradient_checkpointing: bool | None = Field(
        default=None, description="None: on with CUDA and for CPU micro-batches above 1,024 tokens")
    device: str | None = Field(default=None, description="None: cuda when available, else cpu")
    compile: bool | None = Field(
        default=None, description="torch.compile each decoder layer (compile_layers). None: on for bf16 "
        "training on CPU where a C++ compiler is found (compile_default), else off. Measured on CPU: "
        "~1.3-1.4x tokens/s, 0.65x peak memory, and in bf16 it tracks float32 training where eager bf16 "
        "loses the first small updates (benchmarks/README.md, benchmarks/lora_numerics.py)")
    sharding: Literal["auto", "none", "fsdp"] = Field(
        default="auto", description="data parallel (several processes): none: each process holds the whole model "
        "and the LoRA gradients are summed (DDP-style); fsdp: each decoder layer's weights are sharded over the "
        "processes (torch FSDP2 fully_shard), for a base model that does not fit one device (LoRA only; "
        "compile off); auto: fsdp under `accelerate launch` with an FSDP config (ACCELERATE_USE_FSDP), else none")
    too_long: Literal["skip", "error"] = Field(
        default="skip", description="an example whose supervised turns cannot fit max_length: skip it "
        "(counted in n_skipped and listed in the adapter's record) or stop training with its name")

    @property
    def accumulation_steps(self) -> int:
        return max(1, math.ceil(self.batch_size / self.micro_batch))


@dataclass(frozen=True)
class ExampleKey:
    """Which training_examples row a chat comes from."""

    run_id: str
    iteration: int
    method: str
    traj_id: str
    loss_from_step: int
    state_kind: str
    state_traj_id: str | None
    state_step: int
    task_id: str
    prompt_tag: str | None = None  # NAT's marker ('positive' | 'negative'), method 'nat' only


@dataclass(frozen=True)
class AdapterInfo:
    path: str
    base_model: str
    run_id: str
    iteration: int
    method: str
    n_examples: int
    n_tokens: int
    n_supervised_tokens: int
    n_truncated: int
    n_optimizer_steps: int
    final_loss: float | None
    wall_s: float
    n_skipped: int = 0  # examples left out: too long for max_length, or nothing supervised


def load_training_chats(
    db: str | Path | duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str
) -> list[tuple[ExampleKey, list[Turn]]]:
    """The chat of every selected example of (run, iteration, method), in a canonical order."""
    check_request(iteration, method)
    if isinstance(db, duckdb.DuckDBPyConnection):
        return _load_chats(db, run_id, iteration, method)
    with reader(db) as con:
        return _load_chats(con, run_id, iteration, method)


def _load_chats(con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str):
    rows = con.execute(
        """SELECT run_id, iteration, method, traj_id, loss_from_step, state_kind, state_traj_id,
                  state_step, task_id, prompt_tag
           FROM training_examples
           WHERE run_id = $run_id AND iteration = $iteration AND method = $method
           ORDER BY task_id, state_kind, state_traj_id NULLS FIRST, state_step, traj_id""",
        {"run_id": run_id, "iteration": iteration, "method": method},
    ).fetchall()
    if not rows:
        raise TrainingError(
            f"no training examples for run {run_id!r}, iteration {iteration}, method {method!r}: "
            f"run `eef select --run {run_id} --iteration {iteration} --method {method}` first"
        )
    out = []
    for row in rows:
        key = ExampleKey(*row)
        out.append((key, load_chat(con, key.traj_id, key.loss_from_step, key.prompt_tag)))
    return out


# --- batching -----------------------------------------------------------------------------------


def length_grouped_batches(lengths: list[int], micro_batch: int, megabatch: int, rng: random.Random) -> list[list[int]]:
    """Micro-batches of example indices: shuffled, then sorted by length within each megabatch."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = micro_batch * megabatch
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        mega = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches.extend(mega[j : j + micro_batch] for j in range(0, len(mega), micro_batch))
    return batches


def collate(examples: list[EncodedChat], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padding has attention 0 and label IGNORE_INDEX."""
    import torch

    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _n_loss_tokens(e: EncodedChat) -> int:
    """Supervised tokens that get a loss after the causal shift (the first token has no prediction)."""
    return sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)


def _causal_lm_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a causal LM, through a peft wrapper; None for unusual models."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
    return (decoder, head) if decoder is not None and head is not None else None


def _summed_loss(model: Any, batch: dict[str, Any], device: Any):
    """Summed cross-entropy over the supervised tokens. The output head (vocabulary-sized) runs
    only on the positions that have a label: actions are a small share of an agent's context, so
    this saves most of the head's compute and the memory of full [batch, length, vocab] logits."""
    import torch

    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    parts = _causal_lm_parts(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1, :]
        shift_labels = labels[:, 1:]
        keep = shift_labels != IGNORE_INDEX
        logits = head(hidden[keep]).float()
        return torch.nn.functional.cross_entropy(logits, shift_labels[keep], reduction="sum")
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


def mean_loss(model: Any, examples: list[EncodedChat], pad_id: int, micro_batch: int = 4,
              precision: Precision | None = None) -> float:
    """Mean loss per supervised token of `examples` (no gradient, dropout off), computed in
    `precision`'s autocast when given (else in the model's own dtype)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), (precision.autocast() if precision else contextlib.nullcontext()):
        for start in range(0, len(examples), micro_batch):
            chunk = examples[start : start + micro_batch]
            total += float(_summed_loss(model, collate(chunk, pad_id), device))
            n += sum(_n_loss_tokens(e) for e in chunk)
    model.train(was_training)
    return total / max(n, 1)


# --- model set-up -------------------------------------------------------------------------------


def training_precision(config: TrainConfig) -> tuple[Precision, bool]:
    """(precision, activation checkpointing) of a training run with `config`."""
    precision = choose_precision(config.device, config.dtype)
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = checkpointing_default(precision.device, config.micro_batch * config.max_length)
    return precision, checkpointing


def compile_default(precision: Precision) -> bool:
    """Whether a training run whose `compile` is None compiles its decoder layers: for bf16 on CPU
    (measured there: faster, leaner, closer to float32; benchmarks/README.md), where inductor finds
    the C++ compiler and Python headers it builds its kernels with (`CXX`, else c++ / g++ / clang++
    on PATH; Python.h): without them the first step would fail. Off on CUDA (not measured there yet)
    and in float32 (no rounding to fix; the speed-up was measured in bf16 only)."""
    import sysconfig

    if not precision.device.startswith("cpu") or precision.dtype != "bfloat16":
        return False
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return False
    compiler = os.environ.get("CXX", "").split()
    return any(shutil.which(c) for c in ([compiler[0]] if compiler else []) + ["c++", "g++", "clang++"])


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False


def compile_layers(model: Any) -> int:
    """Compile each decoder layer with torch.compile (inductor; "regional" compilation: one graph
    per layer class, reused by every layer, dynamic in the sequence length), so the element-wise
    work around the matmuls (RMSNorm, rotary, SiLU-gating, the LoRA adds) is fused. Returns the
    number of layers compiled (0 for a model without `model.layers`)."""
    parts = _causal_lm_parts(model)
    layers = getattr(parts[0], "layers", None) if parts else None
    if layers is None:
        return 0
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def lora_compute(model: Any, precision: Precision):
    """A context in which the LoRA layers take their bf16 input as it is: by default peft casts it
    to the float32 of the LoRA weights (and dropout runs on that copy) before autocast casts it back;
    skipping both round trips made a bf16 CPU training step ~6 % faster, with the same loss."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model, active=precision.dtype != "float32")


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _scheduler(optimizer: Any, config: TrainConfig, total_steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = int(round(config.warmup_ratio * total_steps))
    if config.lr_scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = get_cosine_schedule_with_warmup if config.lr_scheduler == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup, total_steps)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"),
        disable=not enabled, transient=True,
    )


# --- training -----------------------------------------------------------------------------------


def train_adapter(
    db: str | Path | duckdb.DuckDBPyConnection,
    run_id: str,
    iteration: int,
    method: str,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    base_model: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> AdapterInfo:
    """Train a fresh LoRA adapter on (run, iteration, method)'s examples and save it in `out_dir`
    (config.finetune 'full': the whole model, saved there as a checkpoint)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from eef_tasks.models import quiet_peft, resolve_model

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise TrainingError(f"{out_dir} exists already: pass overwrite=True to replace it")
    started = time.monotonic()
    chats = load_training_chats(db, run_id, iteration, method)
    base = resolve_model(base_model)

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded: list[EncodedChat] = []
    keys: list[ExampleKey] = []
    skipped: list[dict] = []
    for key, turns in chats:
        try:
            e = encode_chat(tokenizer, turns, config.max_length)
        except ChatTooLong as exc:
            if config.too_long == "error":
                raise TrainingError(f"example {key.traj_id} (from step {key.loss_from_step}): {exc}") from exc
            skipped.append({**asdict(key), "why": f"longer than max_length={config.max_length}"})
            continue
        except UserError as exc:
            raise TrainingError(f"example {key.traj_id} (from step {key.loss_from_step}): {exc}") from exc
        if _n_loss_tokens(e) == 0:
            skipped.append({**asdict(key), "why": "no supervised tokens"})
            continue
        encoded.append(e)
        keys.append(key)
    if not encoded:
        raise TrainingError(f"none of the {len(chats)} examples has a supervised action to train on"
                            f" within max_length={config.max_length}")
    n_long = sum(x["why"].startswith("longer") for x in skipped)
    if n_long:
        logger.warning("%s %s it%d: %d of %d examples skipped, longer than max_length=%d (listed in the "
                       "adapter's eef-train.json; too_long='error' stops instead)", run_id, method, iteration,
                       n_long, len(chats), config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0  # padding is masked out of attention and loss, any id does

    rank, world = init_data_parallel(config.device)
    full = config.finetune == "full"
    fsdp = world > 1 and resolve_sharding(config) == "fsdp"
    if fsdp and full:
        raise TrainingError("sharding='fsdp' trains LoRA adapters only: full fine-tuning under FSDP is not supported yet")
    if fsdp and config.compile:
        raise TrainingError("sharding='fsdp' trains without torch.compile: set compile to false (or leave it unset)")
    precision, checkpointing = training_precision(config)
    device = torch.device(precision.device)
    _seed_everything(config.seed)
    # full fine-tuning: the weights themselves are trained, so they stay float32 (master weights) and
    # only the matmuls run in precision.dtype (autocast); a LoRA run keeps its frozen base in that dtype
    # FSDP: loaded into host memory, each layer's shard then moved to the device (shard_layers), so a
    # base model larger than one GPU is never whole on one
    model = load_causal_lm(base, Precision(precision.device, "float32") if full
                           else replace(precision, device="cpu") if fsdp else precision)
    if checkpointing:
        enable_checkpointing(model)
    if not full:
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, task_type="CAUSAL_LM", bias="none",
        )
        _seed_everything(config.seed)  # the LoRA initialisation depends only on the seed
        with quiet_peft():
            # autocast_adapter_dtype (peft's default, made explicit): LoRA weights in float32 on a bf16 base
            model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    model.train()
    if any(p.dtype != torch.float32 for p in model.parameters() if p.requires_grad):
        raise TrainingError("the trained weights are not float32" + ("" if full else ": this peft version does not upcast the LoRA weights"))
    compiled = config.compile if config.compile is not None else (not fsdp and compile_default(precision))
    compiled_layers = compile_layers(model) if compiled else 0
    sharded = shard_layers(model, device) if fsdp else []
    sharded_layers = len(sharded)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lengths = [len(e) for e in encoded]
    n_micro = math.ceil(len(encoded) / config.micro_batch)
    steps_per_epoch = math.ceil(n_micro / config.accumulation_steps)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = _scheduler(optimizer, config, total_steps)

    logger.info("%s %s it%d: %d examples, %d optimizer steps, %s on %s%s%s%s%s", run_id, method, iteration,
                len(encoded), total_steps, precision.dtype, precision.device, ", checkpointing" if checkpointing else "",
                f", {compiled_layers} compiled layers" if compiled_layers else "",
                f", {sharded_layers} layers sharded (FSDP)" if sharded_layers else "",
                f", rank {rank} of {world}" if world > 1 else "")
    rng = random.Random(config.seed)
    losses: list[float] = []
    step = 0
    with _progress(progress and rank == 0) as bar, (contextlib.nullcontext() if full else lora_compute(model, precision)):
        task = bar.add_task(f"{run_id} {method} it{iteration}", total=total_steps, loss="-")
        for epoch in range(config.epochs):
            batches = length_grouped_batches(lengths, config.micro_batch, config.megabatch, rng)
            for g in range(0, len(batches), config.accumulation_steps):
                if step >= total_steps:
                    break
                group = batches[g : g + config.accumulation_steps]
                n_tokens = sum(_n_loss_tokens(encoded[i]) for b in group for i in b)
                total = 0.0
                mine = group[rank::world]  # data parallel: each process its share of the step's micro-batches
                if fsdp:
                    # every rank runs as many passes as the busiest one (FSDP's all-gathers are collective);
                    # a rank short of micro-batches repeats one with its loss multiplied by 0
                    passes = [(b, 1.0) for b in mine] + [(group[0], 0.0)] * (math.ceil(len(group) / world) - len(mine))
                else:
                    passes = [(b, 1.0) for b in mine]
                for k, (b, weight) in enumerate(passes):
                    for layer in sharded:  # FSDP: gradients reduce-scattered once, after the step's last pass
                        layer.set_requires_gradient_sync(k == len(passes) - 1)
                    with precision.autocast():
                        loss = _summed_loss(model, collate([encoded[i] for i in b], pad_id), device) / n_tokens * weight
                    # FSDP averages the processes' gradients: scaled by the process count, the mean is their sum
                    (loss * world if fsdp else loss).backward()
                    total += float(loss.detach())
                if fsdp:  # the gradients were summed by FSDP's reduce-scatter: only the loss is left
                    total = _sum_loss_across_processes(total, device)
                elif world > 1:
                    total = _sum_across_processes(params, total, device)
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total)
                step += 1
                bar.update(task, advance=1, loss=f"{total:.4f}", description=f"{run_id} {method} it{iteration} epoch {epoch + 1}")
                logger.debug("step %d epoch %d loss %.4f", step, epoch + 1, total)

    info = AdapterInfo(
        path=str(out_dir),
        base_model=str(base),
        run_id=run_id,
        iteration=iteration,
        method=method,
        n_examples=len(encoded),
        n_tokens=sum(lengths),
        n_supervised_tokens=sum(e.n_supervised_tokens for e in encoded),
        n_truncated=sum(e.truncated for e in encoded),
        n_optimizer_steps=step,
        final_loss=losses[-1] if losses else None,
        wall_s=round(time.monotonic() - started, 3),
        n_skipped=len(skipped),
    )
    record = {
        **asdict(info),
        "config": config.model_dump(),
        **precision.record(),
        "trainable_dtype": "float32",
        "finetune": config.finetune,
        "trainable_parameters": sum(p.numel() for p in params),
        "gradient_checkpointing": checkpointing,
        "compiled_layers": compiled_layers,
        "sharded_layers": sharded_layers,
        "losses": losses,
        "examples": [
            {**asdict(k), "n_tokens": len(e), "n_supervised_tokens": e.n_supervised_tokens,
             "truncated": e.truncated, "n_dropped_turns": e.n_dropped_turns}
            for k, e in zip(keys, encoded)
        ],
        "skipped": skipped,
    }
    if world > 1:
        record["data_parallel"] = {"processes": world, "backend": torch.distributed.get_backend(),
                                   **({"sharding": "fsdp"} if fsdp else {})}
    state_dict = gathered_trainable_state(model) if fsdp else None  # collective: every rank takes part
    if rank == 0:
        write_adapter(out_dir, model, tokenizer, record, overwrite=overwrite, state_dict=state_dict)
    if world > 1:
        torch.distributed.barrier()  # the adapter is on disk before any process returns
    return info


def init_data_parallel(device: str | None = None) -> tuple[int, int]:
    """(rank, world size). Under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) joins the
    process group: gloo on CPU, NCCL on CUDA, each process on its own GPU (LOCAL_RANK)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    cuda = torch.cuda.is_available() and device in (None, "cuda") or (device or "").startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def resolve_sharding(config: TrainConfig) -> str:
    """'none' or 'fsdp': config.sharding, with 'auto' read off `accelerate launch`'s environment."""
    if config.sharding != "auto":
        return config.sharding
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "none"


def shard_layers(model: Any, device: Any) -> list[Any]:
    """Shard each decoder layer's weights over the processes (FSDP2 `fully_shard`, one group per
    layer): a layer's weights are all-gathered for its forward and backward and freed after, and
    its LoRA gradients reduce-scattered (FSDP's mean over the processes; train_adapter scales each
    process's loss by their count, so the mean is the sum, as the single-process step's gradient
    is: gloo has no pre-multiplied sum for `set_gradient_divide_factor(1)`). The embeddings, final
    norm and head stay whole on every process (frozen under LoRA): they are moved to `device`
    first, ties kept, and each layer's shard goes there as it is sharded (the mesh's device: this
    process's GPU, or the CPU). Returns the sharded layers."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    parts = _causal_lm_parts(model)
    layers = getattr(parts[0], "layers", None) if parts else None
    if not layers:
        raise TrainingError("sharding='fsdp' needs a causal LM with decoder layers (model.layers); this model has none")
    in_layers = {id(t) for layer in layers for t in (*layer.parameters(), *layer.buffers())}
    moved: dict[int, Any] = {}  # one new tensor per old one: tied weights stay tied
    for module in model.modules():
        for table, make in ((module._parameters, lambda t: torch.nn.Parameter(t.data.to(device), t.requires_grad)),
                            (module._buffers, lambda t: t.to(device))):
            for name, t in list(table.items()):
                if t is not None and id(t) not in in_layers:
                    table[name] = moved.setdefault(id(t), make(t))
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    return list(layers)


def gathered_trainable_state(model: Any) -> dict[str, Any]:
    """The trainable weights, whole, on process 0 (empty elsewhere): what an adapter folder holds."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in full.items() if k in trainable}


def _sum_loss_across_processes(total: float, device: Any) -> float:
    import torch
    import torch.distributed as dist

    loss = torch.tensor([total], dtype=torch.float64, device=device)
    dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    return float(loss.item())


def _sum_across_processes(params: list[Any], total: float, device: Any) -> float:
    """Sum the trainable parameters' gradients (and the step's loss) over the processes: each
    process holds the sum over its micro-batches, already divided by the step's token count, so
    the sum is exactly the single-process gradient of the same step."""
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:  # this process had no micro-batch in this step
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
    return _sum_loss_across_processes(total, device)


def write_adapter(out_dir: Path, model: Any, tokenizer: Any, record: dict, *, overwrite: bool,
                  state_dict: dict[str, Any] | None = None) -> None:
    """Save an adapter folder (adapter, tokenizer, eef-train.json `record`) atomically: written to a
    temporary folder beside `out_dir` and renamed into place. `state_dict`: the weights to save
    when the model's own are sharded (FSDP)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    old = None
    try:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        tokenizer.save_pretrained(tmp)
        (tmp / TRAIN_FILE).write_text(json.dumps(record, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            if not overwrite:
                raise TrainingError(f"{out_dir} appeared while training: pass overwrite=True to replace it")
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_train_record(adapter_dir: str | Path) -> dict | None:
    """The eef-train.json of an adapter folder, or None when there is no finished adapter there."""
    path = Path(adapter_dir) / TRAIN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def default_adapter_dir(run_id: str, iteration: int, method: str, root: str | Path = DEFAULT_ADAPTERS_DIR) -> Path:
    """data/adapters/<run>/<method>-it<iteration>"""
    return Path(root) / run_id / f"{method}-it{iteration}"


def load_policy(base_model: str | Path | None, adapter_dir: str | Path, *, device: str | None = None,
                dtype: str = "auto", merge: bool = False):
    """(model, tokenizer) of the base model with the adapter applied, in eval mode.

    `base_model` None means the base recorded in the adapter's eef-train.json (else the default
    model). With `merge` the LoRA weights are folded into the base weights (faster generation). A
    full fine-tuned folder (finetune='full') is loaded as the model itself.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from eef_tasks.models import is_full_checkpoint, quiet_peft, resolve_model

    adapter_dir = Path(adapter_dir)
    if is_full_checkpoint(adapter_dir):  # finetune='full': the folder is the model
        model = load_causal_lm(adapter_dir, choose_precision(device, dtype))
        return model.eval(), AutoTokenizer.from_pretrained(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TrainingError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json) nor a model checkpoint")
    if base_model is None:
        record = read_train_record(adapter_dir)
        base_model = record["base_model"] if record else None
    base = resolve_model(base_model)
    precision = choose_precision(device, dtype)
    tok_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    model = load_causal_lm(base, precision)
    with quiet_peft():
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
    model.to(precision.device)
    model.eval()
    return model, tokenizer


__all__ = [
    "AdapterInfo", "ExampleKey", "TRAIN_FILE", "TrainConfig", "TrainingError", "collate", "compile_default",
    "compile_layers", "default_adapter_dir", "enable_checkpointing", "length_grouped_batches", "load_policy",
    "lora_compute", "load_training_chats", "mean_loss", "read_train_record", "train_adapter", "training_precision", "write_adapter",
]

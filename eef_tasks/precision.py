"""How the project's models compute: the device, the number format of weights and matmuls, the
attention kernel and whether training recomputes activations. One home for these choices, so that
training (`eef_tasks.training`), the hf rollout engine and the benchmarks run alike.

- **bfloat16 where the hardware multiplies it natively**, float32 elsewhere: on CUDA when
  `torch.cuda.is_bf16_supported()`, on CPU when the processor has bf16 instructions (the Linux
  cpuinfo flags `avx512_bf16` or `amx_bf16`; on this project's AMD EPYC a bf16 matmul is ~4x a
  float32 one). `$EEF_DTYPE` (float32, bfloat16, float16) overrides the automatic choice.
- Training keeps what it learns in float32: the frozen base weights are stored in the compute
  dtype, peft keeps the LoRA weights (and so AdamW's state) in float32, and `Precision.autocast()`
  runs the matmuls in bf16.
- Attention is PyTorch's SDPA (`attn_implementation="sdpa"`): on CPU it takes the fused
  flash-attention kernel also with a padding mask, so no [batch, heads, length, length] tensor is
  kept for the backward pass.
- Activation checkpointing (one decoder layer at a time) is on with CUDA and, on CPU, when a
  micro-batch may hold more than `CHECKPOINT_ABOVE_TOKENS` tokens: SmolLM2-135M keeps ~1.7 MB of
  activations per token without it (a 4 x 1,024-token micro-batch peaked at 9.3 GB RSS in bf16,
  2.3 GB with it), for ~1/3 more compute.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eef_tasks.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ATTENTION = "sdpa"
CHECKPOINT_ABOVE_TOKENS = 1024


class PrecisionError(UserError):
    """An unknown dtype name; the message lists the known ones."""


@dataclass(frozen=True)
class Precision:
    """What one model load computes with (see the module docstring)."""

    device: str
    dtype: str  # of the frozen weights and the matmuls
    attn_implementation: str = ATTENTION

    @property
    def torch_dtype(self) -> Any:
        import torch  # heavy: only callers that load a model need it

        return getattr(torch, self.dtype)

    def autocast(self) -> Any:
        """Matmuls in `dtype` for float32 tensors (the LoRA weights) too; a no-op in float32."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        import torch  # heavy: see torch_dtype

        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.torch_dtype)

    def record(self) -> dict[str, str]:
        """What to store beside results made with it."""
        return {"device": self.device, "dtype": self.dtype, "attn_implementation": self.attn_implementation}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first processor listed; empty where there is no cpuinfo."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_supports_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags(cpuinfo) & BF16_CPU_FLAGS)


def default_device() -> str:
    import torch  # heavy: see Precision.torch_dtype

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise PrecisionError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)} (or 'auto')")
    return name


def auto_dtype(device: str) -> str:
    """bfloat16 where the device multiplies it natively, else float32; $EEF_DTYPE overrides."""
    wanted = os.environ.get("EEF_DTYPE", "").strip()
    if wanted and wanted != "auto":
        return check_dtype(wanted)
    if device.startswith("cuda"):
        import torch  # heavy: see Precision.torch_dtype

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_supports_bf16() else "float32"


def choose_precision(device: str | None = None, dtype: str = "auto") -> Precision:
    """The precision of a model load on `device` (default: cuda when available, else cpu)."""
    device = str(device or default_device())
    return Precision(device=device, dtype=auto_dtype(device) if dtype == "auto" else check_dtype(dtype))


def checkpointing_default(device: str, micro_batch_tokens: int) -> bool:
    """Whether training should recompute activations (see the module docstring)."""
    return device.startswith("cuda") or micro_batch_tokens > CHECKPOINT_ABOVE_TOKENS


def load_causal_lm(path: str | Path, precision: Precision) -> Any:
    """A transformers causal LM from a checkpoint, its weights in `precision.dtype`, SDPA attention,
    on `precision.device`."""
    from transformers import AutoModelForCausalLM  # heavy: only model phases load one

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=precision.torch_dtype, attn_implementation=precision.attn_implementation
    )
    return model.to(precision.device)


__all__ = [
    "ATTENTION", "CHECKPOINT_ABOVE_TOKENS", "DTYPES", "Precision", "PrecisionError", "auto_dtype",
    "check_dtype", "checkpointing_default", "choose_precision", "cpu_flags", "cpu_supports_bf16",
    "default_device", "load_causal_lm",
]

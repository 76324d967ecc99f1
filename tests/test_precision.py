"""eef_tasks.precision: bf16 detection from the CPU's flags, the $EEF_DTYPE override, clear errors for
unknown dtypes, the checkpointing rule, and a real model load in the chosen dtype with SDPA."""

from __future__ import annotations

import pytest

from eef_tasks import precision
from eef_tasks.precision import (
    PrecisionError,
    checkpointing_default,
    choose_precision,
    cpu_flags,
    cpu_supports_bf16,
)

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni amx_tile\n\nprocessor\t: 1\n"
OLD_XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
AMX_ONLY = "flags\t\t: fpu avx512f amx_bf16 amx_tile\n"


def test_bf16_is_detected_from_cpuinfo_flags(tmp_path) -> None:
    for text, expected in ((EPYC, True), (OLD_XEON, False), (AMX_ONLY, True), ("no flags here\n", False)):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        assert cpu_supports_bf16(path) is expected, text
    (tmp_path / "epyc").write_text(EPYC)
    assert {"avx512_bf16", "avx512_vnni", "amx_tile"} <= cpu_flags(tmp_path / "epyc")
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_supports_bf16(tmp_path / "missing") is False


def test_cpu_dtype_follows_the_flags_and_eef_dtype_overrides(monkeypatch) -> None:
    monkeypatch.delenv("EEF_DTYPE", raising=False)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: True)
    assert choose_precision("cpu").dtype == "bfloat16"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: False)
    assert choose_precision("cpu").dtype == "float32"
    monkeypatch.setenv("EEF_DTYPE", "bfloat16")
    assert choose_precision("cpu").dtype == "bfloat16"
    assert choose_precision("cpu", "float32").dtype == "float32"  # an explicit dtype wins
    monkeypatch.setenv("EEF_DTYPE", "fp8")
    with pytest.raises(PrecisionError, match="unknown dtype 'fp8': use one of float32, bfloat16, float16"):
        choose_precision("cpu")
    with pytest.raises(PrecisionError, match="unknown dtype 'half'"):
        choose_precision("cpu", "half")


def test_checkpointing_rule() -> None:
    assert checkpointing_default("cuda", 64) is True
    assert checkpointing_default("cpu", 4 * 256) is False
    assert checkpointing_default("cpu", 4 * 1024) is True


def test_real_model_loads_in_the_chosen_dtype_with_sdpa() -> None:
    torch = pytest.importorskip("torch")
    from eef_tasks import models

    try:
        base = models.default_model_path()
    except models.ModelError as exc:  # pragma: no cover - depends on the installation
        pytest.skip(str(exc))
    chosen = choose_precision("cpu", "bfloat16")
    model = precision.load_causal_lm(base, chosen)
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    with chosen.autocast():  # float32 inputs to a linear run in bf16 under autocast
        out = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert out.dtype == torch.bfloat16
    assert choose_precision("cpu", "float32").autocast().__enter__() is None  # a no-op context

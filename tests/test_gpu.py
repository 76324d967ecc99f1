"""GPU paths (marked `gpu`; skipped without CUDA): bf16 + gradient checkpointing training with float32
LoRA weights, and the hf engine (bf16 by default, SDPA) whose cached batched generation equals plain
greedy generate on the device, in float32 and in bf16."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_training_on_cuda_uses_bf16_and_checkpointing(tmp_path) -> None:
    from eef_tasks import store
    from eef_tasks.records import StepRecord, TrajectoryRecord, write_trajectories
    from eef_tasks.selection import select_examples
    from eef_tasks.training import TrainConfig, read_train_record, train_adapter

    db = tmp_path / "eef.duckdb"
    with store.writer(db) as con:
        write_trajectories(con, [TrajectoryRecord(
            task_id=f"t{i}", env="toy", split="train", instruction="Your task is to boil water.",
            source="expert", expert="gold", reward=1.0,
            steps=[StepRecord(action=a, observation=f"You did {a}.") for a in ("go to kitchen", "activate stove")],
        ) for i in range(4)])
        select_examples(con, "g", 0, "bc")
    out = tmp_path / "adapter"
    info = train_adapter(db, "g", 0, "bc", out, TrainConfig(epochs=1, batch_size=4, max_length=256), progress=False)
    record = read_train_record(out)
    assert record["device"].startswith("cuda") and record["dtype"] == "bfloat16"
    assert record["gradient_checkpointing"] is True and info.n_optimizer_steps == 1
    assert record["attn_implementation"] == "sdpa" and record["trainable_dtype"] == "float32"


def test_hf_engine_on_cuda_defaults_to_bf16_with_sdpa() -> None:
    from eef_tasks.engines.hf import HFEngine

    engine = HFEngine(None, device="cuda")
    assert engine.model.dtype == torch.bfloat16 and engine.precision.attn_implementation == "sdpa"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_engine_on_cuda_matches_plain_generate(dtype) -> None:
    from eef_tasks.engines import SamplingConfig
    from eef_tasks.engines.hf import HFEngine

    engine = HFEngine(None, device="cuda", dtype=dtype)
    assert engine.model.dtype == dtype
    chats = [[{"role": "user", "content": f"Count to {n}."}] for n in (3, 5, 8)]
    sessions = [engine.session(str(i)) for i in range(len(chats))]
    gens = engine.generate(list(zip(sessions, chats)), SamplingConfig(temperature=0.0, max_new_tokens=12))
    for chat, gen in zip(chats, gens):
        assert gen.token_ids == engine.plain_generate(chat, 12)

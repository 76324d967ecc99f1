"""LoRA training on CPU with the real SmolLM2 and a real store: the loss goes down, the adapter
reloads and generates, eef-train.json lists the examples, and the same seed gives the same adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from eef_tasks import models, store  # noqa: E402
from eef_tasks.records import StepRecord, TrajectoryRecord, write_trajectories  # noqa: E402
from eef_tasks.selection import select_examples  # noqa: E402
from eef_tasks.tokenization import IGNORE_INDEX, encode_chat  # noqa: E402
from eef_tasks.training import (  # noqa: E402
    TRAIN_FILE,
    TrainConfig,
    TrainingError,
    collate,
    length_grouped_batches,
    load_policy,
    load_training_chats,
    mean_loss,
    read_train_record,
    train_adapter,
)

try:
    BASE = models.default_model_path()
except models.ModelError as exc:  # pragma: no cover - depends on the installation
    pytest.skip(str(exc), allow_module_level=True)

RUN = "run-t"
# tiny on purpose (2 cores): 2 optimizer steps of 3 examples, LoRA on q/v only
CONFIG = TrainConfig(epochs=2, learning_rate=3e-3, batch_size=4, micro_batch=4, max_length=256,
                     lora_r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                     warmup_ratio=0.0, lr_scheduler="constant", seed=7, compile=False)  # eager; compiled below


def _traj(task: str, instruction: str, actions: list[str], reward: float, **kw) -> TrajectoryRecord:
    return TrajectoryRecord(
        task_id=task, env="toy", split="train", instruction=instruction, source="expert",
        expert="gold", reward=reward,
        steps=[StepRecord(thought=None, action=a, observation=f"You did: {a}.") for a in actions], **kw,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "eef.duckdb"
    with store.writer(path) as con:
        write_trajectories(con, [
            _traj("boil-1", "Your task is to boil water.", ["teleport to kitchen", "activate stove"], 1.0),
            _traj("melt-1", "Your task is to melt ice.", ["open freezer", "pick up ice", "activate stove"], 1.0),
            _traj("grow-1", "Your task is to grow a plant.", ["teleport to greenhouse", "water plant"], 1.0),
            _traj("fail-1", "Your task is to freeze water.", ["look around", "wait"], 0.0),
        ])
        select_examples(con, RUN, 0, "bc")
    return path


@pytest.fixture(scope="module")
def trained(db, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / RUN / "bc-it0"
    info = train_adapter(db, RUN, 0, "bc", out, CONFIG, progress=False)
    return out, info


def test_load_training_chats_uses_the_selected_examples(db):
    chats = load_training_chats(db, RUN, 0, "bc")
    assert sorted(k.task_id for k, _ in chats) == ["boil-1", "grow-1", "melt-1"]  # successes only
    for key, turns in chats:
        assert key.loss_from_step == 0 and key.method == "bc"
        assert [t.supervised for t in turns if t.role == "assistant"] == [True] * sum(t.role == "assistant" for t in turns)
    with pytest.raises(TrainingError, match="eef select"):
        load_training_chats(db, RUN, 1, "eef")


def test_length_grouped_batches_cover_every_example_once():
    import random

    lengths = [5, 50, 7, 49, 6, 48, 8, 47, 9]
    batches = length_grouped_batches(lengths, micro_batch=2, megabatch=2, rng=random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:  # sorted longest first within each megabatch
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_padding_is_never_in_the_loss(db):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    encoded = [encode_chat(tokenizer, turns) for _, turns in load_training_chats(db, RUN, 0, "bc")]
    batch = collate(encoded, tokenizer.pad_token_id)
    for row, e in enumerate(encoded):
        assert batch["attention_mask"][row].sum() == len(e)
        assert (batch["labels"][row, len(e):] == IGNORE_INDEX).all()


@pytest.mark.slow
def test_training_lowers_the_loss_and_records_the_examples(db, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, info = trained
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    encoded = [encode_chat(tokenizer, turns, 256) for _, turns in load_training_chats(db, RUN, 0, "bc")]
    before = mean_loss(AutoModelForCausalLM.from_pretrained(BASE), encoded, tokenizer.pad_token_id)
    model, _ = load_policy(None, out)
    after = mean_loss(model, encoded, tokenizer.pad_token_id)
    assert after < before * 0.8, (before, after)

    assert info.n_examples == 3 and info.n_optimizer_steps == 2  # one step per epoch
    record = read_train_record(out)
    assert record["base_model"] == str(BASE) and record["config"] == CONFIG.model_dump()
    assert sorted(e["task_id"] for e in record["examples"]) == ["boil-1", "grow-1", "melt-1"]
    for e in record["examples"]:
        assert (e["run_id"], e["iteration"], e["method"], e["state_step"], e["loss_from_step"]) == (RUN, 0, "bc", 0, 0)
        assert e["traj_id"].startswith("expert-") and e["n_supervised_tokens"] > 0
    assert record["final_loss"] == record["losses"][-1] == info.final_loss
    assert (out / "adapter_model.safetensors").is_file() and (out / TRAIN_FILE).is_file()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(TrainingError, match="exists"):
        train_adapter(db, RUN, 0, "bc", out, CONFIG, progress=False)


@pytest.mark.slow
def test_adapter_reloads_and_generates(trained):
    out, _ = trained
    model, tokenizer = load_policy(None, out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Your task is to boil water."}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]
    assert tokenizer.decode(gen[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_same_seed_gives_the_same_adapter(db, trained, tmp_path):
    from safetensors.torch import load_file

    out, info = trained
    again = tmp_path / "again"
    info2 = train_adapter(db, RUN, 0, "bc", again, CONFIG, progress=False)
    first = load_file(out / "adapter_model.safetensors")
    second = load_file(again / "adapter_model.safetensors")
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert info2.final_loss == info.final_loss
    assert json.loads((again / TRAIN_FILE).read_text())["examples"] == read_train_record(out)["examples"]


def test_eef_examples_keep_harmful_expert_actions_as_context(tmp_path):
    """A need-recover state s2: its example (the simulation from s3) is supervised from step 2 on."""
    expert = _traj("fail-2", "Your task is to freeze water.", [f"expert {k}" for k in range(6)], 0.0,
                   traj_id="exp-fail-2")

    def policy(purpose: str, branch: int, reward: float, tail: list[str]) -> TrajectoryRecord:
        actions = [f"expert {k}" for k in range(branch)] + tail
        return TrajectoryRecord(
            traj_id=f"{purpose}-{branch}", task_id="fail-2", run_id=RUN, source="policy",
            model_id="m", iteration=1, purpose=purpose, reward=reward,
            branch_traj_id="exp-fail-2" if branch else None, branch_step=branch,
            steps=[StepRecord(action=a, observation=f"You did: {a}.") for a in actions],
        )

    path = tmp_path / "eef.duckdb"
    with store.writer(path) as con:
        write_trajectories(con, [
            expert,
            policy("explore", 0, 0.0, ["look around"]),
            policy("simulate", 1, 1.0, ["policy fix"]),
            policy("simulate", 2, 0.0, ["policy wander"]),
            policy("simulate", 3, 1.0, ["policy finish"]),
        ])
        select_examples(con, RUN, 1, "eef", n_sims=5)
        chats = load_training_chats(con, RUN, 1, "eef")
    by_state = {(k.state_kind, k.state_step): (k, turns) for k, turns in chats}
    key, turns = by_state[("need_recover", 2)]
    assert key.traj_id == "simulate-3" and key.loss_from_step == 2
    assert [(t.step, t.supervised) for t in turns if t.role == "assistant"] == [
        (0, False), (1, False), (2, True), (3, True)]
    assert by_state[("initial", 0)][0].traj_id == "simulate-1"


def test_loss_on_supervised_positions_equals_the_full_logits_loss(db):
    """The trainer runs the output head only where there are labels; same number as full logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eef_tasks.training import _summed_loss

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    encoded = [encode_chat(tokenizer, turns) for _, turns in load_training_chats(db, RUN, 0, "bc")]
    batch = collate(encoded, tokenizer.pad_token_id)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.eval()
    with torch.no_grad():
        fast = _summed_loss(model, batch, torch.device("cpu"))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        full = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum")
    assert torch.allclose(fast, full, rtol=1e-4), (float(fast), float(full))


def test_training_runs_in_the_machines_precision(trained):
    """bf16 matmuls where the CPU has them, the learned LoRA weights in float32 either way."""
    from safetensors.torch import load_file

    from eef_tasks.precision import cpu_supports_bf16

    out, _ = trained
    record = read_train_record(out)
    assert record["dtype"] == ("bfloat16" if cpu_supports_bf16() else "float32")
    assert record["attn_implementation"] == "sdpa" and record["trainable_dtype"] == "float32"
    assert record["gradient_checkpointing"] is False  # 4 x 256 tokens: under the checkpointing threshold
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(w.dtype == torch.float32 for w in weights.values())


# bf16 keeps 8 significant bits (relative rounding 2**-9 per value), so a loss summed over thousands
# of bf16 products moves by a few tenths of a percent; 1 % of the float32 loss is the stated bound
BF16_LOSS_RTOL = 0.01


def test_bf16_loss_of_a_batch_matches_float32(db, trained):
    """The trained adapter's mean loss on its own batch, in bf16 autocast vs float32."""
    from transformers import AutoTokenizer

    from eef_tasks.precision import choose_precision

    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    encoded = [encode_chat(tokenizer, turns, CONFIG.max_length) for _, turns in load_training_chats(db, RUN, 0, "bc")]
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model, _ = load_policy(None, out, device="cpu", dtype=dtype)
        assert model.get_base_model().dtype == getattr(torch, dtype)
        losses[dtype] = mean_loss(model, encoded, tokenizer.pad_token_id, precision=choose_precision("cpu", dtype))
    assert losses["bfloat16"] != losses["float32"]  # really computed in another format
    assert abs(losses["bfloat16"] - losses["float32"]) <= BF16_LOSS_RTOL * losses["float32"], losses


def test_an_example_too_long_for_max_length_is_skipped_with_a_count_or_stops_training(tmp_path):
    path = tmp_path / "eef.duckdb"
    long_task = "Your task is to boil water. " + "The kitchen has a very long description. " * 60
    with store.writer(path) as con:
        write_trajectories(con, [
            _traj("boil-1", "Your task is to boil water.", ["teleport to kitchen", "activate stove"], 1.0),
            _traj("long-1", long_task, ["teleport to kitchen", "activate stove"], 1.0),
        ])
        select_examples(con, RUN, 0, "bc")
    quick = CONFIG.model_copy(update={"max_steps": 1, "epochs": 1})
    info = train_adapter(path, RUN, 0, "bc", tmp_path / "skip", quick, progress=False)
    assert (info.n_examples, info.n_skipped) == (1, 1)
    record = read_train_record(tmp_path / "skip")
    assert [(e["task_id"], e["why"]) for e in record["skipped"]] == [("long-1", "longer than max_length=256")]
    assert [e["task_id"] for e in record["examples"]] == ["boil-1"]

    strict = quick.model_copy(update={"too_long": "error"})
    with pytest.raises(TrainingError, match=r"example expert-.*max_length=256"):
        train_adapter(path, RUN, 0, "bc", tmp_path / "strict", strict, progress=False)
    assert not (tmp_path / "strict").exists()


def test_compiled_layers_train_the_same_adapter(db, trained, tmp_path):
    """`compile=True` (torch.compile of each decoder layer) changes the kernels, not the maths: the
    same seed gives the same per-step losses as the eager run, to bf16 rounding (CONFIG's learning rate
    is large enough that eager bf16 keeps its first updates; at small ones the compiled run is the one
    closer to float32: benchmarks/lora_numerics.py)."""
    out, info = trained
    compiled = train_adapter(db, RUN, 0, "bc", tmp_path / "compiled", CONFIG.model_copy(update={"compile": True}),
                             progress=False)
    record, eager = read_train_record(tmp_path / "compiled"), read_train_record(out)
    assert record["compiled_layers"] == 30 and eager["compiled_layers"] == 0  # SmolLM2-135M's decoder layers
    assert compiled.n_optimizer_steps == info.n_optimizer_steps
    for a, b in zip(record["losses"], eager["losses"], strict=True):
        assert abs(a - b) <= BF16_LOSS_RTOL * b, (record["losses"], eager["losses"])


def test_compile_default_is_bf16_on_cpu_with_a_compiler_and_python_headers(monkeypatch, tmp_path):
    from eef_tasks.precision import Precision
    from eef_tasks.training import compile_default

    monkeypatch.delenv("CXX", raising=False)
    cxx = tmp_path / "bin" / "c++"
    cxx.parent.mkdir()
    cxx.write_text("#!/bin/sh\n")
    cxx.chmod(0o755)
    monkeypatch.setenv("PATH", str(cxx.parent))
    assert compile_default(Precision(device="cpu", dtype="bfloat16"))
    assert not compile_default(Precision(device="cpu", dtype="float32"))  # no bf16 rounding to fix
    assert not compile_default(Precision(device="cuda", dtype="bfloat16"))  # not measured there
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert not compile_default(Precision(device="cpu", dtype="bfloat16"))  # inductor would fail to build
    monkeypatch.setenv("CXX", f"{cxx} -O2")
    assert compile_default(Precision(device="cpu", dtype="bfloat16"))
    import sysconfig

    paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {**paths, "include": str(tmp_path / "no-headers")})
    assert not compile_default(Precision(device="cpu", dtype="bfloat16"))  # no Python.h to build kernels with


@pytest.mark.slow
def test_full_fine_tuning_trains_every_weight_and_engines_load_the_folder_as_the_model(db, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eef_tasks.dpo import DPOError, train_dpo
    from eef_tasks.engines import SamplingConfig
    from eef_tasks.engines.hf import HFEngine
    from eef_tasks.engines.vllm import VLLMError, adapter_fingerprint
    from eef_tasks.pipeline.settings import RunConfig

    config = CONFIG.model_copy(update={"finetune": "full", "learning_rate": 1e-4})
    out = tmp_path / RUN / "bc-it0"
    info = train_adapter(db, RUN, 0, "bc", out, config, progress=False)
    assert models.is_full_checkpoint(out) and not (out / "adapter_config.json").exists()
    record = read_train_record(out)
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    assert record["finetune"] == "full" and record["trainable_parameters"] == sum(p.numel() for p in base.parameters())
    assert info.n_optimizer_steps == 2

    # float32 master weights on disk, and every decoder projection moved
    weights = load_file(out / "model.safetensors")
    base_state = base.state_dict()
    assert {t.dtype for t in weights.values()} == {torch.float32}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight"):
        assert not torch.equal(weights[name], base_state[name]), name

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    encoded = [encode_chat(tokenizer, turns, 256) for _, turns in load_training_chats(db, RUN, 0, "bc")]
    model, _ = load_policy(None, out, dtype="float32")
    assert mean_loss(model, encoded, tokenizer.pad_token_id) < mean_loss(base, encoded, tokenizer.pad_token_id)

    engine = HFEngine(None, out, max_batch_size=2)  # the folder is the model: no adapter on a base
    assert engine.adapter_dir is None and Path(engine.model_path) == out.resolve()
    chat = [{"role": "user", "content": "Your task is to boil water."}]
    [generation] = engine.generate([(engine.session("a"), chat)], SamplingConfig(temperature=0.0, max_new_tokens=6))
    assert generation.text.strip()

    with pytest.raises(VLLMError, match="full fine-tuned model"):
        adapter_fingerprint(out)
    with pytest.raises(DPOError, match="full fine-tuned model"):
        train_dpo(db, RUN, 0, tmp_path / "dpo", sft_adapter=out)
    with pytest.raises(ValueError, match="finetune='full'"):
        RunConfig(run_id="r", method="eef", n_sims=2, engine="vllm", train=config)

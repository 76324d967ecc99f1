"""`eef train --method dpo` (eef_tasks/dpo.py): TRL's DPOTrainer continues an SFT adapter on the
preference pairs of METHOD.md's worked example (tests/test_preferences.py), with the real SmolLM2 on
CPU. The SFT adapter here is a fresh LoRA (what DPO starts from is any adapter folder)."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from store_builders import RUN, StoreBuilder, select_checked  # noqa: E402
from test_preferences import worked_example  # noqa: E402

from eef_tasks import dpo, models, store  # noqa: E402
from eef_tasks.training import TRAIN_FILE, load_policy  # noqa: E402

try:
    BASE = models.default_model_path()
except models.ModelError as exc:  # pragma: no cover - depends on the installation
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture
def pairs_store(db_path):
    with store.writer(db_path) as con:
        worked_example(StoreBuilder(con))
        select_checked(con, RUN, 1, "eef", n_sims=5)
    return db_path


def _lora_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


@pytest.mark.slow
def test_dpo_continues_the_sft_adapter_on_the_pairs(pairs_store, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = tmp_path / "eef-it1"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    start = get_peft_model(AutoModelForCausalLM.from_pretrained(str(BASE)), lora)
    torch.manual_seed(0)
    for name, param in start.named_parameters():  # a non-zero B, so that the adapter is not the base model
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    start.save_pretrained(sft)
    AutoTokenizer.from_pretrained(str(BASE)).save_pretrained(sft)
    (sft / TRAIN_FILE).write_text(json.dumps({"base_model": str(BASE)}))
    before = _lora_weights(start)
    del start

    out = tmp_path / "dpo-it1"
    info = dpo.train_dpo(pairs_store, RUN, 1, out, sft_adapter=sft, config=dpo.DPOTrainConfig(
        max_steps=1, batch_size=2, micro_batch=2, max_length=256, learning_rate=1e-3))
    assert (info["n_pairs"], info["n_optimizer_steps"], info["pairs_from"]) == (2, 1, "eef")
    assert abs(info["final_loss"] - 0.6931) < 1e-3  # the first step: policy = reference, loss = ln 2
    record = json.loads((out / TRAIN_FILE).read_text())
    assert record["method"] == "dpo" and record["sft_adapter"] == str(sft)
    assert [(p["state_step"], p["chosen_traj_id"], p["rejected_traj_id"]) for p in record["pairs"]] == [
        (0, "it1-s2", "it1-s0"), (6, "it1-s8", "it1-s6")]
    assert not (out / "ref").exists()  # TRL's frozen reference copy is not saved
    model, _ = load_policy(None, out, dtype="float32")
    after = _lora_weights(model)
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # DPO moved the adapter


def test_dpo_needs_pairs_and_an_adapter(pairs_store, tmp_path):
    with pytest.raises(dpo.DPOError, match="not a LoRA adapter folder"):
        dpo.train_dpo(pairs_store, RUN, 1, tmp_path / "out", sft_adapter=tmp_path / "missing")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    with pytest.raises(dpo.DPOError, match="no preference pairs for run 'run-1', iteration 2"):
        dpo.train_dpo(pairs_store, RUN, 2, tmp_path / "out", sft_adapter=tmp_path / "a")

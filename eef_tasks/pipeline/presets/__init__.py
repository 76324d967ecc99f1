"""Presets: named recipes for a run's settings, one small module each (`tiny.py`, `demo.py`,
`paper.py`). A recipe's docstring is its one-line description (shown by `eef run --help`) and its
`SETTINGS` are RunConfig fields, plain data (`settings.preset_config` validates them and adds a run
id and method); an optional `EXPERT` says how `eef run` collects expert data
(`experts`, default synthetic only; the synthetic expert's `seeds`, `failure_modes`; default seeds 0
and 1, every failure mode). A recipe may size itself per
task env: `BY_ENV = {"webshop": {...}}` holds the fields that replace those of `SETTINGS` when the
run's environment plays that task env (WebShop's tasks have no names to filter by, and its pages are
longer than ScienceWorld's). Adding a preset is adding a
file here."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from eef_tasks.pipeline.errors import PipelineError


@cache
def presets() -> dict[str, Any]:
    """Every recipe module of this package, by name, in file-name order."""
    return {info.name: importlib.import_module(f"{__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name) if not info.name.startswith("_")}


def names() -> list[str]:
    return list(presets())


def describe() -> str:
    """'name: description' of every preset, for help texts."""
    return "; ".join(f"{name}: {(module.__doc__ or '').strip().splitlines()[0].rstrip('.')}"
                     for name, module in presets().items())


def settings_of(preset: str, task_env: str | None = None) -> dict[str, Any]:
    """The preset's settings, with its `BY_ENV[task_env]` fields (if any) in place of the defaults."""
    if preset not in presets():
        raise PipelineError(f"unknown preset {preset!r}: one of {', '.join(presets())}")
    module = presets()[preset]
    return {**module.SETTINGS, **getattr(module, "BY_ENV", {}).get(task_env, {})}


DEFAULT_EXPERT = {"experts": ["synthetic"], "seeds": [0, 1], "failure_modes": []}


def expert_of(preset: str) -> dict[str, Any]:
    """The expert recipe of a preset: the offline experts `eef run` collects when `--expert` is not
    given, and the synthetic expert's seeds and failure modes (empty: all)."""
    if preset not in presets():
        raise PipelineError(f"unknown preset {preset!r}: one of {', '.join(presets())}")
    return {**DEFAULT_EXPERT, **getattr(presets()[preset], "EXPERT", {})}

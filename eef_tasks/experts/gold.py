"""ScienceWorld's gold action sequences as an offline expert, cached on disk.

The game can generate a winning action sequence for every task variation (`load(...,
generateGoldPath=True)`), but generating one takes from 0.1 s to ~15 s and is not deterministic,
so each is generated once and kept as JSON under the cache directory:

    $EEF_CACHE_DIR/gold/scienceworld/<simplifications>/<task-name>/<variation>.json
    (default root: ~/.cache/eef)

The gold expert's trajectories are the gold actions run in the real game (observations and
rewards are the game's, never invented): expert name 'gold', traj_id 'gold/<task_id>'.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eef_tasks.envs.base import parse_task_id
from eef_tasks.envs.scienceworld import DEFAULT_SIMPLIFICATIONS, SCIENCEWORLD_VERSION, ScienceWorld

GOLD_EXPERT = "gold"

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """$EEF_CACHE_DIR, else ~/.cache/eef."""
    root = os.environ.get("EEF_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "eef"


def gold_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where gold paths are kept: `cache_dir` if given, else <cache_root()>/gold."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "gold"


@dataclass(frozen=True)
class GoldPath:
    """A gold action sequence of one task variation, as the game generated it."""

    task_id: str
    actions: list[str]
    instruction: str
    simplifications: str
    scienceworld_version: str
    generated_at: str
    generation_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GoldPath:
        return cls(
            task_id=str(data["task_id"]),
            actions=[str(a) for a in data["actions"]],
            instruction=str(data["instruction"]),
            simplifications=str(data.get("simplifications", DEFAULT_SIMPLIFICATIONS)),
            scienceworld_version=str(data.get("scienceworld_version", "")),
            generated_at=str(data.get("generated_at", "")),
            generation_s=float(data.get("generation_s", 0.0)),
        )


def gold_file(
    task_id: str, simplifications: str = DEFAULT_SIMPLIFICATIONS, cache_dir: str | Path | None = None
) -> Path:
    env, name, variation = parse_task_id(task_id)
    tag = simplifications.replace(",", "+") or "none"
    return gold_cache_dir(cache_dir) / env / tag / name / f"{variation}.json"


def load_gold(
    task_id: str, simplifications: str = DEFAULT_SIMPLIFICATIONS, cache_dir: str | Path | None = None
) -> GoldPath | None:
    """The cached gold path of a task, or None (a missing or unreadable file)."""
    path = gold_file(task_id, simplifications, cache_dir)
    try:
        gold = GoldPath.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable gold-path cache file %s (%s)", path, exc)
        return None
    if gold.task_id != task_id or not gold.actions:
        logger.warning("ignoring gold-path cache file %s: it does not hold %s", path, task_id)
        return None
    return gold


def save_gold(gold: GoldPath, cache_dir: str | Path | None = None) -> Path:
    """Write a gold path to the cache atomically (a concurrent reader never sees half a file)."""
    path = gold_file(gold.task_id, gold.simplifications, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(gold.to_json(), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def generate_gold(env: ScienceWorld, task_id: str) -> GoldPath:
    """Ask the game for a gold path (slow; not deterministic). Ends `env`'s current episode."""
    started = time.monotonic()
    actions, instruction = env.gold_actions(task_id)
    return GoldPath(
        task_id=task_id,
        actions=actions,
        instruction=instruction,
        simplifications=env.simplifications,
        scienceworld_version=SCIENCEWORLD_VERSION,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        generation_s=round(time.monotonic() - started, 3),
    )


def gold_path(
    task_id: str,
    *,
    env: ScienceWorld | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    simplifications: str | None = None,
) -> GoldPath:
    """The gold path of a task: from the cache, else generated (with `env`, or a temporary
    ScienceWorld) and cached. `refresh=True` regenerates it."""
    simplifications = simplifications or (env.simplifications if env else DEFAULT_SIMPLIFICATIONS)
    if not refresh:
        cached = load_gold(task_id, simplifications, cache_dir)
        if cached is not None:
            return cached
    if env is not None:
        if env.simplifications != simplifications:
            raise ValueError(
                f"env uses simplifications {env.simplifications!r}, not {simplifications!r}"
            )
        gold = generate_gold(env, task_id)
    else:
        with ScienceWorld(simplifications=simplifications) as own:
            gold = generate_gold(own, task_id)
    save_gold(gold, cache_dir)
    return gold


def gold_plan(gold: GoldPath) -> tuple[list[str], dict[str, Any]]:
    """The gold expert's actions for a task and the trajectory metadata that describes them."""
    return list(gold.actions), {
        "gold_generated_at": gold.generated_at,
        "gold_steps": len(gold.actions),
    }

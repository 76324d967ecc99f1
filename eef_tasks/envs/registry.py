"""The registered environments: which task sets exist and which backends play them.

Two names are kept apart. A **task env** is the env of a task id (`scienceworld/boil/3` is a
`scienceworld` task, `webshop/12` a `webshop` task): it owns the task catalog, the splits, the step
limits and the task names. A **backend** is what a run's `env` setting names: the code that plays
those tasks — `scienceworld` (eef's own game driver), `agentgym:sciworld` (the same ScienceWorld
tasks through an AgentGym server), `agentgym:webshop` (WebShop's goals through AgentGym's
server). A backend plays the tasks of exactly one task env; several backends may play the same one.

This module is the one home of the rules that depend on the environment:

- the catalog of a task env (`catalog`), the entry of one task (`find_task`) and its split and
  step limit, and the task-name filter (`task_name_filter`);
- which tasks a run evaluates on (`eval_tasks`) and the rule that **evaluation tasks are never
  training tasks** (`check_eval_tasks`): a task has one split, the one `find_task` gives it (ETO's
  ScienceWorld dev split repeats 54 train pairs; they count as train and are never evaluated);
- how a run's training tasks are narrowed by task name and limit (`narrow_tasks`);
- how a backend is built (`make_env`).

Adding an environment is one entry below: a `TaskEnv` in `TASK_ENVS` for a new task set, a
`Backend` in `BACKENDS` for a new way to play one (e.g. eef's own WebShop:
`Backend("webshop", "webshop", "eef_tasks.envs.webshop:WebShop")`, beside `agentgym:webshop`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator

from eef_tasks.envs.base import Env, EnvError, Split, TaskSpec

EVAL_SPLITS = ("dev", "test")
AGENTGYM_PREFIX = "agentgym:"


@dataclass(frozen=True)
class TaskEnv:
    """A task set: its catalog ('module:function(split, task_names)'), its task lookup
    ('module:function(task_id)') and, where tasks have names, the name filter."""

    name: str
    catalog: str
    find_task: str
    name_filter: str | None = None  # 'module:function(names) -> set | None', validating the names
    args: tuple[Any, ...] = ()  # leading arguments of `catalog`


@dataclass(frozen=True)
class Backend:
    """A way to play one task env: `factory` ('module:callable') builds the Env from `args` plus
    the caller's keyword arguments; `takes_url` says whether it talks to a server (`base_url`)."""

    name: str
    task_env: str
    factory: str
    args: tuple[Any, ...] = ()
    takes_url: bool = False
    note: str = ""
    # keyword arguments of its task env's catalog: the part of the task env this backend plays
    catalog_args: dict[str, Any] = field(default_factory=dict)


# AgentGym env -> the task env its backend plays: SciWorld's server also takes eef's ScienceWorld
# ids (mapped to its data_idx), so a run on `agentgym:sciworld` shares tasks and expert data
# with one on `scienceworld`; its own 'sciworld/<data_idx>' ids stay a task env of their own.
_AGENTGYM_TASK_ENVS = {"sciworld": "scienceworld", "webshop": "webshop", "alfworld": "alfworld",
                       "babyai": "babyai", "textcraft": "textcraft"}

TASK_ENVS: dict[str, TaskEnv] = {
    "scienceworld": TaskEnv("scienceworld", "eef_tasks.envs.registry:_scienceworld_catalog",
                            "eef_tasks.envs.scienceworld:find_task", "eef_tasks.envs.scienceworld:task_filter"),
    # WebShop's goals: eef's own catalog (WebShop's split, instructions known without a server);
    # AgentGym's webshop server plays the same ids
    "webshop": TaskEnv("webshop", "eef_tasks.envs.registry:_webshop_catalog",
                       "eef_tasks.envs.webshop.tasks:find_task"),
    **{env: TaskEnv(env, "eef_tasks.envs.registry:_agentgym_catalog", "eef_tasks.envs.agentgym:find_task",
                    args=(env,))
       for env in ("sciworld", "alfworld", "babyai", "textcraft")},
}

BACKENDS: dict[str, Backend] = {
    "scienceworld": Backend("scienceworld", "scienceworld", "eef_tasks.envs.scienceworld:ScienceWorld",
                            note="eef's ScienceWorld driver (Java)"),
    "webshop": Backend("webshop", "webshop", "eef_tasks.envs.webshop:WebShop",
                       note="eef's WebShop (offline, in-process; 1,000 products)"),
    **{f"{AGENTGYM_PREFIX}{ag}": Backend(f"{AGENTGYM_PREFIX}{ag}", task_env, "eef_tasks.envs.agentgym:AgentGymEnv",
                                         args=(ag,), takes_url=True, note=f"an AgentGym {ag} server",
                                         # its server takes synthetic goals' indices: no human goals
                                         catalog_args={"human": False} if ag == "webshop" else {})
       for ag, task_env in _AGENTGYM_TASK_ENVS.items()},
}


def _load(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _scienceworld_catalog(split: Split | Sequence[Split] | None, task_names: Iterable[str] | None,
                          **kwargs: Any) -> list[TaskSpec]:
    from eef_tasks.envs import scienceworld  # the game's tables load only when asked for

    return scienceworld.catalog(split, tasks=task_names, **kwargs)


def _webshop_catalog(split: Split | Sequence[Split] | None, task_names: Iterable[str] | None,
                     **kwargs: Any) -> list[TaskSpec]:
    """WebShop's goals (`limit=` keeps the first n per split, `human=False` leaves the human goals
    out, as in webshop.catalog)."""
    from eef_tasks.envs.webshop import tasks  # the product data loads only when asked for

    if task_names:
        raise EnvError(f"webshop tasks have no names to filter by ({', '.join(task_names)}); give task ids instead")
    return tasks.catalog(split, **kwargs)


def _agentgym_catalog(env: str, split: Split | Sequence[Split] | None, task_names: Iterable[str] | None,
                      **kwargs: Any) -> list[TaskSpec]:
    """AgentGym's index ranges (`ranges=`, `item_ids=`, `limit=` as in agentgym.catalog)."""
    from eef_tasks.envs import agentgym  # httpx loads only when asked for

    if task_names:
        raise EnvError(f"{env} tasks have no names to filter by ({', '.join(task_names)}); give task ids instead")
    return agentgym.catalog(env, split, **kwargs)


# --- lookups ----------------------------------------------------------------------------------


def backend(name: str) -> Backend:
    """The backend a run's `env` setting names; a bare AgentGym env name ('webshop' when no native
    backend of that name is registered) means its AgentGym server."""
    if name in BACKENDS:
        return BACKENDS[name]
    if f"{AGENTGYM_PREFIX}{name}" in BACKENDS:
        return BACKENDS[f"{AGENTGYM_PREFIX}{name}"]
    raise EnvError(f"unknown environment {name!r}; registered: {', '.join(BACKENDS)}")


def checked_name(name: str) -> str:
    """A registered backend's name (for settings validators: a ValueError otherwise)."""
    try:
        return backend(name).name
    except EnvError as exc:
        raise ValueError(str(exc)) from None


# a settings field naming a registered environment (RunConfig.env, CollectParams.env)
EnvName = Annotated[str, AfterValidator(checked_name)]


def task_env(name: str) -> TaskEnv:
    if name in TASK_ENVS:
        return TASK_ENVS[name]
    raise EnvError(f"unknown task environment {name!r}; registered: {', '.join(TASK_ENVS)}")


def task_env_of(task_id: str) -> str:
    """The task env of a task id: its first path part ('webshop/12' -> 'webshop')."""
    return task_id.split("/", 1)[0]


def make_env(name: str = "scienceworld", **kwargs: Any) -> Env:
    """Build the backend `name` (keyword arguments go to its constructor)."""
    entry = backend(name)
    return _load(entry.factory)(*entry.args, **kwargs)


def env_kwargs(name: str, url: str | None = None) -> dict[str, Any]:
    """The constructor arguments a run passes to its backend: the server URL where it takes one
    (None: the backend's own default, e.g. $EEF_AGENTGYM_URL). Several servers, comma-separated,
    share a phase's episodes: `base_url` is then their list (rollout slot i plays on server i mod n)."""
    entry = backend(name)
    if url and not entry.takes_url:
        raise EnvError(f"environment {name!r} runs in-process: it takes no server URL")
    if not (entry.takes_url and url):
        return {}
    urls = [u.strip() for u in url.split(",") if u.strip()]
    return {"base_url": urls if len(urls) > 1 else urls[0]}


def catalog(env: str, split: Split | Sequence[Split] | None = None,
            task_names: Iterable[str] | None = None, **kwargs: Any) -> list[TaskSpec]:
    """The catalog of a task env (or of the part of its task env a backend plays), filtered by split
    and name; `kwargs` go to the task env's own catalog function (e.g. AgentGym's `ranges=`)."""
    if env in TASK_ENVS:
        name = env
    else:
        name, kwargs = backend(env).task_env, {**backend(env).catalog_args, **kwargs}
    entry = task_env(name)
    return _load(entry.catalog)(*entry.args, split, list(task_names) if task_names else None, **kwargs)


def find_task(task_id: str) -> TaskSpec:
    """The catalog entry of a task id: its split, step limit, instruction."""
    env = task_env_of(task_id)
    if env not in TASK_ENVS:
        raise EnvError(f"unknown environment {env!r} in {task_id!r}; registered: {', '.join(TASK_ENVS)}")
    return _load(TASK_ENVS[env].find_task)(task_id)


def task_name_filter(env: str, names: Iterable[str] | None) -> set[str] | None:
    """The task names to keep (validated), or None for every task."""
    if not names:
        return None
    name = env if env in TASK_ENVS else backend(env).task_env
    entry = task_env(name)
    if entry.name_filter is None:
        raise EnvError(f"{name} tasks have no names to filter by ({', '.join(names)})")
    return _load(entry.name_filter)(list(names))


def task_name(spec: TaskSpec) -> str | None:
    return spec.meta.get("task_name")


# --- task sets of a run ------------------------------------------------------------------------


def narrow_tasks(env: str, task_ids: Sequence[str], task_names: Iterable[str] | None = None,
                 limit: int | None = None) -> list[str]:
    """`task_ids` (duplicates dropped) restricted to the named tasks, first `limit`."""
    ids = list(dict.fromkeys(task_ids))
    wanted = task_name_filter(env, task_names)
    if wanted is not None:
        ids = [t for t in ids if task_name(find_task(t)) in wanted]
    return ids[:limit] if limit else ids


def eval_tasks(env: str, split: str, task_names: Iterable[str] | None = None,
               limit: int | None = None) -> list[str]:
    """The catalog's `split` tasks (dev or test) that are not also training tasks, first `limit`."""
    if split not in EVAL_SPLITS:
        raise EnvError(f"evaluate on 'dev' or 'test', not {split!r}")
    ids = [s.task_id for s in catalog(env, split, task_names) if find_task(s.task_id).split == split]
    return ids[:limit] if limit else ids


def check_eval_tasks(task_ids: Sequence[str], limit: int | None = None) -> list[str]:
    """Explicit evaluation tasks (duplicates dropped, first `limit`); an EnvError naming those that
    are training tasks."""
    ids = list(dict.fromkeys(task_ids))
    leaked = [t for t in ids if find_task(t).split == "train"]
    if leaked:
        raise EnvError(f"evaluation tasks must not be training tasks: {', '.join(leaked[:5])}")
    return ids[:limit] if limit else ids


@dataclass(frozen=True)
class Registered:
    """One row of `eef run --help`'s environment list."""

    name: str
    task_env: str
    note: str = field(default="")


def registered() -> list[Registered]:
    return [Registered(b.name, b.task_env, b.note) for b in BACKENDS.values()]

"""The EEF and RFT pipelines as plain functions: one run, one iteration, one phase at a time.

A **run** is one experiment (METHOD.md): a method (`eef`, or `rft` = the same with M = 0), its
settings (`RunConfig`, kept in `runs.config` when the run is registered and fixed from then on),
and iterations 0..I. Iteration 0 is behaviour cloning (select, train, evaluate); every later
iteration is explore → simulate (eef only) → select → train → evaluate.

Each phase function takes only references (store path, run id, iteration), reads what it needs
from the store, stores its output, and then records itself in `run_phases`. A phase recorded there
is never redone; a phase that was interrupted is simply run again, and because rollouts skip the
trajectories already stored, selection replaces its rows, and adapters are written atomically,
running it again never duplicates or loses anything. `next_iteration` reads the same table: a
scheduler can advance a run one iteration at a time from whatever the store holds.

The package, by concern:

    settings.py   RunConfig, the settings that may change after registration, preset_config
    errors.py     PipelineError
    presets/      named recipes for RunConfig, one small file each (tiny, demo, paper)
    runs.py       the run registry (task sets resolved once) and phase bookkeeping (phases_of)
    phases.py     the phases themselves, run_phase, run_iteration
    slot.py       the machine's model slot (one model phase at a time)
    process.py    one phase in a child process: `python -m eef_tasks.pipeline PHASE …`
"""

import importlib
from typing import Any

# The package's public names, each from the module that owns it. They load on first use (PEP 562),
# so that `eef --help` and `eef select` (which list presets) do not load the phases' model stack.
_HOMES = {
    "settings": ("DPO_PAIRS", "MUTABLE_SETTINGS", "OFFLINE_METHODS", "RunConfig", "config_hash", "preset_config", "validation_message"),
    "errors": ("PipelineError",),
    "runs": ("BC_PHASES", "MODEL_PHASES", "PHASES", "adapter_dir", "dpo_adapter_dir", "finished_phases", "load_run",
             "mark_phase", "next_iteration", "phase_adapter", "phases_of", "policy_adapter", "policy_phase", "register_run",
             "require_earlier_phases", "store_id"),
    "phases": ("PHASE_FUNCTIONS", "run_iteration", "run_phase"),
    "slot": ("gpu_slot",),
    "process": ("PROGRESS_PREFIX", "RESULT_PREFIX", "main", "run_phase_process", "set_torch_threads"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])

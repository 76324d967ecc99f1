"""Shared fixtures: a fresh, migrated DuckDB store per test (a real file under tmp_path)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

# make tests/store_builders.py importable as a plain module, whatever pytest's rootdir/import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make test` runs the suite in pytest-xdist workers (three by default). Each test process (a worker, or a plain
# pytest) gets a Prefect home and a model slot of its own, inherited by every `eef` command a test
# starts: two workers' temporary Prefect servers never share one SQLite file, and one worker's model
# phase never waits for the other's (the slot is machine-wide by default; tests that need a slot of
# their own set EEF_GPU_LOCK or pass a path). Never the user's ~/.prefect.
_PRIVATE = Path(tempfile.mkdtemp(prefix=f"eef-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-"))
atexit.register(shutil.rmtree, _PRIVATE, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_PRIVATE / "prefect-home")
os.environ["EEF_GPU_LOCK"] = str(_PRIVATE / "model-slot.lock")

from eef_tasks import store  # noqa: E402
from store_builders import StoreBuilder  # noqa: E402


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "eef.duckdb"


@pytest.fixture
def con(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A write connection to a fresh store, opened with the project's own `store.writer`."""
    with store.writer(db_path) as connection:
        yield connection


@pytest.fixture
def build(con: duckdb.DuckDBPyConnection) -> StoreBuilder:
    return StoreBuilder(con)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default model's checkpoint folder (converted once from its GGUF); skips without it."""
    from eef_tasks.models import ModelError, default_model_path

    try:
        return default_model_path()
    except ModelError as exc:  # pragma: no cover - depends on the installation
        pytest.skip(str(exc))


# the longest modules (minutes each: whole tiny-preset runs) go first, so that with several workers
# (--dist loadscope: a module's tests stay on one worker, its module fixtures run once) they do not
# start last and leave one worker idle at the end
LONG_MODULES = ("test_pipeline_flows.py", "test_pipeline_envs.py", "test_selection_properties.py")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(config, items) -> None:
    """Tests against the real vLLM server (marker `real_vllm`) run last: `make test` installs vLLM in
    the background meanwhile (tests/real_vllm.py). The longest modules run first. The order is
    otherwise kept."""
    def rank(item) -> tuple[bool, int]:
        name = item.path.name
        return (item.get_closest_marker("real_vllm") is not None,
                LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES))

    items.sort(key=rank)

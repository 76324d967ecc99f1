"""Shared fixtures: a fresh, migrated DuckDB store per test (a real file under tmp_path)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

# make tests/store_builders.py importable as a plain module, whatever pytest's rootdir/import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(config, items) -> None:
    """Tests against the real vLLM server (marker `real_vllm`) run last: `make test` installs vLLM in
    the background meanwhile (tests/real_vllm.py). The order is otherwise kept."""
    items.sort(key=lambda item: item.get_closest_marker("real_vllm") is not None)

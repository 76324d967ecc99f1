"""The DuckDB trajectory store: connections, locking, migrations and the SQL files of `sql/`.

Only one process may write the DuckDB file at a time, and a writer locks out every reader too,
so writers open the file briefly (`writer`) and everyone retries a held lock for a bounded time
before reporting which process holds it (`StoreLocked`).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from eef_tasks.errors import UserError

DEFAULT_DB = Path("data/eef.duckdb")
LOCK_WAIT_S = 30.0

_PACKAGE_DIR = Path(__file__).resolve().parent


def sql_dir() -> Path:
    """The `sql/` folder: inside the package when installed from a wheel, else the repo's."""
    for candidate in (_PACKAGE_DIR / "sql", _PACKAGE_DIR.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError("eef's sql/ folder is missing from this installation")


def read_sql(name: str) -> str:
    """Text of `sql/<name>.sql`, e.g. read_sql('select/bc_examples')."""
    return (sql_dir() / f"{name}.sql").read_text()


class StoreError(UserError):
    """A problem with the store that the user can act on; its message says what to do."""


class StoreLocked(StoreError):
    """Another process held the DuckDB file for longer than we were willing to wait."""


_LOCK_RE = re.compile(r"Conflicting lock is held in (?P<exe>.+?) \(PID (?P<pid>\d+)\)")


def _lock_holder(message: str) -> str:
    match = _LOCK_RE.search(message)
    if not match:
        return "another process"
    pid = match["pid"]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmdline = match["exe"]
    return f"PID {pid} ({cmdline})"


def connect(
    db: str | Path, *, read_only: bool = False, wait_s: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """Open the store, retrying while another process holds its lock, for at most `wait_s`."""
    db = Path(db)
    if read_only and not db.exists():
        raise StoreError(f"no store at {db}: create one with `eef init --db {db}`")
    if not read_only:
        db.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(db), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise StoreError(f"cannot open {db}: {exc}") from exc
            if time.monotonic() >= deadline:
                raise StoreLocked(
                    f"{db} is locked by {_lock_holder(str(exc))}; gave up after {wait_s:.0f} s. "
                    "A DuckDB file is open to one writing process or to reading ones, never both: "
                    "wait for that process to finish."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, rolling back on any error so that nothing is half-written."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextmanager
def writer(db: str | Path, *, wait_s: float = LOCK_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived write connection to a store that is migrated to the current schema."""
    con = connect(db, wait_s=wait_s)
    try:
        migrate(con)
        yield con
    finally:
        con.close()


@contextmanager
def reader(db: str | Path, *, wait_s: float = LOCK_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection; fails clearly when the store was never initialised."""
    con = connect(db, read_only=True, wait_s=wait_s)
    try:
        if not _has_table(con, "schema_migrations"):
            raise StoreError(f"{db} is not an eef store: run `eef init --db {db}` first")
        yield con
    finally:
        con.close()


# --- migrations -------------------------------------------------------------------------------
# Tables change only through numbered, forward-only files in sql/migrations/ (recorded with a
# checksum in schema_migrations). Views are derived objects: sql/views/ is re-applied whenever a
# view file's text changes, so query logic can evolve without a migration.

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    checksum    VARCHAR NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS schema_views (
    name        VARCHAR PRIMARY KEY,
    checksum    VARCHAR NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> tuple | None:
    """The first row of a query, or None. Fetches the whole result: DuckDB 2 refuses other work on
    a connection (e.g. register) while a result is only partly read."""
    rows = con.execute(sql, params or {}).fetchall()
    return rows[0] if rows else None


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = first_row(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = $name", {"name": name}
    )
    return bool(row and row[0])


def migration_files() -> list[tuple[int, str, Path]]:
    files = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        version, _, name = path.stem.partition("_")
        files.append((int(version), name, path))
    return files


def view_files() -> list[Path]:
    return sorted((sql_dir() / "views").glob("*.sql"))


def pending(con: duckdb.DuckDBPyConnection) -> tuple[list[int], list[str]]:
    """Migrations not yet applied and view files whose text changed, without changing anything."""
    if not _has_table(con, "schema_migrations"):
        return [v for v, _, _ in migration_files()], [p.stem for p in view_files()]
    applied = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    todo = []
    for version, name, path in migration_files():
        if version not in applied:
            todo.append(version)
        elif applied[version] != _checksum(path.read_text()):
            raise StoreError(
                f"migration {path.name} was edited after it was applied to this store; "
                "migrations are forward-only: restore the file and add a new numbered one"
            )
    views = dict(con.execute("SELECT name, checksum FROM schema_views").fetchall())
    stale = [p.stem for p in view_files() if views.get(p.stem) != _checksum(p.read_text())]
    if todo:  # a table change may invalidate any view: re-create them all
        stale = [p.stem for p in view_files()]
    return todo, stale


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Bring the store to the current schema in one transaction; returns what was applied."""
    if not _has_table(con, "schema_migrations"):
        con.execute(_BOOKKEEPING)
    todo, stale = pending(con)
    if not todo and not stale:
        return []
    done = []
    with transaction(con):
        for version, name, path in migration_files():
            if version in todo:
                text = path.read_text()
                try:
                    con.execute(text)
                except duckdb.Error as exc:
                    # a migration that refuses rows breaking its new rules says which (rolled back)
                    raise StoreError(f"migration {path.name} failed: "
                                     f"{str(exc).removeprefix('Invalid Input Error: ')}") from None
                con.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($v, $n, $c)",
                    {"v": version, "n": name, "c": _checksum(text)},
                )
                done.append(path.name)
        for path in view_files():
            if path.stem in stale:
                text = path.read_text()
                con.execute(text)
                con.execute(
                    "INSERT OR REPLACE INTO schema_views (name, checksum) VALUES ($n, $c)",
                    {"n": path.stem, "c": _checksum(text)},
                )
                done.append(f"views/{path.name}")
    return done


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    if not _has_table(con, "schema_migrations"):
        return 0
    row = first_row(con, "SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(row[0]) if row else 0

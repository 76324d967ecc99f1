"""Ad-hoc SQL over the store (`eef sql`): read-only, bounded in rows and in time, streamed.

- **Read-only**: every statement must be a SELECT, PRAGMA, CALL, or an EXPLAIN [ANALYZE] of one
  (EXPLAIN ANALYZE *runs* its statement, so the statement inside is classified too; an EXPLAIN
  whose inner statement cannot be told apart is refused). The connection is read-only, and file
  access, ATTACH and configuration changes are switched off before the first statement runs.
- **Bounded**: at most `max_rows` rows per statement are fetched (0: none, just the columns);
  rows are fetched in batches and written as they come, so a huge result never sits in memory.
- **Timed**: after `timeout_s` the query is interrupted: a reader holds the file's lock, and a
  writer waiting for it must not wait forever.
"""

from __future__ import annotations

import csv
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TextIO

import duckdb

from eef_tasks import store
from eef_tasks.output import json_text

READ_STATEMENTS = frozenset({"SELECT", "PRAGMA", "CALL", "EXPLAIN"})
BATCH_ROWS = 2048
Format = Literal["table", "csv", "json"]

# what may stand between statements' tokens: whitespace, -- line comments, /* block */ comments
_GAP = r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
_EXPLAIN = re.compile(
    rf"^{_GAP}EXPLAIN\b{_GAP}(?:ANALY[SZ]E\b{_GAP})?(?:\((?P<options>[^()]*)\){_GAP})?", re.IGNORECASE | re.DOTALL
)


class ReadOnlyError(store.StoreError):
    """A statement eef sql does not run; the message names its kind."""


def statement_kind(con: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> str:
    """The kind of the statement, looking through EXPLAIN [ANALYZE] [(options)] to what it runs."""
    kind = statement.type.name
    if kind != "EXPLAIN":
        return kind
    match = _EXPLAIN.match(statement.query)
    inner = con.extract_statements(statement.query[match.end():]) if match else []
    if len(inner) != 1:
        raise ReadOnlyError("eef sql is read-only: cannot tell which statement this EXPLAIN runs; "
                            "write EXPLAIN [ANALYZE] SELECT …")
    inner_kind = statement_kind(con, inner[0])
    return "EXPLAIN" if inner_kind in READ_STATEMENTS else inner_kind


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> list[duckdb.Statement]:
    """The statements of `query`, or ReadOnlyError for the first that is not a read."""
    statements = con.extract_statements(query)
    for statement in statements:
        kind = statement_kind(con, statement)
        if kind not in READ_STATEMENTS:
            where = " inside EXPLAIN" if statement.type.name == "EXPLAIN" else ""
            raise ReadOnlyError(f"eef sql is read-only: {kind} statements{where} are refused "
                                "(the pipeline's commands write the store)")
    return statements


@contextmanager
def time_limit(con: duckdb.DuckDBPyConnection, timeout_s: float | None) -> Iterator[None]:
    """Interrupt the connection's query after `timeout_s` (None or 0: no limit)."""
    if not timeout_s:
        yield
        return
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise store.StoreError(
            f"the query ran longer than --timeout {timeout_s:g} s and was stopped (a reader holds "
            "the store's lock, so writers wait for it); narrow it or raise --timeout"
        ) from None
    finally:
        timer.cancel()


def run_query(
    db: Path, query: str, out: TextIO, *, fmt: Format = "table", max_rows: int = 100,
    timeout_s: float | None = 60.0, wait_s: float = store.LOCK_WAIT_S,
) -> list[str]:
    """Run read-only `query` and write each statement's result to `out`; returns notes for the
    user (a result cut at max_rows)."""
    if max_rows < 0:
        raise store.StoreError("--max-rows must be 0 or more")
    notes: list[str] = []
    with store.reader(db, wait_s=wait_s) as con:
        statements = check_read_only(con, query)
        # no file reads/writes or ATTACH from ad-hoc SQL, and no way to switch that back on
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        with time_limit(con, timeout_s):
            for statement in statements:
                if fmt == "table":
                    cut = _table(con, statement.query, max_rows)
                else:
                    cut = _stream(con, statement.query, out, max_rows, fmt)
                if cut:
                    notes.append(f"showing the first {max_rows} rows (--max-rows to change)")
    return notes


def _table(con: duckdb.DuckDBPyConnection, query: str, max_rows: int) -> bool:
    relation = con.sql(query)
    if relation is None:
        return False
    # DuckDB's renderer (it writes to sys.stdout) escapes control characters and fits the
    # terminal; LIMIT lets the query stop early. Whether more rows exist costs a second LIMIT 1.
    relation.limit(max_rows).show(max_rows=max(max_rows, 1),
                                  max_width=shutil.get_terminal_size((160, 24)).columns)
    return bool(relation.limit(1, offset=max_rows).fetchall())


def _stream(con: duckdb.DuckDBPyConnection, query: str, out: TextIO, max_rows: int, fmt: Format) -> bool:
    result = con.execute(query)
    if result.description is None:
        return False
    columns = [column[0] for column in result.description]
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    else:
        out.write("[")
    written = 0
    first = True
    while written < max_rows:
        batch = result.fetchmany(min(BATCH_ROWS, max_rows - written))
        if not batch:
            break
        written += len(batch)
        for row in batch:
            if writer is not None:
                writer.writerow([_csv_value(value) for value in row])
            else:
                out.write(("\n" if first else ",\n") + json_text(dict(zip(columns, row, strict=True))))
                first = False
    if writer is None:
        out.write("\n]\n" if not first else "]\n")
    return written == max_rows and bool(result.fetchmany(1))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value

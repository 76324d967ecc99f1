"""Import and export of trajectory files.

Two input formats:
- `eef` JSONL: one `TrajectoryRecord` per line (see README, "Trajectory JSONL format"). This is
  also what `eef export` writes, so export → import round-trips.
- `conversations`: agent data as published by ETO and AgentGym — a JSON array or JSONL of
  `{"id"|"item_id": …, "conversations": [{"from": "human"|"gpt", "value": …}, …]}` with
  "Thought: … Action: …" assistant turns and "Observation: …" user turns.

A file is parsed and validated completely before anything is written; a malformed record raises
`ImportFileError` naming its line and field, and the whole file is then written in one
transaction, so a bad file leaves the store untouched. Import files are untrusted input:

- bytes must be UTF-8, JSON must be strict (no NaN/Infinity), strings real text (no lone
  surrogates), nesting at most `MAX_DEPTH` deep and integers within 64 bits (32 for the store's
  INTEGER columns); types are strict (a reward of `true` or `"1"` is refused, not converted);
- the rules the selection relies on hold as for produced rows (`records.write_trajectories`
  checks them for every writer): a policy trajectory has a run_id; a simulation branches from a
  failed expert trajectory of its own task, in the store or in the same file;
- duplicates and task clashes, within the file or against the store, name the line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import duckdb
from pydantic import ValidationError

from eef_tasks.output import json_text
from eef_tasks.records import RecordError, StepRecord, TrajectoryRecord, WriteResult, write_trajectories
from eef_tasks.store import StoreError


class ImportFileError(StoreError):
    """A record of an input file is malformed or breaks a rule of the store; the message names
    the line and the field."""

    def __init__(self, path: Path | str, line: int, field: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(f"{path}, line {line}, field {field}: {problem}")


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _field_path(loc: tuple) -> str:
    """`steps[0].reward`; a name from the file that is not a plain identifier is shown as a JSON
    string, so that an error stays one readable line whatever the file's keys hold."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = str(part) if _PLAIN_NAME.fullmatch(str(part)) else json.dumps(str(part))
        out += f".{name}" if out else name
    return out or "(record)"


# Limits on what a record may hold: deeper nesting or larger integers than these are refused with
# the record's line, instead of failing later (in Python's parser, polars or DuckDB) with a traceback.
MAX_DEPTH = 64
MAX_INT = 2**63 - 1


class FileRecords(list):
    """Records read from a file, in order, with the file's name and each record's line."""

    def __init__(self, path: Path | str, numbered: list[tuple[int, TrajectoryRecord]]):
        super().__init__(record for _, record in numbered)
        self.path = str(path)
        self.lines = [number for number, _ in numbered]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _parse(path: Path, number: int, text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ImportFileError(path, number, "(line)", f"invalid JSON: {exc.msg}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer of more digits than Python parses
        raise ImportFileError(path, number, "(line)", str(exc)) from None
    except RecursionError:
        raise ImportFileError(path, number, "(line)", f"nested deeper than {MAX_DEPTH} levels") from None
    problem = _value_problem(value)
    if problem is not None:
        raise ImportFileError(path, number, *problem)
    return value


def _value_problem(value: Any) -> tuple[str, str] | None:
    """(field, problem) for the first value the store cannot hold faithfully, else None."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        item, loc, depth = stack.pop()
        if depth > MAX_DEPTH:
            return _field_path(loc), f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            if not _is_utf8(item):
                return _field_path(loc), "holds a lone surrogate (\\ud800-\\udfff), which is not text"
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if abs(item) > MAX_INT:
                return _field_path(loc), "integer out of range (more than 64 bits)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return _field_path(loc), "number out of range (JSON numbers here must be finite)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _is_utf8(key):
                    return _field_path(loc), "a key holds a lone surrogate, which is not text"
                stack.append((child, (*loc, key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, (*loc, i), depth + 1) for i, child in enumerate(item))
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode(path: Path, data: bytes, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        raise ImportFileError(path, line, "(line)", f"not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for a JSONL file, or for each element of a JSON array file."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is no record
    if data.lstrip().startswith(b"["):
        items = _parse(path, 1, _decode(path, data))
        if not isinstance(items, list):
            raise ImportFileError(path, 1, "(file)", "expected a JSON array of records")
        # a JSON array has no line per record: report the element's position, 1-based
        for index, item in enumerate(items, start=1):
            yield index, item
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        yield number, _parse(path, number, _decode(path, line, number))


def detect_format(path: Path | str) -> str:
    """'conversations' when the first record has a "conversations" key, else 'eef'."""
    path = Path(path)
    for _, value in _json_lines(path):
        return "conversations" if isinstance(value, dict) and "conversations" in value else "eef"
    return "eef"


def _validation_error(path: Path, number: int, exc: ValidationError) -> ImportFileError:
    error = exc.errors()[0]
    return ImportFileError(path, number, _field_path(error["loc"]), error["msg"].removeprefix("Value error, "))


def read_eef_jsonl(path: Path | str) -> FileRecords:
    path = Path(path)
    records = []
    for number, value in _json_lines(path):
        if not isinstance(value, dict):
            raise ImportFileError(path, number, "(record)", "expected a JSON object")
        try:
            # strict: a reward of true or "1" is a mistake in the file, not a number to guess
            records.append((number, TrajectoryRecord.model_validate(value, strict=True)))
        except ValidationError as exc:
            raise _validation_error(path, number, exc) from None
    return FileRecords(path, records)


# --- ETO / AgentGym conversations ------------------------------------------------------------

_THOUGHT_ACTION = re.compile(r"^\s*(?:Thought:\s*(?P<thought>.*?)\s*)?Action:\s*(?P<action>.*?)\s*$", re.S)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _turns(path: Path, number: int, value: dict) -> list[tuple[str, str]]:
    conversations = value.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise ImportFileError(path, number, "conversations", "missing or empty list of turns")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise ImportFileError(path, number, f"conversations[{i}]", "expected an object")
        role = _ROLES.get(turn.get("from", turn.get("role")))
        text = turn.get("value", turn.get("content"))
        if role is None:
            raise ImportFileError(
                path, number, f"conversations[{i}].from", "expected 'human' or 'gpt'"
            )
        if not isinstance(text, str):
            raise ImportFileError(path, number, f"conversations[{i}].value", "expected a string")
        turns.append((role, text))
    return turns


def parse_conversation(
    path: Path, number: int, value: Any, *, env: str, split: str, expert: str,
    reward: float | None, task_prefix: str | None,
) -> TrajectoryRecord:
    """One ETO/AgentGym record as a trajectory.

    Leading (user, "OK") pairs are the instruction part (ETO's system prompt) and are dropped:
    eef uses its own system prompt per environment. The next user turn is the task instruction;
    then assistant actions alternate with observations.
    """
    if not isinstance(value, dict):
        raise ImportFileError(path, number, "(record)", "expected a JSON object")
    item_id = value.get("id", value.get("item_id"))
    if item_id is None or str(item_id) == "":
        raise ImportFileError(path, number, "id", "each record needs 'id' or 'item_id'")
    record_reward = value.get("reward", reward)
    if record_reward is None:
        raise ImportFileError(path, number, "reward", "no reward: pass --reward or give 'reward' per record")
    if isinstance(record_reward, bool) or not isinstance(record_reward, (int, float)):
        raise ImportFileError(path, number, "reward", "expected a number in [0, 1]")
    turns = _turns(path, number, value)
    i = 0
    while (
        i + 1 < len(turns)
        and turns[i][0] == "user"
        and turns[i + 1][0] == "assistant"
        and turns[i + 1][1].strip() == "OK"
    ):
        i += 2
    if i >= len(turns) or turns[i][0] != "user":
        raise ImportFileError(path, number, f"conversations[{i}]", "expected the task instruction (a human turn)")
    # ETO prefixes the instruction with "Task Description:", AgentGym's WebShop with "Observation:"
    instruction = re.sub(r"^\s*(?:Task Description|Observation):\s*", "", turns[i][1]).strip()
    steps = []
    for j in range(i + 1, len(turns), 2):
        role, text = turns[j]
        if role != "assistant":
            raise ImportFileError(path, number, f"conversations[{j}].from", "expected a 'gpt' turn here")
        match = _THOUGHT_ACTION.match(text)
        if not match or not match["action"]:
            raise ImportFileError(path, number, f"conversations[{j}].value", "assistant turn has no 'Action: …'")
        observation = ""
        if j + 1 < len(turns):
            if turns[j + 1][0] != "user":
                raise ImportFileError(path, number, f"conversations[{j + 1}].from", "expected a 'human' turn here")
            observation = re.sub(r"^\s*Observation:\s*", "", turns[j + 1][1])
        steps.append(StepRecord(thought=match["thought"] or None, action=match["action"], observation=observation))
    task_id = f"{task_prefix if task_prefix is not None else env + '/'}{item_id}"
    try:
        record = TrajectoryRecord(
            task_id=task_id, env=env, split=split, instruction=instruction, source="expert",
            expert=expert, reward=record_reward, steps=steps,
            meta={"imported_from": "conversations", "item_id": str(item_id)},
        )
    except ValidationError as exc:
        raise _validation_error(path, number, exc) from None
    # a readable id that still tells apart two attempts of one expert on one task
    record.traj_id = f"{expert}/{task_id}/{record.content_hash()[:8]}"
    return record


def read_conversations(
    path: Path | str, *, env: str, split: str = "train", expert: str = "imported",
    reward: float | None = None, task_prefix: str | None = None,
) -> list[TrajectoryRecord]:
    path = Path(path)
    return FileRecords(path, [
        (number, parse_conversation(path, number, value, env=env, split=split, expert=expert,
                                    reward=reward, task_prefix=task_prefix))
        for number, value in _json_lines(path)
    ])


def import_records(con: duckdb.DuckDBPyConnection, records: list[TrajectoryRecord],
                   n_sims: int | None = None) -> WriteResult:
    """Write the records in one transaction; for records read from a file, a record that breaks
    a rule (a duplicate, a task clash, a simulation of a missing or successful expert trajectory,
    a policy trajectory of a run that is neither stored nor given its M) is reported with the
    file's line. `n_sims` is M for runs that are neither in the store nor carry `run_n_sims`."""
    if isinstance(records, FileRecords):
        _check_within_file(records)
    try:
        return write_trajectories(con, records, registered_runs=True, n_sims=n_sims)
    except RecordError as exc:
        if not isinstance(records, FileRecords):
            raise
        for number, record in zip(records.lines, records, strict=True):
            if record.traj_id == exc.traj_id or (exc.traj_id is None and record.task_id == exc.task_id):
                raise ImportFileError(records.path, number, exc.field, exc.problem) from None
        raise


def _check_within_file(records: FileRecords) -> None:
    """Duplicates and task clashes inside the file, reported at the later of the two lines."""
    first: dict[str, tuple[int, str]] = {}
    tasks: dict[str, tuple[int, tuple]] = {}
    for number, record in zip(records.lines, records, strict=True):
        digest = record.content_hash()
        seen = first.setdefault(record.traj_id, (number, digest))
        if seen[1] != digest:
            raise ImportFileError(records.path, number, "traj_id",
                                  f"traj_id {record.traj_id!r} is also on line {seen[0]}, with other content")
        task = record.task()
        if task is None:
            continue
        key = (task.env, task.split, task.instruction)
        described = tasks.setdefault(task.task_id, (number, key))
        if described[1] != key:
            raise ImportFileError(records.path, number, "task_id",
                                  f"task {task.task_id!r} is described differently on line {described[0]} "
                                  "(env, split or instruction)")


# --- export ----------------------------------------------------------------------------------

def export_jsonl(
    con: duckdb.DuckDBPyConnection,
    out: TextIO,
    *,
    run_id: str | None = None,
    source: str | None = None,
    purpose: str | None = None,
    split: str | None = None,
) -> int:
    """Write trajectories (with their task description) as eef JSONL; returns how many."""
    rows = con.sql(
        """SELECT t.traj_id, t.task_id, k.env, k.split, k.instruction, k.max_steps AS task_max_steps,
                  k.meta AS task_meta, t.run_id, r.n_sims AS run_n_sims, r.search AS run_search,
                  r.method AS run_method, r.experts AS run_experts, t.source,
                  t.expert, t.model_id, t.iteration, t.purpose, t.branch_traj_id, t.branch_step,
                  t.reward, t.meta,
                  (SELECT list({'thought': s.thought, 'action': s.action,
                                'observation': s.observation, 'reward': s.reward} ORDER BY s.step)
                   FROM steps AS s WHERE s.traj_id = t.traj_id) AS steps
           FROM trajectories AS t JOIN tasks AS k ON k.task_id = t.task_id
           LEFT JOIN runs AS r ON r.run_id = t.run_id
           WHERE ($run_id IS NULL OR t.run_id = $run_id)
             AND ($source IS NULL OR t.source = $source)
             AND ($purpose IS NULL OR t.purpose = $purpose)
             AND ($split IS NULL OR k.split = $split)
           ORDER BY t.traj_id""",
        params={"run_id": run_id, "source": source, "purpose": purpose, "split": split},
    ).pl()
    for record in rows.iter_rows(named=True):
        for key in ("meta", "task_meta"):
            record[key] = json.loads(record[key]) if record[key] else None
        record["steps"] = record["steps"] or []
        for key in ("run_n_sims", "run_search", "run_method", "run_experts"):  # a run's facts, when it has them
            if record[key] is None:
                del record[key]
        out.write(json_text(record) + "\n")  # strict JSON: a NaN reward stored earlier is null
    return rows.height

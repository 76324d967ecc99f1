"""Import and export of trajectory files.

Two input formats:
- `eef` JSONL: one `TrajectoryRecord` per line (see README, "Trajectory JSONL format"). This is
  also what `eef export` writes, so export → import round-trips.
- `conversations`: agent data as published by ETO and AgentGym — a JSON array or JSONL of
  `{"id"|"item_id": …, "conversations": [{"from": "human"|"gpt", "value": …}, …]}` with
  "Thought: … Action: …" assistant turns and "Observation: …" user turns.

A file is parsed and validated completely before anything is written; a malformed record raises
`ImportFileError` naming its line and field, and the whole file is then written in one
transaction, so a bad file leaves the store untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import duckdb
from pydantic import ValidationError

from eef_tasks.errors import UserError
from eef_tasks.records import StepRecord, TrajectoryRecord, WriteResult, write_trajectories


class ImportFileError(UserError):
    """A record of an input file is malformed; the message names the line and the field."""

    def __init__(self, path: Path | str, line: int, field: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(f"{path}, line {line}, field {field}: {problem}")


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(record)"


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for a JSONL file, or for each element of a JSON array file."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, exc.lineno, "(file)", f"invalid JSON: {exc.msg}") from exc
        # a JSON array has no line per record: report the element's position, 1-based
        for index, item in enumerate(items, start=1):
            yield index, item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, number, "(line)", f"invalid JSON: {exc.msg}") from exc


def read_eef_jsonl(path: Path | str) -> list[TrajectoryRecord]:
    path = Path(path)
    records = []
    for number, value in _json_lines(path):
        if not isinstance(value, dict):
            raise ImportFileError(path, number, "(record)", "expected a JSON object")
        try:
            records.append(TrajectoryRecord.model_validate(value))
        except ValidationError as exc:
            error = exc.errors()[0]
            raise ImportFileError(path, number, _field_path(error["loc"]), error["msg"]) from exc
    return records


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
            expert=expert, reward=float(record_reward), steps=steps,
            meta={"imported_from": "conversations", "item_id": str(item_id)},
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ImportFileError(path, number, _field_path(error["loc"]), error["msg"]) from exc
    # a readable id that still tells apart two attempts of one expert on one task
    record.traj_id = f"{expert}/{task_id}/{record.content_hash()[:8]}"
    return record


def read_conversations(
    path: Path | str, *, env: str, split: str = "train", expert: str = "imported",
    reward: float | None = None, task_prefix: str | None = None,
) -> list[TrajectoryRecord]:
    path = Path(path)
    return [
        parse_conversation(path, number, value, env=env, split=split, expert=expert,
                           reward=reward, task_prefix=task_prefix)
        for number, value in _json_lines(path)
    ]


def import_records(con: duckdb.DuckDBPyConnection, records: list[TrajectoryRecord]) -> WriteResult:
    return write_trajectories(con, records)


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
        """SELECT t.traj_id, t.task_id, k.env, k.split, k.instruction, t.run_id, t.source,
                  t.expert, t.model_id, t.iteration, t.purpose, t.branch_traj_id, t.branch_step,
                  t.reward, t.meta,
                  (SELECT list({'thought': s.thought, 'action': s.action,
                                'observation': s.observation, 'reward': s.reward} ORDER BY s.step)
                   FROM steps AS s WHERE s.traj_id = t.traj_id) AS steps
           FROM trajectories AS t JOIN tasks AS k ON k.task_id = t.task_id
           WHERE ($run_id IS NULL OR t.run_id = $run_id)
             AND ($source IS NULL OR t.source = $source)
             AND ($purpose IS NULL OR t.purpose = $purpose)
             AND ($split IS NULL OR k.split = $split)
           ORDER BY t.traj_id""",
        params={"run_id": run_id, "source": source, "purpose": purpose, "split": split},
    ).pl()
    for record in rows.iter_rows(named=True):
        record["meta"] = json.loads(record["meta"]) if record["meta"] else None
        record["steps"] = record["steps"] or []
        out.write(json.dumps(record) + "\n")
    return rows.height

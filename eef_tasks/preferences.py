"""Preference pairs from important states, in the format TRL's DPO trainer reads.

The pairs themselves are the view `preference_pairs` (sql/views/45_preference_pairs.sql): per
important state of a selected eef/rft training set, the chosen (selected) trajectory and a failed
continuation from the same state. `pair_records` turns each into TRL's conversational preference
format — `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}` — through the one chat
builder (`eef_tasks.chat.build_chat`), so a pair is exactly the training chat split at the state:

- prompt: the system prompt, the instruction, and the turns of the actions before s_k with their
  observations (from the chosen trajectory: for a need-recover state its replayed expert prefix, with
  the observations the environment returned to it), ending with the observation of s_k;
- chosen / rejected: each trajectory's turns from its action a_k on (assistant turns with the
  observations between them; the observation after the last action is left out, as in training).

Note for DPO: TRL scores every completion token, the observations between a completion's actions
included (they are the environment's text, the same for any policy given the actions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

import duckdb

from eef_tasks.chat import build_chat
from eef_tasks.output import json_text
from eef_tasks.selection import check_request
from eef_tasks.store import StoreError


def _trajectory(con: duckdb.DuckDBPyConnection, traj_id: str) -> tuple[str, str, list[dict]]:
    env, instruction = con.execute(
        """SELECT k.env, k.instruction FROM trajectories AS t JOIN tasks AS k ON k.task_id = t.task_id
           WHERE t.traj_id = $t""", {"t": traj_id},
    ).fetchone()
    steps = [
        {"thought": thought, "action": action, "observation": observation}
        for thought, action, observation in con.execute(
            "SELECT thought, action, observation FROM steps WHERE traj_id = $t ORDER BY step", {"t": traj_id},
        ).fetchall()
    ]
    return env, instruction, steps


def _messages(turns) -> list[dict[str, str]]:
    return [turn.message() for turn in turns]


def pair_records(con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str = "eef") -> Iterator[dict]:
    """TRL conversational preference records of (run, iteration, method), in the view's order."""
    check_request(iteration, method)
    if method not in ("eef", "rft"):
        raise StoreError(f"preference pairs come from eef or rft training sets, not {method!r}")
    rows = con.execute(
        """SELECT state_step, chosen_traj_id, rejected_traj_id FROM preference_pairs
           WHERE run_id = $r AND iteration = $i AND method = $m
           ORDER BY task_id, state_kind, state_traj_id NULLS FIRST, state_step""",
        {"r": run_id, "i": iteration, "m": method},
    ).fetchall()
    for k, chosen_id, rejected_id in rows:
        env, instruction, chosen = _trajectory(con, chosen_id)
        _, _, rejected = _trajectory(con, rejected_id)
        prompt = build_chat(env, instruction, chosen[:k], include_last_observation=True)
        cut = len(prompt)
        yield {
            "prompt": _messages(prompt),
            "chosen": _messages(build_chat(env, instruction, chosen)[cut:]),
            "rejected": _messages(build_chat(env, instruction, rejected)[cut:]),
        }


def export_pairs(con: duckdb.DuckDBPyConnection, out: TextIO, run_id: str, iteration: int, method: str = "eef") -> int:
    """Write the pairs as JSONL (one TRL record a line); returns how many."""
    n = 0
    for record in pair_records(con, run_id, iteration, method):
        out.write(json_text(record) + "\n")
        n += 1
    return n

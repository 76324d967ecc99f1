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

ETO's pairs (view `eto_pairs`, sql/views/46_eto_pairs.sql: an expert success vs a failed explore
rollout of the same task, both from s0) come out the same way, with method 'eto'.

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


# the columns of a pair, in both views; a pair's key in eef-train.json
PAIR_KEYS = ("task_id", "state_kind", "state_traj_id", "state_step", "chosen_traj_id", "rejected_traj_id")
PAIR_METHODS = ("eef", "rft", "eto")  # the training sets with pairs: eef / rft (important states), eto

# one fixed query per view (never formatted SQL); the same order for both
_PAIRS_SQL = {
    "important_states": """SELECT task_id, state_kind, state_traj_id, state_step, chosen_traj_id, rejected_traj_id
           FROM preference_pairs WHERE run_id = $r AND iteration = $i AND method = $m
           ORDER BY task_id, state_kind, state_traj_id NULLS FIRST, state_step""",
    "eto": """SELECT task_id, state_kind, state_traj_id, state_step, chosen_traj_id, rejected_traj_id
           FROM eto_pairs WHERE run_id = $r AND iteration = $i AND method = $m
           ORDER BY task_id, rejected_traj_id""",
}


def pair_rows(con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str = "eef") -> list[dict]:
    """The pairs of (run, iteration, method) as dicts of PAIR_KEYS: view preference_pairs for eef and rft
    training sets, eto_pairs for 'eto' (a run's iteration-`iteration` explore rollouts)."""
    if method not in PAIR_METHODS:
        raise StoreError(f"preference pairs come from eef or rft training sets, or eto's explorations, not {method!r}")
    if method == "eto":
        if iteration < 1:
            raise StoreError("eto pairs come from explore rollouts: iterations start at 1")
    else:
        check_request(iteration, method)
    sql = _PAIRS_SQL["eto" if method == "eto" else "important_states"]
    return [dict(zip(PAIR_KEYS, row)) for row in
            con.execute(sql, {"r": run_id, "i": iteration, "m": method}).fetchall()]


def pair_records(con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str = "eef") -> Iterator[dict]:
    """TRL conversational preference records of (run, iteration, method), in `pair_rows`' order."""
    for pair in pair_rows(con, run_id, iteration, method):
        k = pair["state_step"]
        env, instruction, chosen = _trajectory(con, pair["chosen_traj_id"])
        _, _, rejected = _trajectory(con, pair["rejected_traj_id"])
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

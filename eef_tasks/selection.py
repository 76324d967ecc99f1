"""Selection of training examples: runs the SQL of `sql/select/` over the views of `sql/views/`.

`select_examples` is what `eef select` calls. It reads only the store, writes one run/iteration/
method's `training_examples` in one transaction (delete, then insert), and so is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from eef_tasks.store import StoreError, first_row, read_sql, transaction

METHODS = ("bc", "eef", "rft", "sft-all", "nat")
# trained once, at iteration 0, on expert data only: bc (the paper's SFT-POS: expert successes),
# sft-all (every expert trajectory) and nat (every expert trajectory, its outcome marked in the prompt)
EXPERT_DATA_METHODS = ("bc", "sft-all", "nat")
# the methods a run is registered with (runs.method); bc is every run's iteration 0, not a run's method
RUN_METHODS = ("eef", "rft", "sft-all", "nat")
DEFAULT_N_SIMS = 5  # M of METHOD.md


@dataclass(frozen=True)
class SelectionResult:
    run_id: str
    iteration: int
    method: str
    n_sims: int
    n_examples: int
    by_kind: dict[str, int] = field(default_factory=dict)


def check_request(iteration: int, method: str) -> None:
    if method not in METHODS:
        raise StoreError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if method in EXPERT_DATA_METHODS and iteration != 0:
        raise StoreError(f"{method} is trained once on expert data, at iteration 0: use --method {method} --iteration 0")
    if method not in EXPERT_DATA_METHODS and iteration < 1:
        raise StoreError(f"{method} iterations start at 1 (iteration 0 is --method bc)")


SEARCHES = ("uniform", "binary")  # runs.search: which expert states a run simulates from


def ensure_run(con: duckdb.DuckDBPyConnection, run_id: str, n_sims: int | None = None,
               method: str | None = None, search: str | None = None) -> int:
    """Register `run_id` with its M (n_sims) and search if new; a known run keeps the M and search it
    was created with (README, "Binary search": search = 'binary' has M = 0).
    A run's method (`runs.method`) is the first of RUN_METHODS it is registered or selected with."""
    if search is not None and search not in SEARCHES:
        raise StoreError(f"unknown search {search!r}: one of {', '.join(SEARCHES)}")
    row = first_row(con, "SELECT n_sims, search FROM runs WHERE run_id = $run_id", {"run_id": run_id})
    if row is not None:
        if search is not None and search != (row[1] or "uniform"):
            raise StoreError(f"run {run_id!r} was created with search = {row[1]!r}, not {search!r}: "
                             "start a new run instead")
        if n_sims is not None and n_sims != row[0]:
            raise StoreError(
                f"run {run_id!r} was created with M = {row[0]} simulations per failed expert "
                f"trajectory, not {n_sims}: its checkpoints would change; start a new run instead"
            )
        if method in RUN_METHODS:
            con.execute("UPDATE runs SET method = $method WHERE run_id = $run_id AND method IS NULL",
                        {"run_id": run_id, "method": method})
        return int(row[0])
    search = search or "uniform"
    n_sims = (0 if search == "binary" else DEFAULT_N_SIMS) if n_sims is None else n_sims
    if n_sims < 0:
        raise StoreError("the number of simulations M must be >= 0")
    if search == "binary" and n_sims != 0:
        raise StoreError("a binary-search run picks its own states: M (--sims) does not apply, leave it out")
    con.execute(
        "INSERT INTO runs (run_id, n_sims, method, search) VALUES ($run_id, $n_sims, $method, $search)",
        {"run_id": run_id, "n_sims": n_sims, "method": method if method in RUN_METHODS else None, "search": search},
    )
    return n_sims


def select_examples(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    iteration: int,
    method: str,
    n_sims: int | None = None,
    search: str | None = None,
) -> SelectionResult:
    """Write the training set of (run, iteration, method); replaces any earlier one. A new run is
    registered with `n_sims` (M) and `search` ('uniform' by default)."""
    check_request(iteration, method)
    key = {"run_id": run_id, "iteration": iteration, "method": method}
    with transaction(con):
        n_sims = ensure_run(con, run_id, n_sims, method, search)
        con.execute(read_sql("select/delete_examples"), key)
        if method == "bc":
            con.execute(read_sql("select/bc_examples"), {"run_id": run_id})
        elif method in EXPERT_DATA_METHODS:
            con.execute(read_sql("select/expert_examples"), {"run_id": run_id, "method": method})
        else:
            con.execute(read_sql("select/shortest_prefix_examples"), key)
    by_kind = dict(
        con.execute(
            """SELECT state_kind, count(*) FROM training_examples
               WHERE run_id = $run_id AND iteration = $iteration AND method = $method
               GROUP BY state_kind ORDER BY state_kind""",
            key,
        ).fetchall()
    )
    return SelectionResult(run_id, iteration, method, n_sims, sum(by_kind.values()), by_kind)


def fetch_examples(
    con: duckdb.DuckDBPyConnection, run_id: str, iteration: int, method: str
) -> list[tuple]:
    """The selected rows in a canonical order (for comparisons and display)."""
    return con.execute(
        """SELECT run_id, iteration, method, traj_id, loss_from_step,
                  state_kind, state_traj_id, state_step, task_id
           FROM training_examples
            WHERE run_id = $run_id AND iteration = $iteration AND method = $method
            ORDER BY state_kind, task_id, state_traj_id NULLS FIRST, state_step, traj_id""",
        {"run_id": run_id, "iteration": iteration, "method": method},
    ).fetchall()

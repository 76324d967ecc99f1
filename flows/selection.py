"""Selection flow: write the training sets of one run for a range of iterations.

The story: behaviour-cloning set at iteration 0, then the EEF (or RFT) set of every iteration
from what the store holds. Tasks pass only references (store path, run id, iteration); each one
opens the store briefly, because a DuckDB writer locks out every other process.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from eef_tasks import selection, store
from flows import local_server  # the __main__ entry point: Ctrl-C / SIGTERM give one line, 130 / 143


@task(name="select-training-set", retries=2, retry_delay_seconds=5)
def select_training_set(db: str, run_id: str, iteration: int, method: str, n_sims: int | None) -> dict:
    """Thin wrapper over eef_tasks.selection.select_examples; returns counts, not data."""
    with store.writer(db) as con:
        result = selection.select_examples(con, run_id, iteration, method, n_sims)
    return {"iteration": iteration, "method": method, "n_examples": result.n_examples, **result.by_kind}


@flow(name="select", log_prints=True)
def select_flow(
    db: str = str(store.DEFAULT_DB),
    run_id: str = "demo",
    iterations: int = 1,
    method: str = "eef",
    n_sims: int | None = None,
) -> list[dict]:
    """Select the BC set and the `method` sets of iterations 1..`iterations` for `run_id`."""
    selection.check_request(1, method)
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    summaries = [select_training_set(db, run_id, 0, "bc", n_sims)]
    for iteration in range(1, iterations + 1):
        summaries.append(select_training_set(db, run_id, iteration, method, n_sims))
    for summary in summaries:
        print(summary)
    return summaries


if __name__ == "__main__":
    local_server.main(select_flow)

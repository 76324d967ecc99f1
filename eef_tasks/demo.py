"""`eef demo`: the store and selection end to end on a generated (synthetic) store.

It needs no model and no environment: it generates a labelled synthetic store, selects the
behaviour-cloning set and, for every iteration, the EEF and RFT sets of one run, and prints how
they compare. Later pipeline stages (rollouts, training, evaluation) replace the generated
trajectories with real ones; the selection shown here is the same code.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from eef_tasks import selection, store
from eef_tasks.testing import synthetic_store

DEMO_RUN = "synthetic-run-1"


def _refuse_real_store(db: Path) -> None:
    if not db.exists():
        return
    with store.reader(db) as con:
        real = con.execute("SELECT count(*) FROM tasks WHERE env <> 'synthetic'").fetchall()[0][0]
    if real:
        raise store.StoreError(
            f"{db} holds {real} real (non-synthetic) tasks; the demo recreates its store: "
            "pass another --db"
        )


def run(db: Path, *, n_tasks: int, iterations: int, seed: int, console: Console) -> None:
    db = Path(db)
    _refuse_real_store(db)
    counts = synthetic_store.generate_store(
        db, n_tasks=n_tasks, n_iterations=iterations, seed=seed, overwrite=True
    )
    console.print(
        f"[bold]Synthetic store[/bold] {db}: {counts['trajectories']} trajectories, "
        f"{counts['steps']} steps on {counts['tasks']} tasks (labelled synthetic; no model, no environment)"
    )
    table = Table(title=f"Training sets of run {DEMO_RUN} (M = 5)")
    for column in ("iteration", "method", "examples", "initial", "need-recover",
                   "need-recover states found"):
        table.add_column(column, justify="right")
    with store.writer(db) as con:
        bc = selection.select_examples(con, DEMO_RUN, 0, "bc")
        table.add_row("0", "bc", str(bc.n_examples), "-", "-", "-")
        for iteration in range(1, iterations + 1):
            found = con.execute(
                """SELECT count(DISTINCT (expert_traj_id, step)) FROM need_recover_states
                   WHERE run_id = $run AND iteration <= $iteration""",
                {"run": DEMO_RUN, "iteration": iteration},
            ).fetchall()[0][0]
            for method in ("eef", "rft"):
                result = selection.select_examples(con, DEMO_RUN, iteration, method)
                table.add_row(
                    str(iteration), method, str(result.n_examples),
                    str(result.by_kind.get("initial", 0)), str(result.by_kind.get("need_recover", 0)),
                    str(found) if method == "eef" else "-",
                )
        sample = con.execute(
            """SELECT traj_id, loss_from_step FROM training_examples
               WHERE run_id = $run AND method = 'eef' AND state_kind = 'need_recover'
               ORDER BY iteration DESC, traj_id LIMIT 1""",
            {"run": DEMO_RUN},
        ).fetchall()
    console.print(table)
    console.print(
        "EEF adds one example per need-recover state on top of RFT's initial states; "
        "its examples for s0 may start from replayed expert prefixes."
    )
    console.print("\nTry:")
    console.print(f"  eef sql --db {db} \"SELECT * FROM example_counts ORDER BY iteration, method\"")
    if sample:
        traj_id, k = sample[0]
        console.print(f"  eef example --db {db} --traj {traj_id} --from-step {k}")


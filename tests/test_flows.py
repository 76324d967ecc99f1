"""The selection flow under a real (temporary, local) Prefect server."""

import pytest
from prefect.testing.utilities import prefect_test_harness

from eef_tasks import selection, store
from eef_tasks.testing import selection_reference, synthetic_store
from flows.selection import select_flow


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_select_flow_writes_every_iteration(tmp_path, prefect_server):
    db = tmp_path / "s.duckdb"
    synthetic_store.generate_store(db, n_tasks=40, n_runs=1, n_iterations=2, seed=3)
    summaries = select_flow(db=str(db), run_id="synthetic-run-1", iterations=2, method="eef")
    assert [(s["iteration"], s["method"]) for s in summaries] == [(0, "bc"), (1, "eef"), (2, "eef")]
    with store.reader(db) as con:
        splits, trajs = selection_reference.load(con)
        for iteration, method in ((0, "bc"), (1, "eef"), (2, "eef")):
            rows = selection.fetch_examples(con, "synthetic-run-1", iteration, method)
            assert rows, f"no examples for iteration {iteration}"
            assert selection_reference.sort_rows(rows) == selection_reference.select(
                splits, trajs, "synthetic-run-1", iteration, method, 5)
    # rerunning the flow is idempotent
    select_flow(db=str(db), run_id="synthetic-run-1", iterations=2, method="eef")
    with store.reader(db) as con:
        assert con.execute("SELECT count(*) FROM training_examples").fetchall()[0][0] == sum(
            s["n_examples"] for s in summaries)


def test_collect_flow_stores_trajectories_once(tmp_path, prefect_server):
    from flows.collect import CollectParams, collect_flow

    params = CollectParams(db=str(tmp_path / "c.duckdb"), expert="synthetic", split=["dev"],
                           tasks=["find-living-thing"], limit=2, seeds=[0, 1])
    first = collect_flow(params)
    assert (first["requested"], first["written"], first["errors"]) == (4, 4, [])
    again = collect_flow(params)
    assert (again["already_stored"], again["written"]) == (4, 0)
    with store.reader(params.db) as con:
        rows = con.execute("SELECT count(*), count(DISTINCT traj_id), bool_and(expert = 'synthetic') "
                           "FROM trajectories").fetchall()
    assert rows == [(4, 4, True)]

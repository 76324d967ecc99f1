"""Expert collection into a real DuckDB store: batches, resumption, no duplicates."""

from __future__ import annotations

import pytest

from eef_tasks import store
from eef_tasks.collect import collect_experts, select_tasks, stored_traj_ids
from eef_tasks.envs import scienceworld as sw
from eef_tasks.envs.base import EnvError
from eef_tasks.envs.pool import EnvPool

TASKS = [
    "scienceworld/find-living-thing/0",
    "scienceworld/lifespan-longest-lived/0",
    "scienceworld/find-plant/3",
]

from game import HAVE_JAVA  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gold-cache")


@pytest.fixture(scope="module")
def pool():
    if not HAVE_JAVA:
        pytest.skip("ScienceWorld needs Java")
    with EnvPool(2) as workers:
        yield workers


def _counts(db_path):
    with store.reader(db_path) as con:
        return {
            table: con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            for table in ("tasks", "trajectories", "steps")
        }


def test_select_tasks_filters_the_catalog():
    dev = select_tasks(split="dev", tasks=["find-animal"])
    assert dev and all(s.split == "dev" and "/find-animal/" in s.task_id for s in dev)
    assert len(select_tasks(split="test", limit=5)) == 5
    assert [s.task_id for s in select_tasks(task_ids=TASKS)] == TASKS
    with pytest.raises(EnvError):
        select_tasks(task_ids=["scienceworld/boil/99999"])
    with pytest.raises(EnvError, match="unknown catalog 'eto'"):
        select_tasks(env="agentgym:alfworld")  # no ETO split and no offline experts there
    assert len(select_tasks(env="webshop", split="test", limit=3)) == 3  # eef's WebShop catalog


def test_collect_twice_stores_each_trajectory_once(db_path, cache_dir, pool):
    first = collect_experts(
        db_path, expert="gold", task_ids=TASKS, batch_size=2, cache_dir=cache_dir, pool=pool,
        progress=False,
    )
    assert first.requested == 3 and first.written == 3 and first.batches == 2
    assert first.successes == 3 and not first.errors and first.gold_generated == 3
    counts = _counts(db_path)
    assert counts["tasks"] == 3 and counts["trajectories"] == 3

    again = collect_experts(
        db_path, expert="gold", task_ids=TASKS, cache_dir=cache_dir, pool=pool, progress=False
    )
    assert again.already_stored == 3 and again.written == 0 and again.ran == 0
    assert _counts(db_path) == counts

    with store.reader(db_path) as con:
        rows = con.execute(
            """SELECT t.task_id, t.split, t.max_steps, t.instruction, j.traj_id, j.source,
                      j.expert, j.reward, j.success, j.n_steps
               FROM trajectories j JOIN tasks t USING (task_id) ORDER BY 1"""
        ).fetchall()
        dupes = con.execute(
            "SELECT traj_id, step, count(*) FROM steps GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        n_steps = con.execute("SELECT sum(n_steps) FROM trajectories").fetchall()[0][0]
    assert not dupes and n_steps == counts["steps"]
    for task_id, split, max_steps, instruction, traj_id, source, expert, reward, success, _ in rows:
        assert traj_id == f"gold/{task_id}" and source == "expert" and expert == "gold"
        assert split == "train" and max_steps in (10, 15) and instruction.startswith("Your task")
        assert reward == 1.0 and success


def test_collect_resumes_synthetic_seeds(db_path, cache_dir, pool):
    part = collect_experts(
        db_path, expert="synthetic", task_ids=TASKS[:2], seed=[0, 1], cache_dir=cache_dir,
        pool=pool, progress=False,
    )
    assert part.written == 4
    full = collect_experts(
        db_path, expert="synthetic", task_ids=TASKS, seed=[0, 1, 2], cache_dir=cache_dir,
        pool=pool, progress=False,
    )
    assert full.requested == 9 and full.already_stored == 4 and full.written == 5
    assert len(stored_traj_ids(db_path, "synthetic")) == 9
    with store.reader(db_path) as con:
        meta = con.execute(
            "SELECT count(*), bool_and((meta->>'synthetic')::BOOLEAN) FROM trajectories "
            "WHERE expert = 'synthetic'"
        ).fetchall()[0]
    assert meta == (9, True)


def test_failed_episodes_are_reported_not_written(db_path, cache_dir, pool, monkeypatch):
    import eef_tasks.collect as collect

    spec = sw.find_task(TASKS[0])
    broken = sw.TaskSpec("scienceworld/find-living-thing/999", spec.env, "train", "x", 15, {})
    monkeypatch.setattr(collect, "select_tasks", lambda *a, **k: [broken, spec])
    summary = collect_experts(
        db_path, expert="gold", cache_dir=cache_dir, pool=pool, progress=False
    )
    assert len(summary.errors) == 1 and "variations" in summary.errors[0][1]
    assert summary.written == 1
    assert stored_traj_ids(db_path, "gold") == {f"gold/{TASKS[0]}"}


def test_seeds_of_a_task_share_one_generated_gold_path(db_path, tmp_path, pool):
    summary = collect_experts(
        db_path, expert="synthetic", task_ids=TASKS[1:2], seed=[0, 1, 2],
        cache_dir=tmp_path / "fresh-cache", pool=pool, progress=False,
    )
    assert summary.written == 3 and summary.gold_generated == 1
    with store.reader(db_path) as con:
        paths = con.execute(
            "SELECT count(DISTINCT meta->>'gold_generated_at') FROM trajectories"
        ).fetchall()[0][0]
    assert paths == 1

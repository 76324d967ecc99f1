"""The transactional writer: tasks, trajectories and steps together, all or nothing."""

import pytest

from eef_tasks import records, store


def record(**overrides):
    fields = dict(traj_id="t1", task_id="sw/boil/1", env="scienceworld", split="train",
                  instruction="boil water", source="expert", expert="gold", reward=1.0,
                  steps=[records.StepRecord(action="look around", observation="a kitchen")])
    fields.update(overrides)
    return records.TrajectoryRecord(**fields)


def test_explicit_task_details_win_over_the_bare_task_of_a_record(tmp_path):
    task = records.TaskRecord(task_id="sw/boil/1", env="scienceworld", split="train",
                              instruction="boil water", max_steps=30, meta={"variation": 1})
    with store.writer(tmp_path / "s.duckdb") as con:
        records.write_trajectories(con, [record()], tasks=[task])
        assert con.execute("SELECT max_steps, meta->>'variation' FROM tasks").fetchall() == [(30, "1")]


def test_a_failing_batch_writes_nothing(tmp_path):
    with store.writer(tmp_path / "s.duckdb") as con:
        good = record()
        orphan = record(traj_id="t2", task_id="sw/melt/1", env=None, split=None, instruction=None)
        with pytest.raises(store.StoreError, match="sw/melt/1"):
            records.write_trajectories(con, [good, orphan])
        assert con.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM trajectories), "
                           "(SELECT count(*) FROM steps)").fetchall() == [(0, 0, 0)]


def test_same_id_twice_in_one_batch_with_different_content_is_refused(tmp_path):
    with store.writer(tmp_path / "s.duckdb") as con:
        with pytest.raises(store.StoreError, match="appears twice"):
            records.write_trajectories(con, [record(), record(reward=0.5)])


def test_derived_id_is_stable_and_content_based():
    a = record(traj_id=None)
    b = record(traj_id=None)
    c = record(traj_id=None, reward=0.5)
    assert a.traj_id == b.traj_id != c.traj_id
    assert a.traj_id.startswith("expert-")

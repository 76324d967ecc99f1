"""Worked examples of the offline baselines' selection rules: sft-all and nat (sql/select/expert_examples.sql).

Hand-checked store: train task t1 has an expert success e1 (3 actions) and an expert failure e2 (4
actions); train task t2 has only a failure e3 (2 actions); dev task d1 has an expert success e4
(held out: never trained on); the run also has a policy success on t1 (never an expert example).
- bc (SFT-POS): e1 only.
- sft-all: e1 (expert_success), e2 and e3 (expert_failure), all with loss from step 0, no tag.
- nat: the same rows, tagged positive (e1) and negative (e2, e3).
"""

from __future__ import annotations

import pytest
from store_builders import RUN, StoreBuilder, select_checked

from eef_tasks import chat, selection
from eef_tasks.store import StoreError


def build_store(b: StoreBuilder) -> None:
    b.task("t1")
    b.task("t2")
    b.task("d1", split="dev")
    b.expert("e1", "t1", n_steps=3, success=True)
    b.expert("e2", "t1", n_steps=4, success=False)
    b.expert("e3", "t2", n_steps=2, success=False)
    b.expert("e4", "d1", n_steps=2, success=True)
    b.rollout("p1", "t1", iteration=1, success=True)


def rows_with_tags(con, method: str) -> list[tuple]:
    return con.execute(
        """SELECT traj_id, loss_from_step, state_kind, state_traj_id, state_step, task_id, prompt_tag
           FROM training_examples WHERE run_id = $r AND iteration = 0 AND method = $m ORDER BY traj_id""",
        {"r": RUN, "m": method},
    ).fetchall()


def test_bc_is_sft_pos_expert_successes_only(con, build):
    build_store(build)
    assert [ex.traj_id for ex in select_checked(con, RUN, 0, "bc")] == ["e1"]


def test_sft_all_keeps_every_expert_trajectory_of_train_tasks(con, build):
    build_store(build)
    select_checked(con, RUN, 0, "sft-all")
    assert rows_with_tags(con, "sft-all") == [
        ("e1", 0, "expert_success", None, 0, "t1", None),
        ("e2", 0, "expert_failure", None, 0, "t1", None),
        ("e3", 0, "expert_failure", None, 0, "t2", None),
    ]


def test_nat_tags_each_expert_trajectory_with_its_outcome(con, build):
    build_store(build)
    select_checked(con, RUN, 0, "nat")
    assert rows_with_tags(con, "nat") == [
        ("e1", 0, "expert_success", None, 0, "t1", "positive"),
        ("e2", 0, "expert_failure", None, 0, "t1", "negative"),
        ("e3", 0, "expert_failure", None, 0, "t2", "negative"),
    ]


def test_baselines_are_idempotent_and_leave_other_methods_alone(con, build):
    build_store(build)
    select_checked(con, RUN, 0, "bc")
    select_checked(con, RUN, 0, "nat")
    before = con.execute("SELECT * EXCLUDE (created_at) FROM training_examples ORDER BY ALL").fetchall()
    select_checked(con, RUN, 0, "nat")
    select_checked(con, RUN, 0, "sft-all")
    after = con.execute("SELECT * EXCLUDE (created_at) FROM training_examples WHERE method <> 'sft-all' "
                        "ORDER BY ALL").fetchall()
    assert after == before
    assert con.execute("SELECT method FROM runs WHERE run_id = $r", {"r": RUN}).fetchone() == ("nat",)


@pytest.mark.parametrize("method", ["sft-all", "nat"])
def test_baselines_are_iteration_zero_only(con, build, method):
    build_store(build)
    with pytest.raises(StoreError, match=f"{method} is trained once on expert data, at iteration 0"):
        selection.select_examples(con, RUN, 1, method)


def test_store_refuses_a_tag_outside_nat_and_an_untagged_nat_row(con, build):
    build_store(build)
    select_checked(con, RUN, 0, "sft-all")
    with pytest.raises(Exception, match="CHECK constraint"):
        con.execute("UPDATE training_examples SET prompt_tag = 'positive' WHERE method = 'sft-all'")
    with pytest.raises(Exception, match="CHECK constraint"):
        con.execute("""INSERT INTO training_examples (run_id, iteration, method, traj_id, loss_from_step,
                           state_kind, state_traj_id, state_step, task_id)
                       VALUES ('r', 0, 'nat', 'e1', 0, 'expert_success', NULL, 0, 't1')""")


def test_nat_marker_goes_into_the_training_chat(con, build):
    build_store(build)
    select_checked(con, RUN, 0, "nat")
    negative = chat.load_chat(con, "e2", 0, "negative")
    assert negative[1].content == "solve t1\n\n" + chat.PROMPT_TAGS["negative"]
    assert [t.supervised for t in negative if t.role == "assistant"] == [True] * 4
    positive = chat.load_chat(con, "e1", 0, "positive")
    assert positive[1].content.endswith(chat.PROMPT_TAGS["positive"])
    untagged = chat.load_chat(con, "e1", 0)
    assert untagged[1].content == "solve t1"
    assert [t.content for t in untagged[2:]] == [t.content for t in positive[2:]]
    with pytest.raises(StoreError, match="unknown prompt tag"):
        chat.load_chat(con, "e1", 0, "neutral")


def test_migration_0005_upgrades_a_version_4_store_keeping_its_examples(tmp_path):
    """A store made before 0005 (training_examples without prompt_tag, runs without search)."""
    import hashlib

    import duckdb

    from eef_tasks import store

    path = tmp_path / "v4.duckdb"
    con = duckdb.connect(str(path))
    con.execute("""CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
                   checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp);
                   CREATE TABLE schema_views (name VARCHAR PRIMARY KEY, checksum VARCHAR NOT NULL,
                   applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""")
    for version, name, file in store.migration_files()[:4]:
        text = file.read_text()
        con.execute(text)
        con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                    [version, name, hashlib.sha256(text.encode()).hexdigest()[:16]])
    con.execute("INSERT INTO runs (run_id, n_sims, method) VALUES ('old', 2, 'eef')")
    con.execute("INSERT INTO training_examples (run_id, iteration, method, traj_id, loss_from_step, state_kind, "
                "state_traj_id, state_step, task_id) VALUES ('old', 1, 'eef', 'x', 3, 'need_recover', 'e', 3, 't')")
    con.close()
    with store.writer(path) as con:  # migrates
        assert con.execute("SELECT * EXCLUDE (created_at) FROM training_examples").fetchall() == [
            ("old", 1, "eef", "x", 3, "need_recover", "e", 3, "t", None)]
        assert con.execute("SELECT run_id, n_sims, method, search FROM runs").fetchall() == [("old", 2, "eef", "uniform")]

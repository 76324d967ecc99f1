"""Import and export: the eef JSONL format, ETO/AgentGym conversations, errors and round trips."""

import io
import json
from pathlib import Path

import pytest

from eef_tasks import records, store, trajectory_io

DATA = Path(__file__).parent / "data"


def trajectory(**overrides):
    record = {
        "traj_id": "e1", "task_id": "toy/1", "env": "toy", "split": "train",
        "instruction": "make tea", "source": "expert", "expert": "gold", "reward": 0.5,
        "steps": [
            {"thought": "find kettle", "action": "go kitchen", "observation": "In the kitchen."},
            {"action": "boil water", "observation": "Water boils."},
        ],
    }
    record.update(overrides)
    return record


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def counts(con):
    return {
        table: con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        for table in ("tasks", "trajectories", "steps")
    }


def test_jsonl_import_derives_success_and_n_steps(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [trajectory(), trajectory(traj_id="e2", reward=1.0)])
    with store.writer(tmp_path / "s.duckdb") as con:
        result = trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(path))
        rows = con.execute("SELECT traj_id, success, n_steps FROM trajectories ORDER BY 1").fetchall()
    assert result == records.WriteResult(1, 2, 0, 4)
    assert rows == [("e1", False, 2), ("e2", True, 2)]


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ("not json", "(line)", "invalid JSON"),
        (json.dumps(trajectory(reward=1.5)), "reward", "less than or equal to 1"),
        (json.dumps(trajectory(steps=[{"action": "a"}])), "steps[0].observation", "Field required"),
        (json.dumps(trajectory(success=True)), "(record)", "disagrees with reward"),
        (json.dumps(trajectory(n_steps=5)), "(record)", "n_steps=5"),
        (json.dumps(trajectory(colour="red")), "colour", "Extra inputs"),
        (json.dumps(trajectory(source="policy")), "(record)", "purpose is required"),
    ],
)
def test_malformed_record_names_line_and_field_and_writes_nothing(tmp_path, line, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(trajectory(traj_id="good")) + "\n\n" + line + "\n")
    with pytest.raises(trajectory_io.ImportFileError) as raised:
        trajectory_io.read_eef_jsonl(path)
    assert raised.value.line == 3
    assert raised.value.field == field
    assert problem in raised.value.problem
    assert f"line 3, field {field}" in str(raised.value)


def test_unknown_task_without_description_fails_the_whole_file(tmp_path):
    rows = [trajectory(), {k: v for k, v in trajectory(traj_id="e2", task_id="toy/2").items()
                          if k not in ("env", "split", "instruction")}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    with store.writer(tmp_path / "s.duckdb") as con:
        with pytest.raises(store.StoreError, match="toy/2"):
            trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(path))
        assert counts(con) == {"tasks": 0, "trajectories": 0, "steps": 0}


def test_reimport_skips_identical_and_refuses_conflicting(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [trajectory()])
    with store.writer(tmp_path / "s.duckdb") as con:
        trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(path))
        again = trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(path))
        assert (again.trajectories_added, again.trajectories_skipped) == (0, 1)
        changed = write_jsonl(tmp_path / "b.jsonl", [trajectory(reward=0.25)])
        with pytest.raises(store.StoreError, match="different content"):
            trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(changed))
        clash = write_jsonl(tmp_path / "c.jsonl", [trajectory(traj_id="e9", split="dev")])
        with pytest.raises(store.StoreError, match="already stored"):
            trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(clash))
        assert counts(con) == {"tasks": 1, "trajectories": 1, "steps": 2}


def test_eto_conversations_become_trajectories(tmp_path):
    recs = trajectory_io.read_conversations(
        DATA / "eto_sciworld_sample.json", env="scienceworld", expert="gpt-4", reward=1.0
    )
    boil = recs[0]
    assert boil.task_id == "scienceworld/boil_12"
    assert boil.instruction.startswith("Your task is to boil water.")
    assert [s.action for s in boil.steps] == ["teleport to kitchen", "look around", "focus on water"]
    assert boil.steps[0].thought == "Water is likely in the kitchen."
    assert boil.steps[0].observation == "You teleport to the kitchen."
    assert boil.steps[-1].observation == ""  # the final action has no observation in the file
    assert boil.success and boil.expert == "gpt-4" and boil.source == "expert"
    assert recs[1].steps[1].thought is None and recs[1].steps[1].action == "open freezer"


def test_agentgym_webshop_rewards_per_record(tmp_path):
    recs = trajectory_io.read_conversations(
        DATA / "agentgym_webshop_sample.jsonl", env="webshop", expert="gpt-4"
    )
    assert [(r.task_id, r.reward, r.success) for r in recs] == [
        ("webshop/webshop_7", 1.0, True), ("webshop/webshop_9", 0.5, False)]
    assert recs[0].instruction.startswith("WebShop [SEP] Instruction:")
    assert recs[0].steps[0].action == "search[l'eau d'issey 6.76 fl oz bottle price < 100.00]"
    assert recs[0].steps[0].thought == "I think I should search for l'eau d'issey 6.76 fl oz."


@pytest.mark.parametrize(
    ("conversations", "field", "problem"),
    [
        ([], "conversations", "missing or empty"),
        ([{"from": "human", "value": "go"}, {"from": "gpt", "value": "I will not act"}],
         "conversations[1].value", "no 'Action"),
        ([{"from": "human", "value": "go"}, {"from": "robot", "value": "Action: x"}],
         "conversations[1].from", "expected 'human' or 'gpt'"),
        ([{"from": "human", "value": "go"}, {"from": "gpt", "value": "Action: a"},
          {"from": "gpt", "value": "Action: b"}], "conversations[2].from", "expected a 'human' turn"),
    ],
)
def test_malformed_conversation_is_reported(tmp_path, conversations, field, problem):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": 1, "conversations": [{"from": "human", "value": "go"}, {"from": "gpt", "value": "Action: a"}]},
        {"id": 2, "conversations": conversations},
    ])
    with pytest.raises(trajectory_io.ImportFileError) as raised:
        trajectory_io.read_conversations(path, env="toy", reward=1.0)
    assert (raised.value.line, raised.value.field) == (2, field)
    assert problem in raised.value.problem


def test_conversations_need_a_reward(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": 1, "conversations": [{"from": "human", "value": "go"}, {"from": "gpt", "value": "Action: a"}]}])
    with pytest.raises(trajectory_io.ImportFileError, match="--reward"):
        trajectory_io.read_conversations(path, env="toy")


def test_export_then_import_round_trips(tmp_path):
    source = [
        trajectory(meta={"tokens": 12}),
        trajectory(traj_id="p1", run_id="r", source="policy", expert=None, model_id="m", iteration=1,
                   purpose="simulate", branch_traj_id="e1", branch_step=1, reward=1.0),
    ]
    with store.writer(tmp_path / "a.duckdb") as con:
        trajectory_io.import_records(con, [records.TrajectoryRecord.model_validate(r) for r in source], n_sims=3)
        buffer = io.StringIO()
        assert trajectory_io.export_jsonl(con, buffer) == 2
        original = con.execute("SELECT * EXCLUDE (created_at) FROM trajectories ORDER BY 1").fetchall()
        original_steps = con.execute("SELECT * FROM steps ORDER BY 1, 2").fetchall()
    exported = tmp_path / "out.jsonl"
    exported.write_text(buffer.getvalue())
    with store.writer(tmp_path / "b.duckdb") as con:
        trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(exported))
        assert con.execute("SELECT * EXCLUDE (created_at) FROM trajectories ORDER BY 1").fetchall() == original
        assert con.execute("SELECT * FROM steps ORDER BY 1, 2").fetchall() == original_steps
        only_policy = io.StringIO()
        assert trajectory_io.export_jsonl(con, only_policy, source="policy") == 1
        exported_policy = json.loads(only_policy.getvalue())
        assert exported_policy["traj_id"] == "p1" and exported_policy["run_n_sims"] == 3
        # the run came with its M, registered in the import's transaction
        assert con.execute("SELECT run_id, n_sims FROM runs").fetchall() == [("r", 3)]


def test_export_carries_a_runs_search_method_and_experts(tmp_path):
    """A binary-search run (M = 0) learning from one expert: its runs row comes back whole on import."""
    source = [
        trajectory(),
        trajectory(traj_id="p1", run_id="rb", source="policy", expert=None, model_id="m", iteration=1,
                   purpose="simulate", branch_traj_id="e1", branch_step=1, reward=1.0),
    ]
    with store.writer(tmp_path / "a.duckdb") as con:
        trajectory_io.import_records(con, [records.TrajectoryRecord.model_validate(r) for r in source], n_sims=0)
        con.execute("UPDATE runs SET search = 'binary', method = 'eef', experts = ['gold'] WHERE run_id = 'rb'")
        buffer = io.StringIO()
        trajectory_io.export_jsonl(con, buffer, source="policy")
    line = json.loads(buffer.getvalue())
    assert (line["run_n_sims"], line["run_search"], line["run_method"], line["run_experts"]) == (0, "binary", "eef",
                                                                                                ["gold"])
    (tmp_path / "out.jsonl").write_text(buffer.getvalue())
    with store.writer(tmp_path / "b.duckdb") as con:
        trajectory_io.import_records(con, [records.TrajectoryRecord.model_validate(trajectory())])
        trajectory_io.import_records(con, trajectory_io.read_eef_jsonl(tmp_path / "out.jsonl"))
        assert con.execute("SELECT run_id, n_sims, search, method, experts FROM runs").fetchall() == [
            ("rb", 0, "binary", "eef", ["gold"])]
    conflicting = dict(line, traj_id="p2", run_search="uniform")
    with store.writer(tmp_path / "b.duckdb") as con, pytest.raises(records.RecordError, match="search = 'binary'"):
        trajectory_io.import_records(con, [records.TrajectoryRecord.model_validate(conflicting)])
    with pytest.raises(ValueError, match="expert trajectories have none"):
        records.TrajectoryRecord.model_validate(trajectory(run_search="binary"))

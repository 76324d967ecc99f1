"""`eef evaluate` through the real console script: real SmolLM2 in real ScienceWorld, greedy,
stored as purpose='eval', resumable, never on training tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eef_tasks import store
from eef_tasks.evaluation import eval_tasks

from game import needs_java  # noqa: E402

EEF = Path(sys.executable).with_name("eef")


def test_eval_tasks_leave_out_tasks_that_are_also_train() -> None:
    from eef_tasks.envs.scienceworld import catalog, find_task

    dev = [s.task_id for s in catalog("dev", tasks=["find-animal"])]
    chosen = eval_tasks("dev", ["find-animal"])
    assert chosen and len(chosen) < len(dev)
    assert all(find_task(t).split == "dev" for t in chosen)
    assert eval_tasks("dev", ["find-animal"], limit=2) == chosen[:2]


@needs_java
@pytest.mark.timeout(300)
def test_evaluate_command_stores_eval_trajectories(tmp_path) -> None:
    db = tmp_path / "eef.duckdb"
    args = [str(EEF), "evaluate", "--db", str(db), "--run", "base-eval", "--split", "dev",
            "--tasks", "lifespan-shortest-lived", "--limit", "2", "--max-steps", "2", "--max-new-tokens", "12",
            "--workers", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EEF_TORCH_THREADS": "1"}
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "base-eval/base on 2 dev tasks: win rate" in first.stdout and "2 new" in first.stdout
    with store.reader(db) as con:
        rows = con.execute("""SELECT t.purpose, k.split, t.meta->>'$.sampling.temperature'
                              FROM trajectories t JOIN tasks k USING (task_id)""").fetchall()
    assert rows == [("eval", "dev", "0.0")] * 2
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "0 new, 2 already stored" in again.stdout
    bad = subprocess.run([str(EEF), "evaluate", "--db", str(db), "--split", "train"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode == 1 and "'dev' or 'test'" in bad.stderr and "Traceback" not in bad.stderr

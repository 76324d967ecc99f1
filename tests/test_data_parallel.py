"""Data-parallel LoRA training under `accelerate launch`: two real CPU processes (gloo) train the
same adapter as one process, step for step (the real SmolLM2, a real store)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from eef_tasks.training import TrainConfig, read_train_record  # noqa: E402
from test_training import RUN, db  # noqa: E402,F401  (the module's store fixture)

# Opt-in (EEF_TEST_DATA_PARALLEL=1): the trainings in fresh processes, ~1.3 min for both on 2 quiet
# cores, which the CI budget (30 min for the whole suite) does not leave room for.
SLOW = [pytest.mark.slow, pytest.mark.timeout(900),
        pytest.mark.skipif(__import__("os").environ.get("EEF_TEST_DATA_PARALLEL") != "1",
                           reason="opt-in (EEF_TEST_DATA_PARALLEL=1): over the CI budget")]


def slow(test):
    for mark in SLOW:
        test = mark(test)
    return test

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
# 3 examples, one per micro-batch, 4 per step: process 0 takes two micro-batches, process 1 one
CONFIG = TrainConfig(epochs=2, learning_rate=3e-3, batch_size=4, micro_batch=1, max_length=256, lora_r=8,
                     lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], warmup_ratio=0.0,
                     lr_scheduler="constant", seed=7, max_steps=2)
SCRIPT = """
import sys
from eef_tasks.training import TrainConfig, train_adapter
train_adapter(sys.argv[1], sys.argv[2], 0, "bc", sys.argv[3], TrainConfig.model_validate_json(sys.argv[4]), progress=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(db: Path, out: Path, processes: int, run: str = RUN, config: TrainConfig = CONFIG,
           launch_config: str = "ddp-cpu.yaml") -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    script = out.parent / "train.py"
    script.write_text(SCRIPT)
    args = [str(script), str(db), run, str(out), config.model_dump_json()]
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "configs/accelerate" / launch_config),
               "--num_processes", str(processes), "--main_process_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=800,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_train_record(out)


@slow
def test_two_processes_train_the_adapter_one_process_trains(db, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    one = _train(db, tmp_path / "one" / "bc-it0", 1)
    two = _train(db, tmp_path / "two" / "bc-it0", 2)
    assert two["data_parallel"] == {"processes": 2, "backend": "gloo"} and "data_parallel" not in one
    assert one["n_optimizer_steps"] == two["n_optimizer_steps"] == 2
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    a = load_file(tmp_path / "one" / "bc-it0" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "bc-it0" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-6), name
    # and training moved the weights: the comparison is not between two untouched adapters
    assert any(float(t.abs().max()) > 0 for n, t in a.items() if "lora_B" in n)


@slow
def test_fsdp_ranks_train_the_adapter_one_process_trains(db, tmp_path):  # noqa: F811
    """`accelerate launch` with configs/accelerate/fsdp-cpu.yaml: two gloo ranks each hold half of
    every decoder layer (FSDP2, `sharding: auto` read off accelerate's environment), gather it for
    their passes, and train the adapter one process trains; of each step's three micro-batches rank 0
    takes two and rank 1 one, so rank 1 also runs the zero-weighted pass that keeps the collectives
    in step."""
    from safetensors.torch import load_file

    config = CONFIG.model_copy(update={"compile": False})  # FSDP trains without compile: so does the reference
    one = _train(db, tmp_path / "one" / "bc-it0", 1, config=config)
    two = _train(db, tmp_path / "fsdp" / "bc-it0", 2, config=config, launch_config="fsdp-cpu.yaml")
    assert two["n_optimizer_steps"] == 2 and two["sharded_layers"] == 30 and one["sharded_layers"] == 0
    assert two["data_parallel"] == {"processes": 2, "backend": "gloo", "sharding": "fsdp"}
    assert two["trainable_parameters"] == one["trainable_parameters"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    a = load_file(tmp_path / "one" / "bc-it0" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fsdp" / "bc-it0" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name].shape == b[name].shape and torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-6), name
    assert any(float(t.abs().max()) > 0 for n, t in b.items() if "lora_B" in n)


def _rank_processes() -> list[int]:
    """pids of live `eef_tasks.data_parallel` ranks (any test's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"eef_tasks.data_parallel" in cmdline and b"-m" in cmdline and b"torch.distributed.run" not in cmdline:
                pids.append(int(proc.name))
    return pids


@slow
def test_the_pipelines_train_phase_in_two_processes(tmp_path):
    """`train_processes=2`: the train phase, in its own phase process as the flows run it, starts two
    torchrun ranks that train the adapter one process trains; the phase is marked once; a SIGTERM
    mid-training stops the phase and leaves no rank behind; the rerun trains from scratch."""
    import os
    import signal
    import time

    from safetensors.torch import load_file

    from eef_tasks import pipeline, store
    from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord, write_trajectories
    config = CONFIG.model_copy(update={"max_length": 1024})  # ScienceWorld's prompt is ~600 tokens
    tasks = ["scienceworld/boil/1", "scienceworld/melt/2", "scienceworld/freeze/3"]
    db = tmp_path / "eef.duckdb"
    with store.writer(db) as con:
        write_trajectories(con, [
            TrajectoryRecord(traj_id=f"e/{i}", task_id=t, source="expert", expert="gold", iteration=0,
                             purpose="expert", reward=1.0 if i < 2 else 0.0,
                             steps=[StepRecord(action=f"look at thing {k}", observation=f"You see thing {k}.")
                                    for k in range(3 + i)])
            for i, t in enumerate(tasks)
        ], tasks=[TaskRecord(task_id=t, env="scienceworld", split="train", instruction=f"Your task is to {t[13:-2]}.")
                  for t in tasks])
    run = pipeline.RunConfig(run_id="dp", method="eef", n_sims=1, iterations=1, eval_split="dev", eval_limit=1,
                             adapters_dir=str(tmp_path / "adapters"), train=config, train_processes=2)
    pipeline.register_run(db, run)
    assert pipeline.run_phase(db, "dp", 0, "select")["n_examples"] == 2

    # stopped mid-training: the phase process goes with status 143, its ranks within seconds
    cmd = [sys.executable, "-m", "eef_tasks.pipeline", "train", "--db", str(db), "--run", "dp", "--iteration", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "EEF_TORCH_THREADS": "2"})
    seen: list[str] = []
    for line in proc.stdout:  # until rank 0 has its model and starts the optimizer steps
        seen.append(line)
        if "rank0" in line and "optimizer steps" in line:
            break
    assert len(_rank_processes()) == 2, "".join(seen)[-3000:]
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    deadline = time.monotonic() + 30
    while _rank_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _rank_processes() == []
    assert (0, "train") not in pipeline.finished_phases(db, "dp")
    assert not (tmp_path / "adapters" / "dp" / "bc-it0" / "adapter_config.json").exists()

    logs: list[str] = []
    summary = pipeline.run_phase_process(db, "dp", 0, "train", on_log=logs.append, env={"EEF_TORCH_THREADS": "2"})
    assert summary["n_examples"] == 2 and summary["n_optimizer_steps"] == 2
    assert any("2 data-parallel processes, 1 torch thread(s) each" in line for line in logs)
    two = read_train_record(summary["adapter"])
    assert two["data_parallel"] == {"processes": 2, "backend": "gloo"}
    with store.reader(db) as con:
        assert con.execute("SELECT count(*) FROM run_phases WHERE run_id = 'dp' AND phase = 'train'").fetchone() == (1,)
    assert pipeline.run_phase(db, "dp", 0, "train")["skipped"] is True  # marked: not trained again

    # one process on one thread, as each rank ran: the same kernels, so the same sums to float rounding
    one = tmp_path / "one" / "bc-it0"
    assert two["losses"] == pytest.approx(_train(db, one, 1, "dp", config)["losses"], rel=1e-4)
    a, b = load_file(one / "adapter_model.safetensors"), load_file(Path(summary["adapter"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-6), name


def test_a_rank_is_not_a_command_and_one_process_is_not_data_parallel(tmp_path, monkeypatch, capsys):
    from eef_tasks.data_parallel import DataParallelError, _rank_errors, main, rank_threads, train_in_processes

    job = tmp_path / "job.json"
    job.write_text("{}")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main([str(job)]) == 2
    assert "started by torchrun" in capsys.readouterr().err
    with pytest.raises(DataParallelError, match="2 or more processes, not 1"):
        train_in_processes(tmp_path / "eef.duckdb", "r", 0, "bc", tmp_path / "out", CONFIG, processes=1)
    assert [rank_threads(t, 2) for t in (1, 2, 3, 8)] == [1, 1, 1, 4]
    assert _rank_errors(["rank 1: X", "rank 0: X", "rank 0: Y"]) == "ranks 0, 1: X; rank 0: Y"
    from eef_tasks.training import resolve_sharding

    assert resolve_sharding(CONFIG) == "none"
    assert resolve_sharding(CONFIG.model_copy(update={"sharding": "fsdp"})) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    assert resolve_sharding(CONFIG) == "fsdp"
    assert resolve_sharding(CONFIG.model_copy(update={"sharding": "none"})) == "none"


@pytest.mark.timeout(300)
def test_failing_ranks_fail_the_training_with_their_error_and_write_nothing(tmp_path):
    """Real torchrun, two real ranks, a run with no examples: the ranks' own error comes back in
    one DataParallelError, and no adapter folder is left."""
    from eef_tasks import store
    from eef_tasks.data_parallel import DataParallelError, train_in_processes

    db = tmp_path / "eef.duckdb"
    with store.writer(db):
        pass
    out = tmp_path / "adapters" / "bc-it0"
    with pytest.raises(DataParallelError) as err:
        train_in_processes(db, "nobody", 0, "bc", out, CONFIG, processes=2, threads=2)
    text = str(err.value)
    assert text.startswith("data-parallel training of nobody bc it0 in 2 processes failed (torchrun exit status 1)")
    assert "\n" not in text and text.endswith("): ranks 0, 1: no training examples for run 'nobody', iteration 0, "
                                            "method 'bc': run `eef select --run nobody --iteration 0 --method bc` first"), text
    assert not out.exists()


@pytest.mark.timeout(300)
def test_a_rank_killed_by_a_signal_fails_the_training_in_one_line(db, tmp_path):  # noqa: F811
    """Real torchrun, two real ranks, one SIGKILLed as soon as it runs: no rank writes an `error:`
    line, so the error is torchrun's own cause for that rank, in one line; nothing is written."""
    import os
    import signal
    import threading
    import time

    from eef_tasks.data_parallel import DataParallelError, train_in_processes

    out, raised = tmp_path / "adapters" / "bc-it0", []

    def train() -> None:
        try:
            train_in_processes(db, RUN, 0, "bc", out, CONFIG, processes=2, threads=2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            raised.append(exc)

    worker = threading.Thread(target=train)
    worker.start()
    deadline = time.monotonic() + 120
    while len(ranks := _rank_processes()) < 2 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert len(ranks) == 2, raised
    os.kill(max(ranks), signal.SIGKILL)
    worker.join(timeout=180)
    assert not worker.is_alive() and len(raised) == 1 and isinstance(raised[0], DataParallelError), raised
    text = str(raised[0])
    assert "\n" not in text and "(torchrun exit status 1): rank " in text, text
    assert "exit code -9, Signal 9 (SIGKILL) received by PID" in text, text
    assert not out.exists()


def test_torchrun_failure_report_and_a_rank_crash_become_one_line(monkeypatch, capsys, tmp_path):
    """The report torchrun prints for failed ranks (made by torch's own ChildFailedError) becomes
    'rank N: exit code C, cause'; a rank's exception of any kind becomes its `error:` line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    import eef_tasks.training
    from eef_tasks.data_parallel import _torchrun_failures, main

    failures = {1: ProcessFailure(local_rank=1, pid=4321, exitcode=-9, error_file="/nonexistent"),
                0: ProcessFailure(local_rank=0, pid=4320, exitcode=1, error_file="/nonexistent")}
    report = ["W1204 some log line", *str(ChildFailedError("eef_tasks.data_parallel", failures)).splitlines()]
    assert _torchrun_failures(report) == ("rank 1: exit code -9, Signal 9 (SIGKILL) received by PID 4321; "
                                          "rank 0: exit code 1")  # the root cause first
    assert _torchrun_failures(["", "RuntimeError: port taken", ""]) == \
        "no rank reported an error; torchrun's last line: RuntimeError: port taken"

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access\nmore detail")

    monkeypatch.setattr(eef_tasks.training, "train_adapter", crash)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"db": "x", "run": "r", "iteration": 0, "method": "bc", "out": str(tmp_path / "o"),
                               "config": CONFIG.model_dump(mode="json"), "base_model": None, "threads": 1}))
    assert main([str(job)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "error: rank 0: RuntimeError: CUDA error: an illegal memory access"
    assert any(line.startswith("Traceback") for line in err)  # the traceback stays in the log


@pytest.mark.timeout(300)
def test_fsdp_refuses_full_fine_tuning_in_one_line(db, tmp_path):  # noqa: F811
    from eef_tasks.data_parallel import DataParallelError, train_in_processes

    config = CONFIG.model_copy(update={"sharding": "fsdp", "finetune": "full", "compile": False})
    with pytest.raises(DataParallelError, match=r"ranks 0, 1: sharding='fsdp' trains LoRA adapters only: full "
                                                r"fine-tuning under FSDP is not supported yet$"):
        train_in_processes(db, RUN, 0, "bc", tmp_path / "bc-it0", config, processes=2, threads=2)
    assert not (tmp_path / "bc-it0").exists()

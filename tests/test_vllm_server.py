"""The real vLLM server as eef starts it (`eef_tasks.engines.vllm_server`): its command for this
machine, and the pipeline's own server with `engine = "vllm"` and no URL, which
lives exactly as long as the phase process (a SIGKILLed phase leaves no server behind).

(`eef vllm serve` is the real server of tests/test_vllm_engine.py.) The command-line tests need
no vLLM; the others run against the real server from `make vllm`'s
`.vllm-venv` (marker `real_vllm`: run last, skipped with the reason without it; tests/real_vllm.py)
on real ScienceWorld episodes in a real DuckDB file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eef_tasks import pipeline, store
from eef_tasks.engines.vllm import VLLMError
from eef_tasks.engines.vllm_server import ServerSpec, VLLMServer, kv_cache_gib
from eef_tasks.pipeline import RunConfig
from eef_tasks.pipeline.runs import BC_PHASES, mark_phase
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord, write_trajectories
from eef_tasks.training import TrainConfig

from game import needs_java  # noqa: E402
from real_vllm import SERVER_MODULE, alive_in_group, processes, real_vllm_venv, server_children, wait_gone  # noqa: E402

TRAIN = "scienceworld/find-living-thing/0"


# --- the command, without a server --------------------------------------------------------------------


def test_cpu_command_has_the_flags_that_keep_vllm_cpu_alive(monkeypatch) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/.venv")
    spec = ServerSpec(model="/m", port=8123, lora_rank=16, kv_cache_gib=3, api_key="sk-" + "x" * 20)
    argv = spec.argv("/v/bin/python")
    assert argv[:3] == ["/v/bin/python", "-m", SERVER_MODULE]  # not the `vllm` console script
    text = " ".join(argv)
    for flag in ("--model /m", "--port 8123", "--dtype bfloat16", "--enable-lora --max-lora-rank 16",
                 "--no-enable-chunked-prefill", "--max-num-batched-tokens 8192", "--max-model-len 8192",
                 "--enable-prompt-tokens-details"):
        assert flag in text
    assert "sk-" not in text  # the key goes in the environment, never on a command line (`ps`)
    env = spec.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["VLLM_API_KEY"] == "sk-" + "x" * 20 and "VIRTUAL_ENV" not in env
    gpu = ServerSpec(model="/m", device="cuda", lora_rank=None).argv("python")
    assert "--no-enable-chunked-prefill" not in gpu and "--enable-lora" not in gpu
    assert "--gpu-memory-utilization" in gpu
    assert [kv_cache_gib(g) for g in (0.5, 6, 20, 100)] == [1, 1, 5, 8]


def test_without_the_venv_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EEF_VLLM_VENV", str(tmp_path / "nothing"))
    with pytest.raises(VLLMError, match="make vllm"):
        VLLMServer(ServerSpec(model="/m"))
    eef = shutil.which("eef", path=str(Path(sys.executable).parent)) or "eef"
    proc = subprocess.run([eef, "vllm", "serve", "--port", "0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EEF_VLLM_VENV": str(tmp_path / "nothing")})
    assert proc.returncode == 1 and "make vllm" in proc.stderr and "Traceback" not in proc.stderr


# --- against the real server --------------------------------------------------------------------------


def _server_child_of(parent: int, proc: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the phase process exited ({proc.returncode})"
        if children := server_children(parent):
            return children[0]
        time.sleep(0.5)
    pytest.fail("the phase process started no vLLM server")


@pytest.fixture(scope="module")
def vllm_venv() -> Path:
    return real_vllm_venv()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A real peft LoRA adapter (r=8 on q/v, small random weights) of the default model."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    from eef_tasks.models import default_model_path

    lora = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(default_model_path()),
                               peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    out = tmp_path_factory.mktemp("adapter") / "bc-it0"
    lora.save_pretrained(out)
    return out


def test_merge_adapter_writes_base_plus_the_low_rank_update(adapter, tmp_path) -> None:
    """The merged checkpoint a server without LoRA serves (vllm_adapters = merged): every targeted
    weight is W + (alpha / r) * B @ A, computed here by hand in float32, rounded once to bfloat16;
    untouched weights are the base's; config and tokenizer beside them. No vLLM needed."""
    import torch
    from safetensors.torch import load_file

    from eef_tasks.engines.vllm_server import merge_adapter
    from eef_tasks.models import default_model_path

    assert merge_adapter(None, adapter, tmp_path / "m") > 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    merged = load_file(tmp_path / "m" / "model.safetensors")
    base = load_file(default_model_path() / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.3.self_attn."
    a, b = lora[prefix + "q_proj.lora_A.weight"].float(), lora[prefix + "q_proj.lora_B.weight"].float()
    want = base["model.layers.3.self_attn.q_proj.weight"].float() + (16 / 8) * b @ a
    got = merged["model.layers.3.self_attn.q_proj.weight"]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want.to(torch.bfloat16))
    assert not torch.equal(got, base["model.layers.3.self_attn.q_proj.weight"].to(torch.bfloat16))
    assert torch.equal(merged["model.layers.3.self_attn.k_proj.weight"],
                       base["model.layers.3.self_attn.k_proj.weight"].to(torch.bfloat16))


def _explore_phase(tmp_path: Path, vllm_venv: Path, adapter: Path, **settings) -> tuple[Path, list[str], dict]:
    """A run whose iteration 0 is `adapter`, ready for its iteration-1 explore phase process on the
    pipeline's own vLLM server: the store, the phase's command and its environment."""
    db = tmp_path / "eef.duckdb"
    with store.writer(db) as con:
        write_trajectories(con, [TrajectoryRecord(
            traj_id="e/0", task_id=TRAIN, source="expert", expert="synthetic", iteration=0, purpose="expert",
            reward=1.0, steps=[StepRecord(action="look around", observation="This room is called the hallway.")])],
            tasks=[TaskRecord(task_id=TRAIN, env="scienceworld", split="train", instruction="find a living thing")])
    config = RunConfig(run_id="v", method="rft", n_sims=0, iterations=1, engine="vllm", train_tasks=[TRAIN],
                       eval_tasks=["scienceworld/find-living-thing/161"], workers=1, max_steps=2, max_new_tokens=12,
                       train=TrainConfig(lora_r=8), adapters_dir=str(tmp_path / "adapters"), **settings)
    pipeline.register_run(db, config)
    for phase in BC_PHASES:  # iteration 0 as if it had run: its adapter is `adapter`
        mark_phase(db, "v", 0, phase, time.time(), {"adapter": str(adapter)} if phase == "train" else {})
    env = {k: v for k, v in os.environ.items() if k != "EEF_VLLM_URL"}
    env.update(EEF_VLLM_VENV=str(vllm_venv), EEF_GPU_LOCK=str(tmp_path / "slot.lock"), EEF_TORCH_THREADS="1",
               EEF_CACHE_DIR=os.environ.get("EEF_CACHE_DIR", str(Path.home() / ".cache" / "eef")),
               TMPDIR=str(tmp_path))
    cmd = [sys.executable, "-m", "eef_tasks.pipeline", "explore", "--db", str(db), "--run", "v", "--iteration", "1"]
    return db, cmd, env


def _phase_result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines()
                           if line.startswith(pipeline.RESULT_PREFIX))[len(pipeline.RESULT_PREFIX):])


def _no_server_left(vllm_venv: Path) -> None:
    assert not [p for p, (_, _, state, cmdline) in processes().items()
                if SERVER_MODULE in cmdline and str(vllm_venv) in cmdline and state != "Z"]


@pytest.mark.real_vllm
@needs_java
def test_the_pipeline_serves_itself_and_a_killed_phase_leaves_no_server(vllm_venv, adapter, tmp_path) -> None:
    """engine = vllm, no URL, runtime LoRA: the explore phase process starts vLLM (LoRA rank = the
    run's), plays real episodes through it and stops it. SIGKILLed while the server runs, the phase
    takes the server (and vLLM's engine-core process) with it; the rerun then finishes the phase."""
    db, cmd, env = _explore_phase(tmp_path, vllm_venv, adapter, vllm_adapters="runtime")
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        server = _server_child_of(first.pid, first, timeout_s=120)
        time.sleep(5)  # the server is loading: vLLM's engine-core process is up too by now
        group = alive_in_group(server)
        assert server in group
        first.kill()  # SIGKILL: no clean-up code runs in the phase process
        first.wait(timeout=30)
        wait_gone(server)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()

    result = _phase_result(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900))
    assert result["written"] == 1 and result["errors"] == 0 and result["vllm_startup_s"] > 0
    assert result["vllm_adapters"] == "runtime"
    _no_server_left(vllm_venv)
    with store.reader(db) as con:
        meta = json.loads(con.execute("SELECT meta FROM trajectories WHERE run_id = 'v'").fetchone()[0])
    assert meta["engine"] == "vllm" and meta["served_model"].startswith("bc-it0-")
    assert meta["model_path"] == "smollm2-135m-instruct"


@pytest.mark.real_vllm
@needs_java
def test_the_pipeline_serves_the_adapter_merged_by_default_on_cpu(vllm_venv, adapter, tmp_path) -> None:
    """engine = vllm, no URL, vllm_adapters = auto on a CPU venv: the phase merges the adapter into a
    temporary checkpoint, serves that without LoRA (eager), plays the episode on it, then stops the
    server and removes the checkpoint; the trajectory names the served model, no runtime adapter."""
    db, cmd, env = _explore_phase(tmp_path, vllm_venv, adapter)
    result = _phase_result(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900))
    assert result["written"] == 1 and result["errors"] == 0 and result["vllm_startup_s"] > 0
    assert result["vllm_adapters"] == "merged" and result["vllm_merge_s"] >= 0
    _no_server_left(vllm_venv)
    assert not list(tmp_path.glob("eef-merged-*"))  # the merged checkpoint went with the phase
    with store.reader(db) as con:
        meta = json.loads(con.execute("SELECT meta FROM trajectories WHERE run_id = 'v'").fetchone()[0])
    assert meta["engine"] == "vllm" and meta["served_model"] == "smollm2-135m-instruct"

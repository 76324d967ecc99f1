"""`tests/openai_lora_server.py` (the stand-in for vLLM's server) as a real process, for the vllm
engine's tests: start, stop (SIGTERM) or kill (SIGKILL) it, start it again on the same port, and
use its test hooks (faults, held requests, what it received)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from eef_tasks import interrupt

import processes  # noqa: E402 - tests/processes.py

HERE = Path(__file__).parent
KEY = "sk-test-" + "7f3a9c1e5b2d4f60a8"  # the stand-in's --api-key (via $VLLM_API_KEY)
BASE = "smollm2-135m-instruct"  # the base model's served name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn:
    """tests/openai_lora_server.py in a subprocess; `stop` and `start` again keep the port."""

    kind = "stand-in"
    start_timeout_s = 180.0

    def __init__(self, model_path: Path, log: Path) -> None:
        self.model_path, self.log, self.port = model_path, log, free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
               "VLLM_API_KEY": KEY, "OMP_NUM_THREADS": "1"}  # robust on a busy 2-core machine
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "openai_lora_server.py"), "--model", str(self.model_path),
                 "--served-model-name", BASE, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
                # never outlives a killed test run; but PR_SET_PDEATHSIG fires when the *thread* that
                # started the server ends, so a restart from a timer thread goes without it
                preexec_fn=(interrupt.die_with_parent
                            if threading.current_thread() is threading.main_thread() else None),
            )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        assert self.proc is not None
        processes.wait_http(f"{self.root}/health", self.proc, self.log, timeout_s, "the stand-in server",
                            on_failure=pytest.fail, interval_s=0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, without closing anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self.proc = None

    def faults(self, *answers: dict) -> None:
        """The next chat completions get these answers ({"status", "body", "headers"})."""
        httpx.post(f"{self.root}/_test/faults", json=list(answers), timeout=10).raise_for_status()

    def hold(self) -> None:
        """Chat completions wait, once received, until `release` (or the process is killed)."""
        httpx.post(f"{self.root}/_test/hold", timeout=10).raise_for_status()

    def release(self) -> None:
        httpx.post(f"{self.root}/_test/release", timeout=10).raise_for_status()

    def received(self) -> list[dict]:
        return httpx.get(f"{self.root}/_test/requests", timeout=10).json()

    def models(self) -> dict[str, dict]:
        data = httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
        return {card["id"]: card for card in data["data"]}


def lora_adapters(model_path: Path, root: Path, seeds: dict[str, int]) -> dict[str, Path]:
    """LoRA adapters (peft, r=4 on q/v) with random weights drawn from each seed: name -> folder."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    lora = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                               peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = {}
    for name, seed in seeds.items():
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in lora.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        lora.save_pretrained(root / name)
        out[name] = root / name
    return out

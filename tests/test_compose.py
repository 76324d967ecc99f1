"""docker-compose.yml is a valid Compose file with the services eef documents.

`docker compose config -q` is the real check where the compose plugin is installed (skipped where
it is not); everywhere, the file is validated against the Compose Specification's JSON schema
(tests/data/compose-spec.json, from the compose-spec/compose-spec repository, schema/compose-spec.json)
and checked for what eef relies on: dependencies that exist, the optional GPU vLLM service with
runtime LoRA loading, the worker pointed at it, and the optional Ray cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        return subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _compose_plugin(), reason="needs docker with the compose plugin")
@pytest.mark.parametrize("profile", [None, "gpu", "ray"])
def test_docker_compose_config(profile) -> None:
    args = ["docker", "compose", "-f", str(COMPOSE)] + (["--profile", profile] if profile else []) + ["config", "-q"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_compose_file_matches_the_compose_specification(compose) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # the schema does catch mistakes
    broken = {**compose, "services": {**compose["services"], "x": {"image": "a", "gpu": 1}}}
    assert any(validator(schema).iter_errors(broken))


def test_services_and_dependencies(compose) -> None:
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker", "vllm"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "$", "~")):
                assert source in (compose.get("volumes") or {}), f"{name}: undeclared volume {source}"


def test_vllm_service(compose) -> None:
    vllm = compose["services"]["vllm"]
    image, _, tag = vllm["image"].partition(":")
    assert image == "vllm/vllm-openai" and tag and tag != "latest"  # pinned
    assert vllm["profiles"] == ["gpu"]  # optional: `docker compose up` without a GPU leaves it out
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert str(vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]) == "True"
    command = vllm["command"]
    assert {"--model", "--enable-lora", "--max-lora-rank", "--served-model-name"} <= set(command)
    assert int(command[command.index("--max-lora-rank") + 1]) >= 16  # eef train's default rank
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    # adapters are loaded by path: the server must see ./data where the worker does
    worker_data = next(v.split(":")[1] for v in compose["services"]["worker"]["volumes"] if v.startswith("./data:"))
    vllm_data = next(v.split(":")[1] for v in vllm["volumes"] if v.startswith("./data:"))
    assert worker_data == vllm_data == "/app/data"


def test_worker_knows_the_vllm_url(compose) -> None:
    env = compose["services"]["worker"]["environment"]
    assert env["EEF_VLLM_URL"] == "http://vllm:8000/v1"
    port = compose["services"]["vllm"]["command"]
    assert port[port.index("--port") + 1] == "8000"


def test_ray_services(compose) -> None:
    services = compose["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["profiles"] == worker["profiles"] == ["ray"]
    assert "--head" in head["command"] and "ray-head:6379" in worker["command"]
    assert head["image"] == worker["image"] == services["worker"]["image"]
    assert "[ray]" in services["worker"]["build"]["args"]["EXTRAS"]
    # shard workers read adapters by path but never open (let alone write) the store
    assert all(v.endswith(":ro") for v in head["volumes"] + worker["volumes"])


"""Several environment servers share one phase's episodes: two real eef AgentGym WebShop server
processes, a real rollout (SmolLM2, hf engine) with two game slots, `env_url` naming both.

Each server's env ids count up from 0 and are never reused, so the id a fresh `POST /create`
returns after the phase says how many environments the phase created on that server."""

from __future__ import annotations

import httpx
import pytest

from eef_tasks.engines import SamplingConfig
from eef_tasks.envs import registry
from eef_tasks.rollout import RolloutEpisode, run_rollouts
from test_webshop_server import Server, _free_port

pytestmark = pytest.mark.slow


def test_env_url_lists_split_into_servers():
    assert registry.env_kwargs("agentgym:webshop", "http://a:1") == {"base_url": "http://a:1"}
    assert registry.env_kwargs("agentgym:webshop", "http://a:1, http://b:2") == {"base_url": ["http://a:1", "http://b:2"]}
    assert registry.env_kwargs("scienceworld", None) == {}


def test_two_servers_share_a_phase(tmp_path, db_path):
    from eef_tasks.engines.hf import HFEngine
    from eef_tasks.models import ModelError, default_model_path

    try:
        model = default_model_path()
    except ModelError as exc:
        pytest.skip(str(exc))
    servers = [Server(_free_port(), tmp_path).wait_ready() for _ in range(2)]
    try:
        tasks = [t.task_id for t in registry.catalog("webshop", "train")[:4]]
        summary = run_rollouts(
            db_path, "r", 1, [RolloutEpisode(t) for t in tasks], purpose="explore",
            engine=HFEngine(model, None, device="cpu", max_batch_size=4),
            sampling=SamplingConfig(temperature=0.0, max_new_tokens=16), n_workers=2, max_steps=1,
            env="agentgym:webshop", env_kwargs=registry.env_kwargs("agentgym:webshop", ",".join(s.url for s in servers)),
        )
        assert (summary.ran, summary.written, summary.errors) == (4, 4, [])
        created = [httpx.post(s.url + "/create", timeout=30).json() for s in servers]
        assert all(n >= 1 for n in created), created  # each server played some of the episodes
    finally:
        for s in servers:
            s.stop()

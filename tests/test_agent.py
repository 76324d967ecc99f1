"""The one agent loop (`eef_tasks.agent`) and the one OpenAI-compatible client's rules
(`eef_tasks.openai_http`), without a model: scripted replies and hand-built episode views.

The real-model, real-game behaviour of the same loop is in test_rollout.py (policy), and
test_llm_expert.py (the LLM expert); these pin the rules both rely on."""

from __future__ import annotations

import httpx
import pytest

from eef_tasks import store
from eef_tasks.agent import AgentEpisode, step_limit, stop_reason
from eef_tasks.chat import INVALID_REPLY_MESSAGE, build_chat
from eef_tasks.credentials import CredentialError
from eef_tasks.envs.pool import EpisodeResult, EpisodeView
from eef_tasks.openai_http import OpenAIHTTP, RetryPolicy
from eef_tasks.records import StepRecord, TrajectoryRecord, write_trajectories
from eef_tasks.rollout import simulation_episodes

TASK = "scienceworld/find-living-thing/0"


def _view(actions=(), n_prefix=0, key="k") -> EpisodeView:
    actions = tuple(actions)
    return EpisodeView(
        task_id=TASK, instruction="Find a living thing.", initial_observation="A hallway.",
        actions=actions, observations=tuple(f"saw {a}" for a in actions),
        rewards=tuple(0.0 for _ in actions), n_prefix=n_prefix, key=key,
    )


class Script:
    """Replies in order; remembers every prompt it was given."""

    def __init__(self, *replies: str) -> None:
        self.replies, self.prompts = list(replies), []

    def __call__(self, messages):
        self.prompts.append(messages)
        return self.replies.pop(0)


def test_a_turn_parses_the_reply_and_the_next_prompt_carries_it() -> None:
    agent = AgentEpisode("scienceworld", max_steps=10, prefix_thoughts=["expert had no thought", None])
    ask = Script("Thought: look first\nAction: look around")
    view = _view(["open door", "go to kitchen"], n_prefix=2)
    assert agent.turn(view, ask) == "look around"
    assert agent.thoughts == ["look first"] and agent.calls == 1 and agent.invalid_replies == []
    steps = [{"thought": t, "action": a, "observation": f"saw {a}"}
             for t, a in zip(["expert had no thought", None], view.actions, strict=True)]
    want = [t.message() for t in build_chat("scienceworld", view.instruction, steps, include_last_observation=True)]
    assert ask.prompts == [want]
    nxt = _view([*view.actions, "look around"], n_prefix=2)
    assert agent.messages(nxt)[-2] == {"role": "assistant", "content": "Thought: look first\nAction: look around"}
    assert agent.all_thoughts(2) == ["expert had no thought", None, "look first"]


def test_bad_replies_are_counted_shown_and_end_the_episode_three_in_a_row() -> None:
    agent = AgentEpisode("scienceworld", max_steps=None, max_invalid_in_a_row=3)
    ask = Script("", "no action here, sorry.", "Action: inventory", "junk.", "more junk.", "still junk.")
    assert agent.turn(_view(), ask) == "inventory"
    assert agent.invalid_in_a_row == 0 and agent.pending == []
    assert [r["reply"] for r in agent.invalid_replies] == ["", "no action here, sorry."]
    # after a bad reply the model sees it and the format reminder
    assert ask.prompts[1][-2:] == [{"role": "assistant", "content": "(empty reply)"},
                                   {"role": "user", "content": INVALID_REPLY_MESSAGE}]
    assert agent.turn(_view(["inventory"]), ask) is None
    assert agent.stop_reason == "invalid_replies" and agent.calls == 6
    assert [r["after_step"] for r in agent.invalid_replies] == [0, 0, 1, 1, 1]


def test_every_call_and_the_replayed_prefix_count_against_the_step_limit() -> None:
    agent = AgentEpisode("scienceworld", max_steps=4, prefix_thoughts=[None, None])
    ask = Script("junk.", "Action: look around", "Action: wait")
    assert agent.turn(_view(["a", "b"], n_prefix=2), ask) == "look around"  # calls 1, 2 (prefix 2)
    assert agent.turn(_view(["a", "b", "look around"], n_prefix=2), ask) is None
    assert agent.stop_reason == "max_steps" and agent.calls == 2 and ask.replies == ["Action: wait"]
    assert step_limit(None, None) is None and step_limit(30, None, 12) == 12


def test_a_rerun_from_scratch_is_detected_and_forgotten() -> None:
    agent = AgentEpisode("scienceworld", max_steps=None)
    ask = Script("Action: look around", "Action: inventory", "Action: look around")
    agent.turn(_view(), ask)
    assert not agent.restarted(_view(["look around"]))
    agent.turn(_view(["look around"]), ask)
    assert not agent.restarted(_view(["look around", "inventory"]))
    assert agent.restarted(_view())  # the pool started the episode again
    agent.reset()
    assert (agent.thoughts, agent.calls, agent.restarts, agent.invalid_replies) == ([], 0, 1, [])
    # a simulation's rerun comes back to the end of its replayed prefix
    sim = AgentEpisode("scienceworld", max_steps=None, prefix_thoughts=[None])
    sim.turn(_view(["a"], n_prefix=1), ask)
    assert sim.restarted(_view(["a"], n_prefix=1)) and not sim.restarted(_view(["a", "look around"], n_prefix=1))


def test_stop_reasons() -> None:
    agent = AgentEpisode("scienceworld", max_steps=2)
    done = EpisodeResult(key="k", task_id=TASK, actions=["a"], done=True)
    assert stop_reason(done, agent) == "done"
    assert stop_reason(EpisodeResult(key="k", task_id=TASK, actions=["a"], done=True, truncated=True), agent) == "max_steps"
    assert stop_reason(EpisodeResult(key="k", task_id=TASK, actions=["a", "b"]), agent) == "max_steps"
    assert stop_reason(EpisodeResult(key="k", task_id=TASK, actions=["a"]), agent) == "stopped"
    agent.stop_reason = "invalid_replies"
    assert stop_reason(EpisodeResult(key="k", task_id=TASK, actions=["a"]), agent) == "invalid_replies"


def test_simulation_starts_with_m_given_are_the_view_s_rows_and_nothing_is_written(db_path) -> None:
    """`simulation_episodes(n_sims=M)` is the `expert_checkpoints` view for a run with that M (the
    view is the rule's only home), read-only: the store's runs are untouched."""
    records = [
        TrajectoryRecord(
            traj_id=f"x/fail{n}", task_id=f"scienceworld/boil/{n}", env="scienceworld", split="train",
            instruction="boil", source="expert", expert="x", reward=0.5,
            steps=[StepRecord(action=f"a{i}", observation=f"o{i}") for i in range(n)],
        )
        for n in (1, 5, 12)
    ]
    with store.writer(db_path) as con:
        write_trajectories(con, records)
        con.execute("INSERT INTO runs (run_id, n_sims) VALUES ('r3', 3)")
    stored_run = simulation_episodes(db_path, "r3")
    # T = 1: no checkpoint; T = 5: l = 1; T = 12: l = 3 (task ids sort as text: 12 before 5)
    assert [(e.branch_traj_id, e.branch_step) for e in stored_run] == [
        ("x/fail12", 3), ("x/fail12", 6), ("x/fail12", 9), ("x/fail5", 1), ("x/fail5", 2), ("x/fail5", 3)]
    assert simulation_episodes(db_path, "other", n_sims=3) == stored_run
    assert [e.branch_step for e in simulation_episodes(db_path, "r3", n_sims=1)] == [6, 2]
    with store.reader(db_path) as con:
        assert con.execute("SELECT run_id, n_sims FROM runs").fetchall() == [("r3", 3)]


def test_the_http_client_keeps_the_key_in_its_header_and_out_of_messages() -> None:
    """user:password in the URL and a key in Authorization cannot both be sent: refused (issue 10:
    one of them used to be dropped silently); Basic auth goes with a key in another header; a
    refusal echoing the key is scrubbed; retries honour Retry-After."""
    key = "sk-agent-test-0123456789"
    seen: list[httpx.Request] = []
    answers = [httpx.Response(429, headers={"Retry-After": "3"}, json={"error": f"slow down {key}"}),
               httpx.Response(200, json={"ok": True})]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    slept: list[float] = []
    with pytest.raises(CredentialError, match="the key would not be sent") as refused:
        OpenAIHTTP("http://user:pass-word@h.local/v1", api_key=key, timeout_s=5, policy=RetryPolicy(0),
                   error=RuntimeError, transport=httpx.MockTransport(handler))
    assert "pass-word" not in str(refused.value) and key not in str(refused.value) and not seen
    client = OpenAIHTTP("http://h.local/v1?api-key=qs-secret&x=1", api_key=key, timeout_s=5,
                        policy=RetryPolicy(2, 0.01, 10.0), error=RuntimeError, sleep=slept.append,
                        transport=httpx.MockTransport(handler))
    response = client.send("POST", "/chat/completions", {"m": 1}, what="a test")
    assert response.status_code == 200 and client.retries == 1 and slept == [3.0]
    assert all(r.headers["authorization"] == f"Bearer {key}" for r in seen)
    assert str(seen[0].url) == "http://h.local/v1/chat/completions?api-key=qs-secret&x=1"
    assert client.safe_url == "http://h.local/v1?x=1"
    answers.extend([httpx.Response(503, text=f"down, key {key} qs-secret")] * 3)
    with pytest.raises(RuntimeError, match="kept failing: HTTP 503") as err:
        client.send("GET", "/models", None, what="listing models")
    assert key not in str(err.value) and "qs-secret" not in str(err.value) and "***" in str(err.value)
    assert "gave up after 3 tries" in str(err.value)
    client.close()

    basic = OpenAIHTTP("http://user:pass-word@h.local/v1", api_key=key, api_key_header="api-key",
                       timeout_s=5, policy=RetryPolicy(0), error=RuntimeError,
                       transport=httpx.MockTransport(handler))
    answers.append(httpx.Response(200, json={}))
    basic.send("GET", "/models", None, what="listing models")
    assert seen[-1].headers["api-key"] == key and seen[-1].headers["authorization"].startswith("Basic ")
    basic.close()


def test_a_nat_policy_is_prompted_with_the_positive_marker() -> None:
    from eef_tasks.chat import PROMPT_TAGS

    agent = AgentEpisode("scienceworld", max_steps=10, prompt_tag="positive")
    ask = Script("Action: look around")
    assert agent.turn(_view(), ask) == "look around"
    assert ask.prompts[0][1] == {"role": "user", "content": f"Find a living thing.\n\n{PROMPT_TAGS['positive']}"}
    assert AgentEpisode("scienceworld", max_steps=10).messages(_view())[1]["content"] == "Find a living thing."

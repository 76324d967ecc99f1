"""Seeded generator of synthetic trajectory stores, for the demo, the tests and the benchmarks.

What this module owns: making a *fake but realistic* store — tasks, expert trajectories, pipeline
runs with their explore rollouts, simulations from failed expert trajectories and evaluation
rollouts, and every trajectory's steps — without any model or environment. Nothing here is used
by the real pipeline or by selection; everything it writes is labelled synthetic (env
`'synthetic'`, task ids `'synthetic/<family>/<n>'`, expert `'synthetic'`, run ids
`'synthetic-run-<r>'`, model ids `'synthetic-policy/...'`, `meta` with `"synthetic": true` on
tasks and runs), so it cannot be mistaken for real data.

Shape of the data (METHOD.md):
- tasks: mostly `train`, some `dev`/`test`, each with a hidden difficulty in [0, 1).
- expert trajectories: one per training task, several for some tasks; about 35 % succeed (like
  GPT-4 on WebShop), easy tasks more often. A few held-out tasks have expert data too (selection
  must ignore it).
- per run r = 1..n_runs (registered in `runs` with M = n_sims) and iteration i = 1..n_iterations:
  `explore` rollouts from s0 of every training task (`explore_k` each), `simulate` rollouts from
  the checkpoints s_l, s_2l, … (l = max(1, T // (M+1)), index < T) of every failed expert
  trajectory of a training task, whose first `branch_step` actions (and observations) are the
  expert's; and `eval` rollouts on every dev/test task for iterations 0..n_iterations.
  Success probabilities rise with the iteration and, for simulations, with the replayed share of
  the expert trajectory.
- steps: every trajectory has exactly `n_steps` steps (thought, action, observation, reward);
  the step reward is 0 except on the last step, which carries the trajectory's reward.

Speed: columns are built with polars expressions (per-task attributes with `random.Random`),
pseudo-random draws come from an integer hash of (seed, row key), and each table is loaded with
one `INSERT … SELECT` from a registered frame, all in one transaction. Size, with the defaults:
trajectories ≈ n_tasks * (1.2 + n_runs * (n_iterations * (0.8 * explore_k + 3.55)
+ 0.2 * (n_iterations + 1))), about 11 steps each. So `generate_store(path, n_tasks=3500)`
(2 runs, 3 iterations, M = 5) makes ~101k trajectories and ~1.1M steps, in 4-12 s on a noisy
2-core machine (see `benchmarks/README.md`); the demo's `n_tasks=60` takes well under a second.

The result depends only on the parameters (same seed, same store) for a given polars version.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from eef_tasks import store
from eef_tasks.records import registered
from eef_tasks.store import StoreError

ENV = "synthetic"
EXPERT = "synthetic"
RUN_PREFIX = "synthetic-run-"

# family -> instruction template ({obj}, {place}, {price}); WebShop- and ScienceWorld-like goals
FAMILIES: dict[str, str] = {
    "buy-shoes": "i need a pair of {obj} shoes for {place}, and price lower than {price}.00 dollars",
    "buy-shirt": "find me a {obj} shirt that is machine washable, price lower than {price}.00 dollars",
    "buy-snack": "i am looking for {obj} snacks that are gluten free, under {price}.00 dollars",
    "boil": "Your task is to boil {obj}. For compounds without a boiling point, combusting the "
    "substance is also acceptable. First, focus on the substance. You can find it in the {place}.",
    "melt": "Your task is to melt {obj}. First, focus on the substance. It is in the {place}.",
    "find-animal": "Your task is to find a(n) {obj}. First, focus on the thing. Then, move it to "
    "the {place}.",
    "grow-plant": "Your task is to grow a {obj} plant from seed. Seeds can be found in the {place}.",
    "measure-temp": "Your task is to measure the temperature of {obj}, which is located around the "
    "{place}. If it is above {price} degrees, focus on the red box.",
}
OBJECTS = [
    "red", "blue", "water", "ice", "chocolate", "orange juice", "apple", "banana", "turtle",
    "frog", "bee", "lead", "tin", "mercury", "thermometer", "pot", "lighter", "stove", "freezer",
    "sink", "cup", "flower pot", "seed jar", "soil", "shovel", "door", "table", "chair", "painting",
    "counter", "oven", "fridge", "cotton", "leather", "running", "hiking", "size 9", "x-large",
    "organic", "vegan",
]
PLACES = ["kitchen", "workshop", "greenhouse", "bedroom", "hallway", "living room", "garden",
          "bathroom", "art studio", "foundry", "outside", "summer walks", "the gym", "work"]
ROOMS = ["kitchen", "workshop", "greenhouse", "bedroom", "hallway", "living room", "garden",
         "bathroom", "art studio", "foundry", "outside", "search results", "item page"]
# action templates: prefix + object + suffix ("" object for the fixed WebShop actions)
ACTIONS = [
    ("search[", True, "]"), ("click[", True, "]"), ("click[Next >]", False, ""),
    ("click[< Back to Search]", False, ""), ("go to ", True, ""), ("pick up ", True, ""),
    ("open ", True, ""), ("look around", False, ""), ("focus on ", True, ""),
    ("move ", True, " to inventory"), ("activate ", True, ""), ("examine ", True, ""),
    ("use thermometer on ", True, ""), ("pour ", True, " into pot"), ("wait1", False, ""),
    ("inventory", False, ""),
]
THOUGHTS = [
    "I should look for the {}.", "The {} is probably what the task needs.",
    "Maybe the {} is in another room.", "Let me check the {} first.",
    "This result does not match; the {} option looks closer.", "Now I need the {}.",
]
FINAL_ACTIONS = ["click[Buy Now]", "focus on result", "wait", "click[Buy Now]"]

_MASK32 = 1 << 32
_MUL = 0x45D9F3B


def _mix(x: pl.Expr) -> pl.Expr:
    """A 32-bit integer hash (xor-shift-multiply), in UInt64 arithmetic that cannot overflow."""
    x = x ^ (x // 65536)
    x = (x * _MUL) % _MASK32
    x = x ^ (x // 65536)
    x = (x * _MUL) % _MASK32
    return x ^ (x // 65536)


def _hash(seed: int, salt: int, *keys: pl.Expr) -> pl.Expr:
    """Deterministic pseudo-random UInt64 in [0, 2^32) from (seed, salt, keys...)."""
    start = (seed * 1_000_003 + salt * 7_919 + 12_345) % _MASK32
    h = _mix(pl.lit(start, dtype=pl.UInt64))
    for key in keys:
        h = _mix(h ^ (key.cast(pl.UInt64) % _MASK32))
    return h


def _uniform(seed: int, salt: int, *keys: pl.Expr) -> pl.Expr:
    return _hash(seed, salt, *keys).cast(pl.Float64) / float(_MASK32)


def _strength(run: pl.Expr, iteration: pl.Expr) -> pl.Expr:
    """How good the policy of run r is at iteration i: rises with the iteration."""
    return 0.55 + 0.1 * iteration.cast(pl.Float64) + 0.03 * run.cast(pl.Float64)


def _checkpoints(n_steps: int, n_sims: int) -> list[int]:
    spacing = max(1, n_steps // (n_sims + 1))
    return [m * spacing for m in range(1, n_sims + 1) if m * spacing < n_steps]


def generate_store(db_path: str | Path, *, overwrite: bool = False, **params: Any) -> dict[str, Any]:
    """Create (or migrate) the store at `db_path` and load a synthetic data set into it.

    `params` are those of `populate` (`n_tasks` is required). `overwrite` deletes an existing file
    first; otherwise a store that already holds synthetic data is refused. Returns the counts of
    what was written (and `seconds`).
    """
    db_path = Path(db_path)
    if overwrite:
        for path in (db_path, db_path.with_name(db_path.name + ".wal")):
            path.unlink(missing_ok=True)
    con = store.connect(db_path)
    try:
        store.migrate(con)
        return populate(con, **params)
    finally:
        con.close()


def populate(
    con: duckdb.DuckDBPyConnection,
    *,
    n_tasks: int,
    n_runs: int = 2,
    n_iterations: int = 3,
    n_sims: int = 5,
    seed: int = 0,
    steps_per_traj: tuple[int, int] = (3, 15),
    explore_k: int = 1,
    dev_frac: float = 0.1,
    test_frac: float = 0.1,
    expert_success_rate: float = 0.35,
    multi_expert_frac: float = 0.3,
    heldout_expert_frac: float = 0.2,
    thought_frac: float = 0.7,
) -> dict[str, Any]:
    """Load a synthetic data set into an open, migrated store (one transaction).

    n_tasks: tasks in all splits (a `dev_frac` / `test_frac` share goes to dev / test);
    n_runs: pipeline runs `synthetic-run-1..n`, each with M = `n_sims`; n_iterations: EEF
    iterations per run; steps_per_traj: (min, max) actions of an expert trajectory and a rollout
    (also the tasks' max_steps); explore_k: rollouts from s0 per training task and iteration
    (RFT x k); expert_success_rate: mean success of the expert; multi_expert_frac: share of
    training tasks with 2-3 expert trajectories; heldout_expert_frac: share of dev/test tasks with
    an expert trajectory (which selection must ignore); thought_frac: share of steps with a
    thought.
    """
    lo, hi = steps_per_traj
    if not 1 <= lo <= hi:
        raise StoreError(f"steps_per_traj must be (min, max) with 1 <= min <= max, not {steps_per_traj}")
    if n_tasks < 1 or n_runs < 0 or n_iterations < 0 or n_sims < 0 or explore_k < 1:
        raise StoreError("n_tasks and explore_k must be >= 1; n_runs, n_iterations, n_sims >= 0")
    started = time.perf_counter()
    existing = store.first_row(
        con,
        "SELECT (SELECT count(*) FROM tasks WHERE env = $env), "
        "(SELECT count(*) FROM runs WHERE run_id LIKE $prefix)",
        {"env": ENV, "prefix": RUN_PREFIX + "%"},
    )
    if existing and (existing[0] or existing[1]):
        raise StoreError(
            "this store already holds synthetic data: use a fresh path or overwrite=True"
        )

    rng = random.Random(seed)
    tasks = _tasks(rng, n_tasks, dev_frac, test_frac, hi)
    experts = _experts(rng, tasks, lo, hi, expert_success_rate, multi_expert_frac,
                       heldout_expert_frac)
    runs = pl.DataFrame(
        {
            "run_id": [f"{RUN_PREFIX}{r}" for r in range(1, n_runs + 1)],
            "n_sims": [n_sims] * n_runs,
            "method": ["eef" if n_sims > 0 else "rft"] * n_runs,
            "config": [
                json.dumps({"synthetic": True, "seed": seed, "n_iterations": n_iterations,
                            "explore_k": explore_k})
            ] * n_runs,
        },
        schema={"run_id": pl.String, "n_sims": pl.Int32, "method": pl.String, "config": pl.String},
    )
    policy = _policy_trajectories(
        seed, tasks, experts, n_runs, n_iterations, n_sims, explore_k, lo, hi
    )
    trajectories = pl.concat([experts.drop("difficulty"), policy], how="diagonal_relaxed")
    steps = _steps(seed, trajectories, tasks, thought_frac)

    task_rows = tasks.select(
        "task_id", pl.lit(ENV).alias("env"), "split", "instruction", "max_steps",
        pl.concat_str([
            pl.lit('{"synthetic": true, "family": "'), pl.col("family"),
            pl.lit('", "difficulty": '), pl.col("difficulty").round(3).cast(pl.String), pl.lit("}"),
        ]).alias("meta"),
    )
    traj_rows = trajectories.select(
        "traj_id", "task_id", "run_id", "source", "expert", "model_id", "iteration", "purpose",
        "branch_traj_id", "branch_step", "reward", "success", "n_steps",
    )
    with store.transaction(con):
        _load(con, "synthetic_tasks", task_rows,
              "INSERT INTO tasks (task_id, env, split, instruction, max_steps, meta) "
              "SELECT task_id, env, split, instruction, max_steps, meta::JSON FROM synthetic_tasks")
        _load(con, "synthetic_runs", runs,
              "INSERT INTO runs (run_id, n_sims, method, config) "
              "SELECT run_id, n_sims, method, config::JSON FROM synthetic_runs")
        _load(con, "synthetic_trajectories", traj_rows,
              "INSERT INTO trajectories (traj_id, task_id, run_id, source, expert, model_id, "
              "iteration, purpose, branch_traj_id, branch_step, reward, success, n_steps) "
              "SELECT traj_id, task_id, run_id, source, expert, model_id, iteration, purpose, "
              "branch_traj_id, branch_step, reward, success, n_steps FROM synthetic_trajectories")
        _load(con, "synthetic_steps", steps,
              "INSERT INTO steps (traj_id, step, thought, action, observation, reward) "
              "SELECT traj_id, step, thought, action, observation, reward FROM synthetic_steps")

    by_purpose = dict(traj_rows.group_by("purpose").len().iter_rows())
    split_counts = dict(tasks.group_by("split").len().iter_rows())
    return {
        "tasks": tasks.height,
        "train_tasks": split_counts.get("train", 0),
        "dev_tasks": split_counts.get("dev", 0),
        "test_tasks": split_counts.get("test", 0),
        "runs": n_runs,
        "iterations": n_iterations,
        "n_sims": n_sims,
        "trajectories": traj_rows.height,
        "expert": by_purpose.get("expert", 0),
        "expert_success": int(experts["success"].sum()),
        "explore": by_purpose.get("explore", 0),
        "simulate": by_purpose.get("simulate", 0),
        "eval": by_purpose.get("eval", 0),
        "steps": steps.height,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _load(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame, sql: str) -> None:
    with registered(con, name, frame):
        con.execute(sql).fetchall()


# --- tables ----------------------------------------------------------------------------------


def _tasks(rng: random.Random, n_tasks: int, dev_frac: float, test_frac: float,
           max_steps: int) -> pl.DataFrame:
    families = list(FAMILIES)
    per_family = dict.fromkeys(families, 0)
    rows: dict[str, list] = {k: [] for k in
                             ("task_idx", "task_id", "family_idx", "family", "split",
                              "instruction", "difficulty", "max_steps")}
    for idx in range(n_tasks):
        f = rng.randrange(len(families))
        family = families[f]
        number = per_family[family]
        per_family[family] += 1
        u = rng.random()
        split = "dev" if u < dev_frac else "test" if u < dev_frac + test_frac else "train"
        instruction = FAMILIES[family].format(
            obj=rng.choice(OBJECTS), place=rng.choice(PLACES), price=rng.randrange(10, 100)
        )
        rows["task_idx"].append(idx)
        rows["task_id"].append(f"{ENV}/{family}/{number}")
        rows["family_idx"].append(f)
        rows["family"].append(family)
        rows["split"].append(split)
        rows["instruction"].append(instruction)
        rows["difficulty"].append(rng.random())
        rows["max_steps"].append(max_steps)
    return pl.DataFrame(rows, schema={
        "task_idx": pl.Int64, "task_id": pl.String, "family_idx": pl.Int64, "family": pl.String,
        "split": pl.String, "instruction": pl.String, "difficulty": pl.Float64,
        "max_steps": pl.Int32,
    })


def _experts(rng: random.Random, tasks: pl.DataFrame, lo: int, hi: int, success_rate: float,
             multi_frac: float, heldout_frac: float) -> pl.DataFrame:
    """Expert trajectories; success probability c * (1 - d)^1.5 has mean `success_rate`."""
    scale = 2.5 * success_rate  # E[(1 - d)^1.5] = 1 / 2.5 for d ~ U(0, 1)
    rows: dict[str, list] = {k: [] for k in
                             ("uid", "traj_id", "task_id", "task_idx", "difficulty", "reward",
                              "n_steps")}
    for task_idx, task_id, split, d in tasks.select(
        "task_idx", "task_id", "split", "difficulty"
    ).iter_rows():
        if split == "train":
            count = 1 + (rng.randrange(1, 3) if rng.random() < multi_frac else 0)
        else:
            count = 1 if rng.random() < heldout_frac else 0
        for j in range(count):
            success = rng.random() < min(0.98, scale * (1.0 - d) ** 1.5)
            n_steps = rng.randint(lo, hi)
            if success:
                reward = 1.0
            else:
                reward = 0.0 if rng.random() < 0.25 else round(rng.uniform(0.0, 0.95), 2)
                if rng.random() < 0.3:
                    n_steps = hi  # failures often run into the step limit
            rows["uid"].append(len(rows["uid"]))
            rows["traj_id"].append(f"syn-expert-{task_idx}-{j}")
            rows["task_id"].append(task_id)
            rows["task_idx"].append(task_idx)
            rows["difficulty"].append(d)
            rows["reward"].append(reward)
            rows["n_steps"].append(n_steps)
    frame = pl.DataFrame(rows, schema={
        "uid": pl.Int64, "traj_id": pl.String, "task_id": pl.String, "task_idx": pl.Int64,
        "difficulty": pl.Float64, "reward": pl.Float64, "n_steps": pl.Int32,
    })
    return frame.with_columns(
        run_id=pl.lit(None, dtype=pl.String),
        source=pl.lit("expert"),
        expert=pl.lit(EXPERT),
        model_id=pl.lit(None, dtype=pl.String),
        iteration=pl.lit(0, dtype=pl.Int32),
        purpose=pl.lit("expert"),
        branch_traj_id=pl.lit(None, dtype=pl.String),
        branch_uid=pl.lit(None, dtype=pl.Int64),
        branch_step=pl.lit(0, dtype=pl.Int32),
        success=pl.col("reward") == 1.0,
    )


def _policy_trajectories(seed: int, tasks: pl.DataFrame, experts: pl.DataFrame, n_runs: int,
                         n_iterations: int, n_sims: int, explore_k: int, lo: int,
                         hi: int) -> pl.DataFrame:
    """Explore, simulate and eval rollouts of every run and iteration, with outcomes."""
    run_iters = pl.DataFrame(
        {"run": [r for r in range(1, n_runs + 1) for _ in range(n_iterations)],
         "iteration": [i for _ in range(n_runs) for i in range(1, n_iterations + 1)]},
        schema={"run": pl.Int64, "iteration": pl.Int32},
    )
    eval_iters = pl.DataFrame(
        {"run": [r for r in range(1, n_runs + 1) for _ in range(n_iterations + 1)],
         "iteration": [i for _ in range(n_runs) for i in range(n_iterations + 1)]},
        schema={"run": pl.Int64, "iteration": pl.Int32},
    )
    task_cols = tasks.select("task_idx", "task_id", "split", "difficulty")
    train = task_cols.filter(pl.col("split") == "train")
    heldout = task_cols.filter(pl.col("split") != "train")

    explore = (
        run_iters.join(train, how="cross")
        .join(pl.DataFrame({"k": list(range(explore_k))}, schema={"k": pl.Int64}), how="cross")
        .with_columns(
            purpose=pl.lit("explore"), branch_uid=pl.lit(None, dtype=pl.Int64),
            branch_traj_id=pl.lit(None, dtype=pl.String), branch_step=pl.lit(0, dtype=pl.Int32),
            expert_n_steps=pl.lit(None, dtype=pl.Int32),
            traj_id=pl.format("syn-r{}-i{}-explore-{}-{}", "run", "iteration", "task_idx", "k"),
        )
    )

    failed = experts.join(train.select("task_idx"), on="task_idx").filter(~pl.col("success"))
    checkpoints = pl.DataFrame(
        [
            {"uid": uid, "branch_step": step}
            for uid, n_steps in failed.select("uid", "n_steps").iter_rows()
            for step in _checkpoints(n_steps, n_sims)
        ],
        schema={"uid": pl.Int64, "branch_step": pl.Int32},
    )
    simulate = (
        checkpoints.join(failed, on="uid")
        .select(
            "task_idx", "task_id", "difficulty", "branch_step",
            branch_uid=pl.col("uid"), branch_traj_id=pl.col("traj_id"),
            expert_n_steps=pl.col("n_steps"),
        )
        .join(run_iters, how="cross")
        .with_columns(
            purpose=pl.lit("simulate"), k=pl.lit(0, dtype=pl.Int64),
            traj_id=pl.format("syn-r{}-i{}-sim-{}-{}", "run", "iteration", "branch_uid",
                              "branch_step"),
        )
    )

    evaluate = eval_iters.join(heldout, how="cross").with_columns(
        purpose=pl.lit("eval"), k=pl.lit(0, dtype=pl.Int64),
        branch_uid=pl.lit(None, dtype=pl.Int64), branch_traj_id=pl.lit(None, dtype=pl.String),
        branch_step=pl.lit(0, dtype=pl.Int32), expert_n_steps=pl.lit(None, dtype=pl.Int32),
        traj_id=pl.format("syn-r{}-i{}-eval-{}", "run", "iteration", "task_idx"),
    )

    columns = ["traj_id", "task_id", "task_idx", "difficulty", "run", "iteration", "purpose", "k",
               "branch_uid", "branch_traj_id", "branch_step", "expert_n_steps"]
    frame = pl.concat([explore.select(columns), simulate.select(columns),
                       evaluate.select(columns)])
    offset = experts.height
    frame = frame.with_row_index("row").with_columns(uid=pl.col("row").cast(pl.Int64) + offset)

    # success: strength(run, iteration) * (1 - d_eff)^1.5, where replaying a larger share of the
    # expert trajectory makes the rest easier; eval at iteration i uses the model trained in i
    replayed = (pl.col("branch_step").cast(pl.Float64)
                / pl.col("expert_n_steps").cast(pl.Float64)).fill_null(0.0)
    d_eff = pl.col("difficulty") * (1.0 - 0.7 * replayed)
    strength_iteration = pl.when(pl.col("purpose") == "eval").then(
        pl.col("iteration") + 1).otherwise(pl.col("iteration"))
    p_success = (_strength(pl.col("run"), strength_iteration) * (1.0 - d_eff).pow(1.5)).clip(0.0, 0.97)
    uid = pl.col("uid")
    success = _uniform(seed, 1, uid) < p_success
    partial = (_uniform(seed, 2, uid) * 95.0).floor() / 100.0
    zero = _uniform(seed, 3, uid) < 0.25
    reward = pl.when(success).then(1.0).when(zero).then(0.0).otherwise(partial)

    # length: rollouts from s0 take lo..hi actions; a simulation continues 1..(hi - branch_step)
    # actions after the replayed prefix; failures run into the step limit 30 % of the time
    u_len = _uniform(seed, 4, uid)
    span = pl.when(pl.col("branch_step") > 0).then(hi - pl.col("branch_step")).otherwise(hi - lo + 1)
    first = pl.when(pl.col("branch_step") > 0).then(pl.col("branch_step") + 1).otherwise(lo)
    drawn = first + (u_len * span.cast(pl.Float64)).floor().cast(pl.Int32)
    at_limit = (~success) & (_uniform(seed, 5, uid) < 0.3)
    n_steps = pl.when(at_limit).then(hi).otherwise(drawn).cast(pl.Int32)

    run_id = pl.format(RUN_PREFIX + "{}", "run")
    model_iteration = strength_iteration - 1  # explore/simulate use the previous iteration's model
    model_id = pl.when(model_iteration == 0).then(pl.format("synthetic-policy/{}/bc", run_id)) \
        .otherwise(pl.format("synthetic-policy/{}/iter{}", run_id, model_iteration))
    return frame.with_columns(
        reward=reward, n_steps=n_steps, run_id=run_id, model_id=model_id,
    ).with_columns(
        success=pl.col("reward") == 1.0,
        source=pl.lit("policy"),
        expert=pl.lit(None, dtype=pl.String),
        iteration=pl.col("iteration").cast(pl.Int32),
        branch_step=pl.col("branch_step").cast(pl.Int32),
    ).select(
        "uid", "traj_id", "task_id", "task_idx", "run_id", "source", "expert", "model_id",
        "iteration", "purpose", "branch_traj_id", "branch_uid", "branch_step", "reward",
        "success", "n_steps",
    )


def _lookup(index: pl.Expr, values: list[str]) -> pl.Expr:
    """values[index] for an integer index column in [0, len(values))."""
    return pl.lit(pl.Series(values, dtype=pl.String)).gather(index)


def _steps(seed: int, trajectories: pl.DataFrame, tasks: pl.DataFrame,
           thought_frac: float) -> pl.DataFrame:
    """Every trajectory's steps. Text is a function of (source trajectory, step), where the source
    of a simulation's first `branch_step` steps is its expert trajectory: so the replayed prefix
    repeats the expert's actions and observations exactly."""
    family = tasks.select("task_idx", "family_idx")
    src = pl.when(pl.col("step") < pl.col("branch_step")).then(pl.col("branch_uid")) \
        .otherwise(pl.col("uid"))
    frame = (
        trajectories.select("uid", "traj_id", "task_idx", "branch_uid", "branch_step", "reward",
                            "n_steps")
        .join(family, on="task_idx", how="left")
        .with_columns(step=pl.int_ranges(0, pl.col("n_steps"), dtype=pl.Int32))
        .explode("step")
        .with_columns(h=_hash(seed, 10, src, pl.col("step")))
        .with_columns(g=_mix(pl.col("h") ^ 0x9E3779B9))
    )
    # independent draws: the bits of two 32-bit hashes (h, g)
    h, g = pl.col("h"), pl.col("g")
    template = h % len(ACTIONS)
    obj_idx = (h // 256) % len(OBJECTS)
    obj = _lookup(obj_idx, OBJECTS)
    action = pl.concat_str([
        _lookup(template, [prefix for prefix, _, _ in ACTIONS]),
        pl.when(_lookup(template, ["1" if uses else "" for _, uses, _ in ACTIONS]) == "1")
        .then(obj).otherwise(pl.lit("")),
        _lookup(template, [suffix for _, _, suffix in ACTIONS]),
    ])
    observation = pl.concat_str([
        pl.lit("You are in the "), _lookup((h // 65536) % len(ROOMS), ROOMS),
        pl.lit(". You see a "), _lookup(g % len(OBJECTS), OBJECTS),
        pl.lit(", a "), _lookup((g // 256) % len(OBJECTS), OBJECTS),
        pl.lit(" and the "), obj, pl.lit("."),
    ])
    final_action = _lookup(pl.col("family_idx") % len(FINAL_ACTIONS), FINAL_ACTIONS)
    final_observation = pl.concat_str([
        pl.lit("The episode is over. Your score is "),
        (pl.col("reward") * 100).round(0).cast(pl.Int32).cast(pl.String), pl.lit("."),
    ])
    thought_idx = (g // 65536) % len(THOUGHTS)
    thought = pl.when(((g // 16) % 1000) < round(thought_frac * 1000)).then(
        pl.concat_str([
            _lookup(thought_idx, [t.partition("{}")[0] for t in THOUGHTS]), obj,
            _lookup(thought_idx, [t.partition("{}")[2] for t in THOUGHTS]),
        ])
    )
    last = pl.col("step") == pl.col("n_steps") - 1
    return frame.select(
        "traj_id",
        "step",
        thought.alias("thought"),
        pl.when(last).then(final_action).otherwise(action).alias("action"),
        pl.when(last).then(final_observation).otherwise(observation).alias("observation"),
        pl.when(last).then(pl.col("reward")).otherwise(0.0).alias("reward"),
    )

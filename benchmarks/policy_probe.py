"""Can EEF's mechanism fire? A behaviour-cloned policy from s0 and from every checkpoint of the
expert's failed trajectories, for a few training settings (issue 11, deliverable 2).

    python benchmarks/policy_probe.py --db data/probe.duckdb --setting lr=5e-4,epochs=3 --setting lr=1e-3,epochs=3

The store must hold expert data already (`eef collect`, gold and synthetic, on the training tasks;
gold on the dev tasks is not needed: dev tasks are evaluated from s0). Per setting, one run
`probe-<setting>` gets: the behaviour-cloning set (`eef select --method bc`), a fresh adapter on it,
then, with one model load, greedy evaluation on the dev tasks from s0, one exploration rollout per
training task from s0, and one simulation from every checkpoint of every failed expert trajectory
(M = `--sims`; with M >= T - 1 every step is a checkpoint). It prints one table row per setting:
success from s0 (dev, greedy; train, sampled), simulation success from checkpoints before and after
the expert's first harmful action (`meta.harmful_steps`), the need-recover states found and the
EEF set the next selection would write (examples by kind), against RFT's. Everything is measured in
the real game with the real model; the numbers are whatever they are.

Setting keys: training (lr, epochs, r, alpha, dropout, batch, micro, len, and `ft=full` for full
fine-tuning instead of LoRA) and sampling of the exploration and simulations (`temp`, `top_p`; default
`--temperature` / `--top-p`). Settings of one invocation that differ only in sampling share one adapter
(trained once, for the first of them; the others' rows name it in `adapter_from`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eef_tasks import rollout, selection, store  # noqa: E402
from eef_tasks.engines import SamplingConfig  # noqa: E402
from eef_tasks.engines.hf import HFEngine  # noqa: E402
from eef_tasks.pipeline import set_torch_threads  # noqa: E402
from eef_tasks.training import TrainConfig, train_adapter  # noqa: E402

KEYS = {"lr": ("learning_rate", float), "epochs": ("epochs", int), "r": ("lora_r", int), "alpha": ("lora_alpha", int),
        "dropout": ("lora_dropout", float), "batch": ("batch_size", int), "micro": ("micro_batch", int), "len": ("max_length", int),
        "ft": ("finetune", str)}
# sampling of the setting's exploration and simulations (default: --temperature, --top-p); not training
SAMPLING_KEYS = {"temp": ("temperature", float), "top_p": ("top_p", float)}


def parse_setting(text: str) -> tuple[dict, dict]:
    """(TrainConfig fields, sampling fields) of one --setting."""
    training, sampling = {}, {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in KEYS and key not in SAMPLING_KEYS:
            raise SystemExit(f"--setting: unknown key {key!r}: one of {', '.join([*KEYS, *SAMPLING_KEYS])}")
        into, (name, kind) = (training, KEYS[key]) if key in KEYS else (sampling, SAMPLING_KEYS[key])
        try:
            into[name] = kind(value)
        except ValueError:
            raise SystemExit(f"--setting: {key}={value!r} is not a {kind.__name__}") from None
    return training, sampling


CHECKPOINT_SUCCESS = """
WITH sims AS (
    SELECT p.branch_step AS k, p.success, e.n_steps AS expert_steps,
           (e.meta->>'mode') AS mode,
           try_cast(e.meta->'harmful_steps'->>0 AS INTEGER) AS first_harm
    FROM trajectories p JOIN trajectories e ON e.traj_id = p.branch_traj_id
    WHERE p.run_id = $run AND p.purpose = 'simulate' AND p.iteration = 1
)
SELECT coalesce(mode, '?') AS mode,
       CASE WHEN first_harm IS NULL THEN 'no harm label'
            WHEN k <= first_harm THEN 'before harm' ELSE 'after harm' END AS where_,
       count(*) AS n, sum(success::INT) AS wins
FROM sims GROUP BY ALL ORDER BY ALL
"""


def _first_experts(episodes: list, limit: int | None) -> list:
    """The simulations from the first `limit` failed expert trajectories (by id) only."""
    keep = sorted({e.branch_traj_id for e in episodes})[:limit] if limit else None
    return [e for e in episodes if keep is None or e.branch_traj_id in keep]


def probe(db: str, name: str, overrides: dict, sampling_over: dict, args, trained: dict) -> dict:
    """One setting's row. `trained` maps a training config (JSON) to the adapter and row fields of a
    setting already probed in this invocation: settings that differ only in sampling share it."""
    run = f"probe-{name}"
    row: dict = {"setting": name}
    with store.writer(db) as con:
        bc = selection.select_examples(con, run, 0, "bc", n_sims=args.sims)
    row["bc_examples"] = bc.n_examples
    config = TrainConfig(**{"epochs": 3, "learning_rate": 5e-4, "batch_size": 8, "micro_batch": 4,
                            "max_length": 1024, **overrides})
    key = config.model_dump_json()
    if key in trained:
        out, fields = trained[key]
        row.update(fields, adapter_from=str(out))
    else:
        out = Path(args.adapters) / run
        set_torch_threads("train")
        started = time.monotonic()
        info = train_adapter(db, run, 0, "bc", out, config, overwrite=True, progress=False)
        fields = dict(train_s=round(time.monotonic() - started), steps=info.n_optimizer_steps,
                      tokens=info.n_tokens, final_loss=round(info.final_loss or float("nan"), 3))
        trained[key] = (out, fields)
        row.update(fields)
    temperature, top_p = sampling_over.get("temperature", args.temperature), sampling_over.get("top_p", args.top_p)
    row.update(temperature=temperature, top_p=top_p)

    set_torch_threads("rollout")
    engine = HFEngine(None, out, max_batch_size=16)
    with store.reader(db) as con:
        dev = [r[0] for r in con.execute("SELECT task_id FROM tasks WHERE split = 'dev' ORDER BY task_id").fetchall()]
        train = [r[0] for r in con.execute(
            "SELECT DISTINCT task_id FROM trajectories JOIN tasks USING (task_id) WHERE split = 'train' "
            "AND source = 'expert' ORDER BY task_id").fetchall()]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    sampled = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=args.max_new_tokens)
    common = dict(engine=engine, n_workers=args.workers, max_steps=args.max_steps)
    timings = {}
    for purpose, iteration, episodes, sampling in (
        ("eval", 0, rollout.explore_episodes(dev[: args.eval_limit]), greedy),
        ("explore", 1, rollout.explore_episodes(train[: args.explore_limit]), sampled),
        ("simulate", 1, _first_experts(rollout.simulation_episodes(db, run), args.sim_limit), sampled),
    ):
        started = time.monotonic()
        summary = rollout.run_rollouts(db, run, iteration, episodes, purpose=purpose, sampling=sampling, **common)
        timings[purpose] = round(time.monotonic() - started)
        row[f"{purpose}_n"], row[f"{purpose}_wins"] = summary.written + summary.already_stored, None
    engine.close() if hasattr(engine, "close") else None
    with store.reader(db) as con:
        for purpose in ("eval", "explore", "simulate"):
            n, wins = con.execute(
                "SELECT count(*), coalesce(sum(success::INT), 0) FROM trajectories WHERE run_id = $r AND purpose = $p",
                {"r": run, "p": purpose}).fetchone()
            row[f"{purpose}_n"], row[f"{purpose}_wins"] = n, int(wins)
        row["by_checkpoint"] = [list(r) for r in con.execute(CHECKPOINT_SUCCESS, {"run": run}).fetchall()]
        row["need_recover_states"] = con.execute(
            "SELECT count(DISTINCT (expert_traj_id, step)) FROM need_recover_states WHERE run_id = $r",
            {"r": run}).fetchone()[0]
    with store.writer(db) as con:
        row["eef_by_kind"] = selection.select_examples(con, run, 1, "eef").by_kind
        row["rft_by_kind"] = selection.select_examples(con, run, 1, "rft").by_kind
    row["rollout_s"] = timings
    return row


def _kinds(by_kind: dict) -> str:
    return " + ".join(f"{n} {k.replace('_', '-')}" for k, n in sorted(by_kind.items())) or "0"


def _before_after(row: dict) -> tuple[str, str]:
    cells = {}
    for _mode, where, n, wins in row["by_checkpoint"]:
        a, b = cells.get(where, (0, 0))
        cells[where] = (a + wins, b + n)
    fmt = lambda w: "{} / {}".format(*cells[w]) if w in cells else "-"  # noqa: E731
    return fmt("before harm"), fmt("after harm")


def markdown_table(paths: list[str]) -> str:
    """The rows of `--out` files as one markdown table (docs/policy-probe.md)."""
    lines = ["| store | setting | BC examples | optimizer steps | train s | final loss | dev, greedy | explore from s0 "
             "| simulations | up to the harmful step | after it | need-recover states | EEF set | RFT set |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for path in paths:
        for number, text in enumerate(Path(path).read_text().splitlines(), 1):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"--table: {path}:{number} is not a JSON row of --out ({exc.msg})") from None
            before, after = _before_after(row)
            lines.append("| " + " | ".join([
                Path(path).stem, row["setting"], str(row["bc_examples"]), str(row["steps"]), str(row["train_s"]),
                f"{row['final_loss']:.3f}", f"{row['eval_wins']} / {row['eval_n']}",
                f"{row['explore_wins']} / {row['explore_n']}", f"{row['simulate_wins']} / {row['simulate_n']}",
                before, after, str(row["need_recover_states"]), _kinds(row["eef_by_kind"]),
                _kinds(row["rft_by_kind"])]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="print the rows of these --out files as a markdown table")
    parser.add_argument("--db")
    parser.add_argument("--setting", action="append", help="comma-separated key=value: " + ", ".join(KEYS))
    parser.add_argument("--sims", type=int, default=14, help="M of the probe runs (>= T - 1: every step)")
    parser.add_argument("--eval-limit", type=int, default=10)
    parser.add_argument("--explore-limit", type=int, default=None, help="explore from s0 of this many training tasks")
    parser.add_argument("--sim-limit", type=int, default=None, help="simulate from this many failed expert trajectories")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--adapters", default="data/adapters")
    parser.add_argument("--out", default=None, help="append each row as a JSON line here")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    if not args.db or not args.setting:
        parser.error("--db and --setting are required (or --table)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    trained: dict = {}
    for text in args.setting:
        name = text.replace(",", "_").replace("=", "")
        row = probe(args.db, name, *parse_setting(text), args, trained)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

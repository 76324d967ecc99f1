"""The `eef` command line: store set-up, selection, inspection, ad-hoc SQL, import and export.

Every command is a thin shell over a plain function; errors the user can act on are printed as
one message (no traceback) with exit status 1.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.console import Console
from rich.markup import escape

from eef_tasks import adhoc_sql, chat, interrupt, selection, store
from eef_tasks.credentials import LLM_KEY_HINT, VLLM_KEY_HINT, refuse_url_credentials
from eef_tasks.envs import registry
from eef_tasks.errors import UserError
from eef_tasks.output import json_text, output_file, terminal_text
from eef_tasks.pipeline import presets

app = typer.Typer(
    name="eef",
    help="Exploring Expert Failures (EEF) for LLM agent tuning: store, selection and inspection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DbOption = Annotated[Path, typer.Option("--db", help="the DuckDB store", show_default=True)]


def user_errors(command):
    """Turn the errors a user can fix into one clear line on stderr and exit status 1; Ctrl-C and
    SIGTERM into one line too ("interrupted during …; rerun the same command to resume") and
    exit status 130 / 143, after every child process has stopped (eef_tasks.interrupt)."""
    name = "eef " + command.__name__.removesuffix("_cmd")

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with interrupt.handlers(name):
            try:
                result = command(*args, **kwargs)
            except UserError as exc:
                err.print(f"[red]error:[/red] {escape(terminal_text(str(exc)))}")
                raise typer.Exit(1) from None
            except duckdb.Error as exc:
                # DuckDB adds lines (the query, a caret) to parser errors: the first says what is wrong
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                err.print(f"[red]DuckDB error:[/red] {escape(terminal_text(first))}")
                raise typer.Exit(1) from None
            except BrokenPipeError:
                # the reader (`| head`) has what it wanted: stop quietly and successfully, and point
                # stdout at /dev/null so that the interpreter's final flush does not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(0) from None
            except BaseException as exc:
                if not interrupt.is_interrupt(exc):
                    raise
                status = interrupt.exit_status(exc)
            else:
                if not interrupt.stopping():  # a library may have swallowed it (prefect.serve does)
                    return result
                status = interrupt.exit_status()
            print(interrupt.message(), file=sys.stderr, flush=True)
            raise typer.Exit(status) from None

    return wrapper


@app.command()
@user_errors
def init(db: DbOption = store.DEFAULT_DB) -> None:
    """Create the store, or migrate it to the current schema (safe to run again)."""
    con = store.connect(db)
    try:
        applied = store.migrate(con)
        version = store.schema_version(con)
    finally:
        con.close()
    if applied:
        out.print(f"{db}: schema version {version}; applied {', '.join(applied)}")
    else:
        out.print(f"{db}: schema version {version}; already up to date")


class Method(str, Enum):
    bc = "bc"
    eef = "eef"
    rft = "rft"
    sft_all = "sft-all"
    nat = "nat"


class TrainMethod(str, Enum):
    bc = "bc"
    eef = "eef"
    rft = "rft"
    sft_all = "sft-all"
    nat = "nat"
    dpo = "dpo"  # DPO (TRL) on the preference pairs of an eef/rft training set, from its SFT adapter


class Finetune(str, Enum):  # TrainConfig.finetune
    lora = "lora"
    full = "full"


class PromptTag(str, Enum):
    positive = "positive"
    negative = "negative"


@app.command("select")
@user_errors
def select_cmd(
    run: Annotated[str, typer.Option("--run", help="the run (experiment) id")],
    iteration: Annotated[int, typer.Option("--iteration", help="0 for bc/sft-all/nat, >= 1 for eef/rft")],
    method: Annotated[Method, typer.Option("--method", help="bc (SFT-POS), eef, rft, sft-all or nat")],
    db: DbOption = store.DEFAULT_DB,
    sims: Annotated[
        int | None,
        typer.Option("--sims", help="M, simulations per failed expert trajectory (new runs; default 5)"),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option("--search", help="uniform (M checkpoints) or binary (bisection; new runs; default uniform)"),
    ] = None,
) -> None:
    """Write one iteration's training_examples (idempotent: replaces that set)."""
    with store.writer(db) as con:
        result = selection.select_examples(con, run, iteration, method.value, sims, search)
    kinds = ", ".join(f"{kind}: {n}" for kind, n in result.by_kind.items()) or "none"
    out.print(
        f"run {result.run_id} iteration {result.iteration} method {result.method} (M = "
        f"{result.n_sims}): {result.n_examples} training examples ({kinds})"
    )


class ExampleFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
@user_errors
def example(
    traj: Annotated[str, typer.Option("--traj", help="the trajectory id")],
    from_step: Annotated[int, typer.Option("--from-step", help="actions with step >= K get loss")] = 0,
    db: DbOption = store.DEFAULT_DB,
    fmt: Annotated[ExampleFormat, typer.Option("--format")] = ExampleFormat.text,
    tag: Annotated[PromptTag | None, typer.Option(
        "--tag", help="NAT's prompt marker, as a nat example of this trajectory is trained "
                      "(positive: a success, negative: a failure)")] = None,
) -> None:
    """Show a trajectory as the chat the model is trained on, supervised turns marked."""
    with store.reader(db) as con:
        turns = chat.load_chat(con, traj, from_step, tag.value if tag else None)
    if fmt is ExampleFormat.json:
        out.print_json(json_text(chat.chat_as_dicts(turns)))
        return
    n_supervised = sum(t.supervised for t in turns)
    # model output is shown, never interpreted: its control characters are made visible
    out.print(f"[bold]{escape(terminal_text(traj))}[/bold]: loss on steps >= {from_step} "
              f"({n_supervised} supervised assistant turns, marked [green]>>[/green])"
              + (f"; NAT {tag.value} marker in the instruction: {chat.PROMPT_TAGS[tag.value]!r}" if tag else ""))
    for turn in turns:
        where = f" step {turn.step}" if turn.step is not None else ""
        if turn.supervised:
            out.print(f"[bold green]>> {turn.role}{where} [SUPERVISED][/bold green]")
            out.print("\n".join(f"[green]>>[/green] {escape(terminal_text(line))}"
                                 for line in turn.content.split("\n")))
        else:
            out.print(f"[dim]-- {turn.role}{where} (context)[/dim]")
            out.print(escape(terminal_text(turn.content)))


class SqlFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command("sql")
@user_errors
def sql_cmd(
    query: Annotated[str, typer.Argument(help="one or more read-only SQL statements")],
    db: DbOption = store.DEFAULT_DB,
    fmt: Annotated[SqlFormat, typer.Option("--format")] = SqlFormat.table,
    max_rows: Annotated[int | None, typer.Option(
        "--max-rows", help="rows per statement, any format (0: columns only) [default: table 100, csv/json 1000000]")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="stop a query after this many seconds (0: never)")] = 60.0,
    wait: Annotated[float, typer.Option("--wait", help="seconds to wait for a writer's lock")] = store.LOCK_WAIT_S,
) -> None:
    """Run read-only ad-hoc SQL over the store (writes are refused), results streamed and bounded."""
    if max_rows is None:
        max_rows = 100 if fmt is SqlFormat.table else 1_000_000
    notes = adhoc_sql.run_query(db, query, sys.stdout, fmt=fmt.value, max_rows=max_rows,
                                timeout_s=timeout, wait_s=wait)
    for note in notes:
        err.print(escape(note))


class ImportFormat(str, Enum):
    auto = "auto"
    eef = "eef"
    conversations = "conversations"


@app.command("import")
@user_errors
def import_cmd(
    path: Annotated[Path, typer.Argument(help="a JSONL (or JSON array) file", exists=True, dir_okay=False)],
    db: DbOption = store.DEFAULT_DB,
    fmt: Annotated[ImportFormat, typer.Option("--format", help="eef JSONL or ETO/AgentGym conversations")] = ImportFormat.auto,
    env: Annotated[str | None, typer.Option("--env", help="conversations: the environment, e.g. webshop")] = None,
    split: Annotated[str, typer.Option("--split", help="conversations: the tasks' split")] = "train",
    expert: Annotated[str, typer.Option("--expert", help="conversations: the expert's name, e.g. gpt-4")] = "imported",
    reward: Annotated[float | None, typer.Option("--reward", help="conversations: reward when records have none")] = None,
    task_prefix: Annotated[str | None, typer.Option("--task-prefix", help="conversations: task_id = prefix + id (default '<env>/')")] = None,
    sims: Annotated[int | None, typer.Option("--sims", min=0, help="M of runs that are new to the store and whose records carry no run_n_sims")] = None,
) -> None:
    """Import trajectories; a malformed record names its line and field and nothing is written."""
    from eef_tasks import trajectory_io  # polars and pydantic load only for the commands that use them

    if fmt is ImportFormat.auto:
        fmt = ImportFormat(trajectory_io.detect_format(path))
    if fmt is ImportFormat.conversations:
        if env is None:
            raise store.StoreError("--env is required for conversation-format files (e.g. --env webshop)")
        records = trajectory_io.read_conversations(
            path, env=env, split=split, expert=expert, reward=reward, task_prefix=task_prefix
        )
    else:
        records = trajectory_io.read_eef_jsonl(path)
    with store.writer(db) as con:
        result = trajectory_io.import_records(con, records, n_sims=sims)
    out.print(
        f"{path}: {result.trajectories_added} trajectories added ({result.steps_added} steps), "
        f"{result.trajectories_skipped} already present, {result.tasks_added} new tasks"
    )


@app.command("export")
@user_errors
def export_cmd(
    path: Annotated[Path, typer.Argument(help="output JSONL file ('-' for stdout)")],
    db: DbOption = store.DEFAULT_DB,
    run: Annotated[str | None, typer.Option("--run")] = None,
    source: Annotated[str | None, typer.Option("--source", help="expert or policy")] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="expert, explore, simulate or eval")] = None,
    split: Annotated[str | None, typer.Option("--split", help="train, dev or test")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing output file")] = False,
) -> None:
    """Export trajectories with their steps as eef JSONL (re-importable with `eef import`)."""
    from eef_tasks import trajectory_io  # polars loads only for the commands that use it

    filters = dict(run_id=run, source=source, purpose=purpose, split=split)
    if str(path) == "-":
        with store.reader(db) as con:
            n = trajectory_io.export_jsonl(con, sys.stdout, **filters)
    else:
        # the file appears whole or not at all, and never over the store or its write-ahead log
        with output_file(path, force=force, protected=(db, db.with_name(db.name + ".wal"))) as handle, \
                store.reader(db) as con:
            n = trajectory_io.export_jsonl(con, handle, **filters)
    err.print(f"exported {n} trajectories")


@app.command("export-dpo")
@user_errors
def export_dpo_cmd(
    path: Annotated[Path, typer.Argument(help="output JSONL file ('-' for stdout)")],
    run: Annotated[str, typer.Option("--run", help="the run whose training set the pairs come from")],
    iteration: Annotated[int, typer.Option("--iteration", help=">= 1")],
    db: DbOption = store.DEFAULT_DB,
    method: Annotated[str, typer.Option("--method", help="eef or rft (important states), or eto (view eto_pairs)")] = "eef",
    force: Annotated[bool, typer.Option("--force", help="replace an existing output file")] = False,
) -> None:
    """Preference pairs of important states (view preference_pairs; --method eto: view eto_pairs) as TRL DPO
    JSONL: prompt, chosen, rejected."""
    from eef_tasks import preferences

    if str(path) == "-":
        with store.reader(db) as con:
            n = preferences.export_pairs(con, sys.stdout, run, iteration, method)
    else:
        with output_file(path, force=force, protected=(db, db.with_name(db.name + ".wal"))) as handle, \
                store.reader(db) as con:
            n = preferences.export_pairs(con, handle, run, iteration, method)
    err.print(f"exported {n} preference pairs")


@app.command()
@user_errors
def collect(
    db: DbOption = store.DEFAULT_DB,
    env: Annotated[str, typer.Option("--env", help="a registered environment (offline experts: scienceworld, webshop)")] = "scienceworld",
    expert: Annotated[str, typer.Option("--expert", help="gold, synthetic or synthetic-cheap (offline experts; "
                                                        "synthetic-cheap fails more, priced as GPT-3.5), or llm")] = "gold",
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="task names, e.g. boil (repeatable or comma-separated)")] = None,
    task_id: Annotated[list[str] | None, typer.Option("--task-id", help="explicit task ids (repeatable)")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="train, dev or test (repeatable)")] = None,
    catalog: Annotated[str, typer.Option("--catalog", help="eto (ETO's split) or package (the game's own)")] = "eto",
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many tasks")] = None,
    workers: Annotated[int, typer.Option("--workers", help="environment worker processes")] = 1,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="expert seeds (repeatable)")] = None,
    failure_modes: Annotated[str | None, typer.Option(
        "--failure-modes", help="synthetic: the failure modes to draw from, comma-separated (e.g. "
                                "wrong_turn,carry_wrong,budget_detour: those after which the expert plays on)")] = None,
    llm_config: Annotated[str | None, typer.Option("--llm-config", help="llm: settings as a JSON object or a JSON file")] = None,
    model: Annotated[str | None, typer.Option("--model", help="llm: model name sent to the endpoint")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="llm: OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")] = None,
    name: Annotated[str | None, typer.Option("--name", help="llm: expert name stored in trajectories (e.g. gpt-4o)")] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="llm: environment variable holding the API key")] = None,
    api_key_secret: Annotated[str | None, typer.Option("--api-key-secret", help="llm: Prefect Secret block holding the API key")] = None,
) -> None:
    """Run an expert (gold, synthetic or llm) on tasks and store every trajectory (resumable)."""
    from eef_tasks.collect import collect_experts  # the environment stack loads only when needed

    llm = None
    if expert == "llm":
        llm = _json_settings(llm_config)
        given = {"model": model, "base_url": base_url, "name": name,
                 "api_key_env": api_key_env, "api_key_secret": api_key_secret}
        llm.update({key: value for key, value in given.items() if value is not None})
        llm = _llm_config(llm)
    names = [task for item in tasks or [] for task in item.split(",") if task]
    modes = _failure_modes(failure_modes)
    with interrupt.doing(f"collect of the {expert} expert on {env}"):
        summary = collect_experts(
            db, env, expert, task_ids=task_id or None, split=split or None, tasks=names or None,
            catalog=catalog, limit=limit, n_workers=workers, seed=seed or [0], llm=llm,
            failure_modes=modes,
        )
    out.print(
        f"{expert} on {env}: {summary.requested} trajectories requested, {summary.already_stored} "
        f"already stored, {summary.written} written ({summary.successes} successes), "
        f"{len(summary.errors)} failed"
    )
    if summary.prompt_tokens or summary.completion_tokens:
        out.print(f"tokens: {summary.prompt_tokens} prompt + {summary.completion_tokens} completion "
                  f"(${summary.cost_usd:.4f})")
    for traj_id, why in summary.errors:
        err.print(f"[red]failed:[/red] {escape(terminal_text(traj_id))}: {escape(terminal_text(why))}")
    if summary.errors:
        raise typer.Exit(1)


def _failure_modes(text: str | None) -> list[str] | None:
    """--failure-modes as a list, every name checked (a bad one is a one-line error)."""
    if text is None:
        return None
    from eef_tasks.experts.synthetic import FAILURE_MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in FAILURE_MODES]
    if unknown or not modes:
        raise UserError(f"--failure-modes: unknown mode {', '.join(unknown) or '(none given)'}: "
                        f"choose from {', '.join(FAILURE_MODES)}")
    return modes


def _llm_config(settings: dict):
    from eef_tasks.experts.llm import LLMExpertConfig  # httpx loads only for --expert llm

    config = _validated(LLMExpertConfig, settings, "LLM expert settings")
    # a command line ends up in shell history and process lists: no credentials in the URL
    _validated(lambda url: refuse_url_credentials(url, "base_url", LLM_KEY_HINT), config.base_url, "--base-url")
    return config


def _validated(model, data, what: str):
    """`model.model_validate(data)` (or `model(data)`), its first problem as one UserError line."""
    from pydantic import ValidationError  # with the settings models, only for the commands that have them

    try:
        return model.model_validate(data) if hasattr(model, "model_validate") else model(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        message = problem["msg"].removeprefix("Value error, ")
        raise UserError(f"{what}, {where}: {message}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _json_settings(value: str | None) -> dict:
    """A JSON object given inline or as the path of a file holding one."""
    if not value:
        return {}
    try:
        settings = json.loads(value if value.lstrip().startswith("{") else Path(value).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise store.StoreError(f"--llm-config: not a JSON object or a readable JSON file: {exc}") from None
    if not isinstance(settings, dict):
        raise store.StoreError("--llm-config must be a JSON object")
    return settings


@app.command()
@user_errors
def train(
    run: Annotated[str, typer.Option("--run", help="the run whose examples to train on")],
    iteration: Annotated[int, typer.Option("--iteration")],
    method: Annotated[TrainMethod, typer.Option("--method", help="bc, eef, rft, sft-all, nat; or dpo")],
    db: DbOption = store.DEFAULT_DB,
    out_dir: Annotated[Path | None, typer.Option("--out", help="adapter folder (default data/adapters/<run>/<method>-it<N>)")] = None,
    sft_adapter: Annotated[Path | None, typer.Option(
        "--sft-adapter", help="dpo: the SFT adapter to continue (default data/adapters/<run>/<pairs-from>-it<N>)")] = None,
    pairs_from: Annotated[str, typer.Option("--pairs-from", help="dpo: the training set whose pairs to use, eef or rft; or eto (a run's explorations)")] = "eef",
    beta: Annotated[float | None, typer.Option("--beta", help="dpo: DPO's beta (default 0.1)")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="local path or name (default: SmolLM2-135M-Instruct)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="effective batch (gradient accumulation)")] = None,
    micro_batch: Annotated[int | None, typer.Option("--micro-batch")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    finetune: Annotated[Finetune | None, typer.Option(
        "--finetune", help="lora (default): a LoRA adapter; full: every weight (the folder is then a whole model)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing adapter")] = False,
) -> None:
    """Train a fresh LoRA adapter on one run/iteration/method's training_examples (loss on actions only);
    with --method dpo, continue an SFT adapter with DPO (TRL) on the preference pairs of its training set."""
    from eef_tasks import training  # the model stack loads only for the model commands

    if method is TrainMethod.dpo:
        from eef_tasks import dpo

        if finetune is not None:
            raise UserError("--finetune is an option of SFT training: --method dpo continues a LoRA adapter")

        given = {"epochs": epochs, "learning_rate": lr, "batch_size": batch_size, "micro_batch": micro_batch,
                 "max_length": max_length, "max_steps": max_steps, "seed": seed, "beta": beta}
        dpo_config = dpo.DPOTrainConfig(**{key: value for key, value in given.items() if value is not None})
        sft = sft_adapter or training.default_adapter_dir(run, iteration, pairs_from)
        with interrupt.doing(f"dpo of {run} iteration {iteration}"):
            info = dpo.train_dpo(db, run, iteration, out_dir or training.default_adapter_dir(run, iteration, "dpo"),
                                 sft_adapter=sft, method=pairs_from, base_model=base_model, config=dpo_config,
                                 overwrite=overwrite)
        out.print(f"adapter {info['path']}: DPO on {info['n_pairs']} preference pairs from {escape(str(sft))}, "
                  f"{info['n_optimizer_steps']} optimizer steps, final loss {round(info['final_loss'], 4)}, "
                  f"{info['wall_s']:.0f} s")
        return
    if beta is not None or sft_adapter is not None:
        raise UserError("--beta and --sft-adapter are options of --method dpo")

    given = {"epochs": epochs, "learning_rate": lr, "batch_size": batch_size, "micro_batch": micro_batch,
             "max_length": max_length, "max_steps": max_steps, "seed": seed,
             "finetune": finetune.value if finetune else None}
    config = training.TrainConfig(**{key: value for key, value in given.items() if value is not None})
    out_dir = out_dir or training.default_adapter_dir(run, iteration, method.value)
    with interrupt.doing(f"train of {run} iteration {iteration}"):
        info = training.train_adapter(db, run, iteration, method.value, out_dir, config,
                                      base_model=base_model, overwrite=overwrite)
    out.print(
        f"adapter {info.path}: {info.n_examples} examples, {info.n_supervised_tokens} supervised of "
        f"{info.n_tokens} tokens, {info.n_optimizer_steps} optimizer steps, final loss "
        f"{info.final_loss if info.final_loss is None else round(info.final_loss, 4)}, {info.wall_s:.0f} s"
        + (f"; {info.n_skipped} examples skipped (listed in eef-train.json)" if info.n_skipped else "")
    )


class RolloutPurpose(str, Enum):
    explore = "explore"
    simulate = "simulate"
    eval = "eval"


class RolloutEngine(str, Enum):
    hf = "hf"
    vllm = "vllm"


@app.command()
@user_errors
def rollout(
    run: Annotated[str, typer.Option("--run", help="the run the trajectories belong to")],
    iteration: Annotated[int, typer.Option("--iteration")],
    purpose: Annotated[RolloutPurpose, typer.Option("--purpose", help="explore (from s0), simulate (from failed expert states) or eval")],
    db: DbOption = store.DEFAULT_DB,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA adapter folder (eef train's output)")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="local path or name (default: SmolLM2-135M-Instruct)")] = None,
    split: Annotated[str, typer.Option("--split", help="explore/eval: the tasks' split in the store")] = "train",
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many tasks (explore/eval)")] = None,
    samples: Annotated[int, typer.Option("--samples", help="rollouts per start state (RFT x k)")] = 1,
    sims: Annotated[int | None, typer.Option("--sims", help="simulate: M, if the run is not registered yet")] = None,
    workers: Annotated[int, typer.Option("--workers", help="concurrent episodes (one game process each)")] = 4,
    temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    engine_kind: Annotated[RolloutEngine, typer.Option("--engine", help="hf: the model in this process; vllm: a vLLM server (docs/vllm.md)")] = RolloutEngine.hf,
    vllm_url: Annotated[str | None, typer.Option("--vllm-url", help="vllm: the server's OpenAI URL, e.g. http://localhost:8000/v1, or several replicas, comma-separated (default $EEF_VLLM_URL)")] = None,
    served_model: Annotated[str | None, typer.Option("--served-model", help="vllm: the base model's name on the server (default: the one it serves)")] = None,
    adapter_path_on_server: Annotated[str | None, typer.Option("--adapter-path-on-server", help="vllm: the adapter folder as the server sees it (default: the local absolute path)")] = None,
    env: Annotated[str, typer.Option("--env", help="a registered environment: " + ", ".join(registry.BACKENDS))] = "scienceworld",
    env_url: Annotated[str | None, typer.Option("--env-url", help="its server, for environments that have one (agentgym:*)")] = None,
) -> None:
    """Run the policy in the environment and store every trajectory (resumable)."""
    from eef_tasks import rollout as rollouts  # the model stack loads only for the model commands
    from eef_tasks.engines import SamplingConfig
    from eef_tasks.pipeline import set_torch_threads

    if vllm_url is not None:  # before any work: a command line lands in shell history and `ps`
        _validated(lambda url: refuse_url_credentials(url, "--vllm-url", VLLM_KEY_HINT), vllm_url, "--vllm-url")
    set_torch_threads("rollout")

    if purpose is RolloutPurpose.simulate:
        episodes = rollouts.simulation_episodes(db, run, sims, n_samples=samples)
    else:
        with store.reader(db) as con:
            task_ids = [row[0] for row in con.execute(
                "SELECT task_id FROM tasks WHERE split = $split AND env = $env ORDER BY task_id",
                {"split": split, "env": registry.backend(env).task_env},
            ).fetchall()]
        episodes = rollouts.explore_episodes(task_ids[:limit] if limit else task_ids, samples)
    engine = None
    if engine_kind is RolloutEngine.vllm:
        from eef_tasks.engines.vllm import VLLMEngine  # only --engine vllm needs the HTTP client

        if base_model:
            raise UserError("--base-model is for --engine hf; with --engine vllm name the server's model "
                            "with --served-model")
        engine = VLLMEngine(vllm_url, served_model, adapter, adapter_path_on_server=adapter_path_on_server)
    try:
        with interrupt.doing(f"{purpose.value} of {run} iteration {iteration}"):
            summary = rollouts.run_rollouts(
                db, run, iteration, episodes, purpose=purpose.value, model_path=base_model,
                adapter_dir=adapter, n_workers=workers, engine=engine,
                env=registry.backend(env).name, env_kwargs=registry.env_kwargs(env, env_url),
                sampling=SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed),
            )
    finally:
        if engine is not None:
            engine.close()
    out.print(
        f"{purpose.value} rollouts of run {run} iteration {iteration}: {summary.requested} requested, "
        f"{summary.already_stored} already stored, {summary.written} written "
        f"({summary.successes} successes), {len(summary.errors)} failed"
    )
    for key, why in summary.errors:
        err.print(f"[red]failed:[/red] {escape(terminal_text(str(key)))}: {escape(terminal_text(str(why)))}")
    if summary.errors:
        raise typer.Exit(1)


@app.command("demo-selection")
@user_errors
def demo_selection(
    db: DbOption = Path("data/demo-synthetic.duckdb"),
    n_tasks: Annotated[int, typer.Option("--tasks", help="synthetic tasks to generate")] = 60,
    iterations: Annotated[int, typer.Option("--iterations")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Selection only: generate a synthetic store, select BC, EEF and RFT sets for every iteration, compare them
    (no model, no game; `make demo` runs the real method)."""
    from eef_tasks import demo as demo_module  # polars and the synthetic store, only for this command

    demo_module.run(db, n_tasks=n_tasks, iterations=iterations, seed=seed, console=out)


def _overrides(settings: list[str] | None) -> dict:
    """KEY=VALUE pairs (VALUE parsed as JSON when it is JSON, else kept as a string)."""
    values: dict = {}
    for item in settings or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise store.StoreError(f"--set expects KEY=VALUE, not {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


@app.command("run")
@user_errors
def run_cmd(
    preset: Annotated[str, typer.Option("--preset", help="a recipe of eef_tasks/pipeline/presets/: " + presets.describe())] = "demo",
    db: DbOption = store.DEFAULT_DB,
    name: Annotated[str, typer.Option("--name", help="runs are NAME-eef and NAME-rft")] = "demo",
    expert: Annotated[str | None, typer.Option("--expert", help="collect synthetic|synthetic-cheap|gold expert data first, "
                                                               "or none; several comma-separated, e.g. synthetic,synthetic-cheap "
                                                               "(default: the preset's; demo: synthetic,gold)")] = None,
    rft_samples: Annotated[int, typer.Option("--rft-samples", help="k of the RFT baseline (RFT x k)")] = 1,
    extra: Annotated[str | None, typer.Option(
        "--extra", help="more runs, comma-separated: sft-all, nat (offline baselines), eef-binary (EEF with "
                        "search=binary), eto (ETO), eef+dpo (EEF then DPO), rft-xK (RFT with K samples); "
                        "runs NAME-<extra> ('+' as '-')")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="override a run setting: KEY=VALUE (JSON), e.g. iterations=3")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="where the comparison table and plot go")] = Path("data/reports"),
    env: Annotated[str | None, typer.Option("--env", help="a registered environment: " + ", ".join(registry.BACKENDS))] = None,
    env_url: Annotated[str | None, typer.Option("--env-url", help="its server, for environments that have one (agentgym:*)")] = None,
) -> None:
    """The whole method end to end (Prefect flow `experiment`): expert data, EEF, RFT, comparison."""
    from flows.local_server import temporary_server  # Prefect loads only for the flow commands
    from flows.pipeline import ExperimentParams, experiment_flow, extra_run_id

    from eef_tasks.pipeline import preset_config  # RunConfig (pydantic, training settings), only for `eef run`
    from eef_tasks import report  # polars loads only for the commands that use it

    # no --expert: none named here, the experiment flow collects the preset's (its EXPERT recipe)
    experts = [e.strip() for e in (expert or "").split(",") if e.strip()]
    if expert is not None and (not experts or any(e not in ("synthetic", "synthetic-cheap", "gold", "none") for e in experts)
                               or ("none" in experts and len(experts) > 1)):
        raise store.StoreError("--expert must be synthetic, synthetic-cheap, gold (several: comma-separated) or none")
    overrides = _overrides(settings)
    overrides.update({key: value for key, value in (("env", env), ("env_url", env_url)) if value is not None})
    preset_config(preset, f"{name}-eef", "eef", **overrides)  # bad settings: one line, before Prefect starts
    params = _validated(ExperimentParams, dict(
        db=str(db), preset=preset, name=name, expert=experts[0] if experts else None, more_experts=experts[1:],
        rft_samples=rft_samples,
        extra_runs=[x for x in (extra or "").split(",") if x], overrides=overrides, out_dir=str(out_dir)),
        "run settings")
    with temporary_server():  # none configured: one that stops last and dies with this process
        result = experiment_flow(params)
    run_ids = [extra_run_id(name, m) for m in ("eef", "rft", *params.extra_runs)]
    _print_comparison(report.comparison(db, run_ids),
                      f"EEF vs RFT{''.join(', ' + m for m in params.extra_runs)} ({preset} preset; win rates in %)")
    _compare_cost(db, run_ids, CompareFormat.table, None)
    out.print(f"table: {escape(str(result['table']))}  plot: {escape(str(result['plot']))}  "
              f"cost: {escape(str(result['cost_table']))}")
    out.print(f"Try: eef sql --db {escape(str(db))} \"SELECT * FROM run_comparison\"")


@app.command()
@user_errors
def evaluate(
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA adapter folder (none: the base model)")] = None,
    db: DbOption = store.DEFAULT_DB,
    run: Annotated[str, typer.Option("--run", help="the run the eval trajectories are stored under")] = "eval",
    iteration: Annotated[int, typer.Option("--iteration")] = 0,
    split: Annotated[str, typer.Option("--split", help="dev or test (never tasks that are also in train)")] = "dev",
    tasks: Annotated[str | None, typer.Option("--tasks", help="comma-separated task names, e.g. boil,melt")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many tasks")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model")] = None,
    workers: Annotated[int, typer.Option("--workers")] = 4,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="cap on each task's step limit")] = None,
    env: Annotated[str, typer.Option("--env", help="a registered environment: " + ", ".join(registry.BACKENDS))] = "scienceworld",
    env_url: Annotated[str | None, typer.Option("--env-url", help="its server, for environments that have one (agentgym:*)")] = None,
    tag: Annotated[PromptTag | None, typer.Option(
        "--tag", help="NAT's prompt marker in every prompt (a nat adapter: positive)")] = None,
) -> None:
    """Win rate and mean reward of an adapter on a split (greedy), stored as purpose='eval' trajectories."""
    from eef_tasks import evaluation  # the model stack loads only for the model commands
    from eef_tasks.pipeline import set_torch_threads

    set_torch_threads("evaluate")
    with interrupt.doing(f"evaluate of {run} iteration {iteration}"):
        result = evaluation.evaluate_adapter(
            db, adapter, run_id=run, iteration=iteration, split=split,
            task_names=[t for t in (tasks or "").split(",") if t] or None, limit=limit, base_model=base_model,
            n_workers=workers, max_new_tokens=max_new_tokens, max_steps=max_steps,
            env=registry.backend(env).name, env_kwargs=registry.env_kwargs(env, env_url),
            prompt_tag=tag.value if tag else None,
        )
    out.print(
        f"{escape(result.model_id)} on {result.n_tasks} {split} tasks: win rate {result.win_rate:.1%}, "
        f"mean reward {result.mean_reward:.3f} ({result.written} new, {result.already_stored} already stored"
        f"{', ' + str(len(result.errors)) + ' failed' if result.errors else ''})"
    )
    for key, why in result.errors:
        err.print(f"[red]failed:[/red] {escape(terminal_text(str(key)))}: {escape(terminal_text(str(why)))}")
    if result.errors:
        raise typer.Exit(1)


def _print_comparison(frame, title: str) -> None:
    """The run_comparison rows as a table, then each run's best dev iteration."""
    from rich.table import Table  # only the table-printing commands need it

    from eef_tasks import report  # polars loads only for the commands that use it

    headers, rows = report.display_rows(frame)
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in ("run", "method", "eval split") else "right")
    for row in rows:
        table.add_row(*map(escape, row))
    # as wide as the table needs (never cut a cell), at least the terminal's width
    natural = Console(width=10_000).measure(table).maximum
    Console(highlight=False, width=max(natural, shutil.get_terminal_size((160, 24)).columns)).print(table)
    for line in report.best_iteration_lines(frame):
        out.print(escape(line))


class CompareFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _wrote_as_data(frame, db: Path, fmt: CompareFormat) -> bool:
    """A comparison frame to stdout as csv or json (True), or nothing for the table format (False);
    an empty one is an error."""
    if frame.is_empty():
        raise store.StoreError(f"nothing to compare in {db}: no run has policy trajectories or training examples yet")
    if fmt is CompareFormat.csv:
        sys.stdout.write(frame.write_csv())
    elif fmt is CompareFormat.json:
        sys.stdout.write(json_text(frame.to_dicts(), indent=1) + "\n")
    else:
        return False
    return True


@app.command()
@user_errors
def compare(
    db: DbOption = store.DEFAULT_DB,
    run: Annotated[list[str] | None, typer.Option("--run", help="only this run (repeatable; default: every run)")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="also write the win-rate plot to FILE.png or FILE.svg")] = None,
    fmt: Annotated[CompareFormat, typer.Option("--format")] = CompareFormat.table,
    totals: Annotated[bool, typer.Option("--totals", help="one row per run: its whole budget (view run_budget)")] = False,
    group: Annotated[str | None, typer.Option(
        "--group", help="the seeded experiment NAME (runs NAME-<method>-s<seed>): per method over seeds, "
                        "EEF minus each baseline with a 95 % bootstrap interval")] = None,
    results: Annotated[Path | None, typer.Option(
        "--out", help="with --group: also write the results folder (results.csv, differences.csv, results.md, win_rates.png)")] = None,
    cost: Annotated[bool, typer.Option("--cost", help="per run instead: expert spend on its training tasks, best dev "
                                                      "win rate, win rate per dollar (view run_expert_cost)")] = False,
    cost_plot: Annotated[Path | None, typer.Option(
        "--cost-plot", help="with --cost: also plot win rate against expert spend to FILE.png or FILE.svg")] = None,
) -> None:
    """Compare runs (methods x iterations): training sets, rollouts spent, eval win rate and reward."""
    from eef_tasks import report  # polars loads only for the commands that use it

    if group is not None:
        if run or plot or totals:
            raise store.StoreError("--group reads its own runs: no --run, --plot or --totals with it")
        _compare_group(db, group, fmt, results)
        return
    if results is not None:
        raise store.StoreError("--out writes a group's results folder: give --group NAME")
    if plot is not None:
        report.check_plot_path(plot)
    if cost_plot is not None and not cost:
        raise UserError("--cost-plot goes with --cost")
    if cost:
        _compare_cost(db, run, fmt, cost_plot)
        return
    frame = report.run_totals(db, run or None) if totals else report.comparison(db, run or None)
    if not _wrote_as_data(frame, db, fmt):
        if totals:
            _print_frame(frame, "Budget per run (view run_budget)")
        else:
            _print_comparison(frame, "Runs by iteration (win rates in %; eval split: dev, else test)")
            _print_frame(report.run_totals(db, run or None), "Budget per run (view run_budget)")
    if plot is not None:
        err.print(f"wrote {report.win_rate_plot(report.comparison(db, run or None), plot)}")


def _print_frame(frame, title: str) -> None:
    """A frame as a table, numbers as they are ('-' for none)."""
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if frame[column].dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*(escape("-" if v is None else f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float)
                               else str(v)) for v in row))
    natural = Console(width=10_000).measure(table).maximum
    Console(highlight=False, width=max(natural, shutil.get_terminal_size((160, 24)).columns)).print(table)


def _compare_group(db: Path, name: str, fmt: CompareFormat, results: Path | None) -> None:
    from eef_tasks import experiment

    result = experiment.group_report(db, name)
    if fmt is CompareFormat.csv:
        sys.stdout.write(result.runs.write_csv() + "\n" + result.differences.write_csv())
    elif fmt is CompareFormat.json:
        sys.stdout.write(json_text({"runs": result.runs.to_dicts(), "methods": result.methods.to_dicts(),
                                    "differences": result.differences.to_dicts()}, indent=1) + "\n")
    else:
        for title, frame in experiment.display_frames(result):
            _print_frame(frame, title)
    if results is not None:
        err.print(f"wrote {experiment.write_results(result, results)}")


@app.command("experiment")
@user_errors
def experiment_cmd(
    preset: Annotated[str, typer.Option("--preset", help="a recipe of eef_tasks/pipeline/presets/: " + presets.describe())] = "cpu",
    db: DbOption = store.DEFAULT_DB,
    name: Annotated[str | None, typer.Option("--name", help="runs are NAME-eef-s<seed>, NAME-rft-s<seed>, NAME-rftk-s<seed> (default: the preset)")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="comma-separated seeds")] = "0,1,2",
    rft_k: Annotated[int | None, typer.Option("--rft-k", help="k of RFT×k (default: EEF's episodes per iteration / training tasks)")] = None,
    expert: Annotated[str, typer.Option("--expert", help="collect synthetic|gold expert data first, or none")] = "synthetic",
    extra: Annotated[str | None, typer.Option(
        "--extra", help="more methods per seed, comma-separated: sft-all, nat, eef-binary, eto, eef+dpo, rft-xK; "
                        "runs NAME-<extra>-s<seed> ('+' as '-'), compared with EEF like RFT")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="override a run setting: KEY=VALUE (JSON), e.g. iterations=2")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="the results folder (default results/NAME)")] = None,
) -> None:
    """EEF vs RFT vs RFT×k for several seeds at equal rollout budgets (Prefect flow `seeds`), then the
    results folder: per method test win rates at the dev-chosen iteration, bootstrap intervals, budgets."""
    from flows.local_server import temporary_server  # Prefect loads only for the flow commands
    from flows.seeds import SeedsParams, seed_overrides, seeds_flow

    from eef_tasks.pipeline import preset_config

    if expert not in ("synthetic", "gold", "none"):
        raise store.StoreError("--expert must be synthetic, gold or none")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise store.StoreError(f"--seeds expects comma-separated integers, not {seeds!r}") from None
    name = name or preset
    overrides = _overrides(settings)
    params = _validated(SeedsParams, dict(
        db=str(db), preset=preset, name=name, seeds=seed_list, rft_k=rft_k, expert=expert, overrides=overrides,
        extra_runs=[x.strip() for x in (extra or "").split(",") if x.strip()], out_dir=str(out_dir) if out_dir else None, command="eef " + " ".join(sys.argv[1:])), "experiment settings")
    preset_config(preset, f"{name}-eef-s{seed_list[0]}", "eef", **seed_overrides(preset, overrides, seed_list[0]))
    with temporary_server():
        result = seeds_flow(params)
    _compare_group(db, name, CompareFormat.table, None)
    out.print(f"results: {escape(result['results'])} (k = {result['k']})")


def _compare_cost(db: Path, runs: list[str] | None, fmt: CompareFormat, plot: Path | None) -> None:
    """`eef compare --cost`: one row per run, its expert spend and win rate per dollar."""
    from rich.table import Table

    from eef_tasks import expert_cost, report

    if plot is not None:
        report.check_plot_path(plot)
    frame = expert_cost.cost_table(db, runs or None)
    if not _wrote_as_data(frame, db, fmt):
        headers, rows = expert_cost.display_rows(frame)
        table = Table(title="Win rate per unit of expert cost (expert data of each run's training tasks)")
        for header in headers:
            table.add_column(header, justify="left" if header in ("run", "method", "experts") else "right")
        for row in rows:
            table.add_row(*map(escape, row))
        Console(highlight=False, width=max(Console(width=10_000).measure(table).maximum,
                                           shutil.get_terminal_size((160, 24)).columns)).print(table)
    if plot is not None:
        err.print(f"wrote {expert_cost.cost_plot(frame, plot)}")


@app.command()
@user_errors
def serve(
    interval: Annotated[float | None, typer.Option(
        "--interval", help="run the `iteration` deployment every SECONDS (advances --run by one iteration)")] = None,
    cron: Annotated[str | None, typer.Option(
        "--cron", help="or on this cron schedule, in UTC, e.g. '0 3 * * *'")] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="the run the `iteration` deployment advances by default (needed by a schedule)")] = None,
    db: DbOption = store.DEFAULT_DB,
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many flow runs at once")] = None,
) -> None:
    """Serve every flow as a deployment (<flow>/served) of the Prefect server at PREFECT_API_URL; blocks."""
    from flows import serve as serving  # Prefect's runner loads only for this command

    serving.serve(interval, cron, run, db, limit, say=lambda line: out.print(escape(line)))


vllm_app = typer.Typer(help="A real vLLM server for --engine vllm (its own venv: `make vllm`; docs/vllm.md).",
                       no_args_is_help=True)
app.add_typer(vllm_app, name="vllm")


@vllm_app.command("serve")
@user_errors
def vllm_serve(
    model: Annotated[str | None, typer.Option("--model", help="checkpoint folder or hub id (default: SmolLM2-135M-Instruct, converted once from its GGUF)")] = None,
    served_name: Annotated[str, typer.Option("--served-model-name", help="the base model's name in requests")] = "smollm2-135m-instruct",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="0: a free port")] = 8000,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="--max-lora-rank: the run's LoRA rank (train.lora_r); 0: no LoRA")] = 16,
    kv_cache_gib: Annotated[int | None, typer.Option("--kv-cache-gib", help="CPU: KV cache in GiB (default: a quarter of free memory, 1-8)")] = None,
    max_model_len: Annotated[int, typer.Option("--max-model-len", help="longest prompt + reply, in tokens")] = 8192,
    max_loras: Annotated[int, typer.Option("--max-loras", help="adapters in one batch")] = 2,
    dtype: Annotated[str, typer.Option("--dtype", help="bfloat16 (fast here), or float32 (token-identical to transformers' float32)")] = "bfloat16",
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the server to answer")] = 600.0,
) -> None:
    """Start vLLM for the default model with this machine's flags, print the URL to use, serve until Ctrl-C."""
    from eef_tasks.engines.vllm_server import ServerSpec, VLLMServer

    spec = ServerSpec.for_machine(model, lora_rank=lora_rank or None, served_name=served_name, host=host,
                                  port=port, kv_cache_gib=kv_cache_gib, max_model_len=max_model_len,
                                  max_loras=max_loras, dtype=dtype)
    server = VLLMServer(spec)
    err.print(f"starting vLLM ({spec.device}) for {escape(spec.model)}; log: {escape(str(server.log_path))}")
    server.start()
    try:
        seconds = server.wait_ready(timeout)
        out.print(f"vLLM serves {escape(spec.served_name)} at {escape(server.url)} (pid {server.proc.pid}, up in {seconds:.0f} s)")
        out.print(f"use it: eef run --set engine=vllm --set vllm_url={escape(server.url)}   "
                  f"or   export EEF_VLLM_URL={escape(server.url)}")
        out.print("Ctrl-C stops it.")
        status = server.proc.wait()
        raise UserError(f"the vLLM server exited with status {status}:\n{server.log_tail(15)}")
    finally:
        server.stop()


if __name__ == "__main__":
    app()

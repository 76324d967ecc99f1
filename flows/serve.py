"""Deployments of eef's flows, served from one process (`eef serve`).

The story: check that a Prefect server answers (the UI and schedules live there), register one
deployment per flow — `<flow>/served`, e.g. `eef/served`, `iteration/served` — and serve them:
this process polls the server and runs each triggered or scheduled flow run in a subprocess of
its own. The `iteration` deployment can carry a schedule (every N seconds, or a cron expression)
that advances one run by one iteration per trigger ("rerun per iteration"), never two at once.
`prefect.yaml` describes the same flows as work-pool deployments (`<flow>/pool`) for workers.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.flows import EntrypointType
from prefect.runner import Runner
from prefect.schedules import Cron, Interval
from prefect.settings import get_current_settings

from eef_tasks import interrupt, store
from eef_tasks.errors import UserError
from flows.collect import CollectParams, collect_flow
from flows.pipeline import (
    CompareParams,
    EvaluateParams,
    ExperimentParams,
    IterationParams,
    RFTParams,
    RunParams,
    compare_flow,
    eef_flow,
    evaluate_flow,
    experiment_flow,
    iteration_flow,
    rft_flow,
)
from flows.selection import select_flow

DEPLOYMENT = "served"   # deployments are <flow name>/served
TAGS = ["eef"]


@dataclass(frozen=True)
class Server:
    api_url: str
    ui_url: str | None


def check_server(timeout: float = 5.0) -> Server:
    """The Prefect server this process talks to; a UserError when none is configured or none answers.

    Without PREFECT_API_URL (environment or Prefect profile) Prefect would start a temporary
    in-process server that dies with this process and has no UI to open: useless for serving.
    """
    settings = get_current_settings()
    api_url = settings.api.url
    if not api_url:
        raise UserError(
            "PREFECT_API_URL is not set: serving needs a Prefect server that stays up. Start one with "
            "`prefect server start` (UI at http://127.0.0.1:4200), then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and run this again")
    api_url = str(api_url).rstrip("/")
    try:
        response = httpx.get(f"{api_url}/health", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise UserError(
            f"no Prefect server answers at PREFECT_API_URL={api_url} ({type(exc).__name__}: {exc}); "
            "start one with `prefect server start`, or fix PREFECT_API_URL") from None
    ui_url = settings.ui_url
    return Server(api_url=api_url, ui_url=str(ui_url).rstrip("/") if ui_url else None)


def schedule_of(interval: float | None = None, cron: str | None = None):
    """The iteration schedule: an `Interval` every `interval` seconds or a `Cron` (UTC), or None."""
    if interval is not None and cron is not None:
        raise UserError("give either an interval or a cron expression, not both")
    if interval is not None:
        if interval <= 0:
            raise UserError(f"the interval must be a positive number of seconds, not {interval}")
        return Interval(timedelta(seconds=interval))
    if cron is not None:
        try:
            return Cron(cron, timezone="UTC")
        except ValueError as exc:
            raise UserError(f"invalid cron expression {cron!r}: {exc}") from None
    return None


def deployments(
    interval: float | None = None,
    cron: str | None = None,
    iteration_run: str | None = None,
    db: str | Path | None = None,
) -> list:
    """One `RunnerDeployment` per flow, named `<flow>/served`.

    `db` (made absolute) becomes the default store of every deployment's parameters; flows
    keep their own defaults otherwise. `iteration_run` is the run the `iteration` deployment
    advances by default; a schedule (`interval` seconds or `cron`) needs it.
    """

    schedule = schedule_of(interval, cron)
    if schedule is not None and not iteration_run:
        raise UserError("a schedule advances one run: name it (--run RUN)")
    db = str(Path(db).resolve()) if db is not None else None

    def params(model, **values) -> dict | None:
        """Full default parameters (so the UI form starts from them), or the flow's own defaults."""
        if db is not None:
            values["db"] = db
        return {"params": model(**values).model_dump(mode="json")} if values else None

    iteration_params = params(IterationParams, **({"run_id": iteration_run} if iteration_run else {}))
    what = f"run {iteration_run!r}" if iteration_run else "the run named in the parameters"
    when = f" Scheduled: {describe_schedule(interval, cron)}." if schedule is not None else ""
    specs = [
        (iteration_flow, iteration_params, ["pipeline", "schedule"],
         f"Advance {what} by one iteration (explore, simulate, select, train, evaluate); "
         f"a finished run does nothing.{when}"),
        (eef_flow, params(RunParams), ["pipeline", "gpu"],
         "Register an EEF run and loop its iterations until done (behaviour cloning first)."),
        (rft_flow, params(RFTParams), ["pipeline", "gpu"],
         "Register an RFT baseline run (no simulations, RFT×k) and loop its iterations until done."),
        (evaluate_flow, params(EvaluateParams), ["pipeline", "gpu"],
         "Evaluate one iteration's adapter again (resumes a partial evaluation)."),
        (compare_flow, params(CompareParams), ["report"],
         "Methods × iterations: win rate, examples by kind, need-recover states; table and plot."),
        (experiment_flow, params(ExperimentParams), ["pipeline", "gpu"],
         "Collect expert data, then an EEF and an RFT run from one preset, then compare them."),
        (collect_flow, params(CollectParams), ["data"],
         "Run an expert (gold, synthetic or an LLM) on ScienceWorld tasks; store every trajectory."),
        (select_flow, {"db": db} if db is not None else None, ["selection"],
         "Write the BC set and the EEF or RFT training sets of a run's iterations from the store."),
    ]
    built = []
    for flow, parameters, tags, description in specs:
        is_iteration = flow is iteration_flow
        built.append(flow.to_deployment(
            name=DEPLOYMENT,
            parameters=parameters,
            description=description,
            tags=[*TAGS, *tags],
            schedules=[schedule] if is_iteration and schedule is not None else None,
            # two iterations of one run at once would both take the same next iteration
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE) if is_iteration else None,
            entrypoint_type=EntrypointType.MODULE_PATH,  # flows.pipeline.eef_flow: works from any directory
        ))
    return built


def describe_schedule(interval: float | None, cron: str | None) -> str:
    return f"every {interval:g} s" if interval is not None else f"cron {cron!r} (UTC)"


def serve(
    interval: float | None = None,
    cron: str | None = None,
    iteration_run: str | None = None,
    db: str | Path | None = None,
    limit: int | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Register the deployments and run what is triggered until interrupted (blocks); `say`
    gets the lines that tell the user where the server and its UI are and what is scheduled.

    On shutdown (Ctrl-C, SIGTERM) Prefect pauses the served schedules.
    """
    server = check_server()
    built = deployments(interval, cron, iteration_run, db)
    say(f"Prefect API: {server.api_url}")
    if server.ui_url:
        say(f"Prefect UI:  {server.ui_url} (Deployments: trigger a flow with Run > Custom run; "
            "Runs: logs and artifacts)")
    if interval is not None or cron is not None:
        say(f"iteration/{DEPLOYMENT} advances run {iteration_run!r} of {Path(db or store.DEFAULT_DB).resolve()} "
            f"{describe_schedule(interval, cron)}")
    serve_deployments(built, limit=limit, on_started=lambda: say(
        "serving until Ctrl-C (schedules are paused on exit); flow runs execute in this process's children"))


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.serve [--interval S | --cron EXPR] [--run RUN] [--db PATH] [--limit N]`."""
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=serve.__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float)
    parser.add_argument("--cron")
    parser.add_argument("--run")
    parser.add_argument("--db", default=str(store.DEFAULT_DB))
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    with interrupt.handlers("python -m flows.serve"):
        try:
            serve(args.interval, args.cron, args.run, args.db, args.limit)
        except UserError as exc:
            sys.exit(f"error: {exc}")
        if interrupt.stopping():
            print(interrupt.message(), file=sys.stderr, flush=True)
            sys.exit(interrupt.exit_status())


class _SignalNotingRunner(Runner):
    """Prefect's runner, telling eef_tasks.interrupt that its SIGTERM handler ran."""

    def handle_sigterm(self, *args, **kwargs) -> None:
        interrupt.note_signal(signal.SIGTERM)
        super().handle_sigterm(*args, **kwargs)


def serve_deployments(built: list, limit: int | None = None, on_started: Callable[[], None] | None = None) -> None:
    """`prefect.serve` (schedules paused on shutdown), except that Ctrl-C and SIGTERM are recorded
    in `eef_tasks.interrupt` before the runner shuts down, which quiets its console logs and lets
    the command end with the one interrupt line and 130 / 143. (Prefect's runner replaces every
    SIGTERM handler by its own graceful shutdown and returns normally, as it does after Ctrl-C.)
    `on_started` is called once the runner serves (a SIGTERM before that ends it without pausing
    the schedules: Prefect's runner then simply exits)."""
    runner = _SignalNotingRunner(pause_on_shutdown=True, limit=limit)
    for deployment in built:
        runner.add_deployment(deployment)

    async def serving() -> None:
        serving_task = asyncio.current_task()

        def on_ctrl_c() -> None:  # what asyncio.run does on Ctrl-C: cancel the main task
            interrupt.note_signal(signal.SIGINT)
            serving_task.cancel()

        async def announce() -> None:
            while not runner.started:
                await asyncio.sleep(0.1)
            if on_started is not None:
                on_started()

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_ctrl_c)
        announcing = asyncio.create_task(announce())
        try:
            await runner.start()  # cancelled: it stops its flow runs and pauses the schedules
        finally:
            announcing.cancel()

    interrupt.quiet_console_logs()
    try:
        asyncio.run(serving())
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()

"""Screenshots of the Prefect UI pages a user opens, for the README (docs/ui/*.png).

    .venv/bin/python scripts/screenshots.py [--out docs/ui] [--port 4299] [--preset tiny]

The story: start a Prefect server of its own (a temporary PREFECT_HOME, so nothing of yours is
touched) and `eef serve` against it, photograph the `experiment/served` Custom-run form, trigger
that deployment with the preset (tiny: ~7 minutes on a 2-core CPU), wait for it, then photograph
the runs list, the experiment run's page, an iteration table and the EEF run's summary with a
real headless browser (Debian's `chromium`: `apt-get install -y chromium`). Stops what it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAME = "ui"


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(check, what: str, timeout: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"error: {proc.args[:3]} exited ({proc.returncode}) while waiting for {what}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"error: {what} not reached within {timeout:.0f} s")


def screenshot(url: str, path: Path, size: tuple[int, int]) -> None:
    """One page as a PNG; the UI is a single-page app: give its API calls time to answer."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: no chromium on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        "--virtual-time-budget=15000", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=120)
    shrink(path)
    print(f"{path} ({path.stat().st_size // 1024} KB): {url}")


def shrink(path: Path) -> None:
    """256 colours are plenty for a UI page: a third of the bytes."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "ui"))
    parser.add_argument("--port", type=int, default=4299)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ui = f"http://127.0.0.1:{args.port}"
    api = f"{ui}/api"
    work = Path(tempfile.mkdtemp(prefix="eef-screenshots-"))
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_UI_URL": ui, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)  # this process's Prefect client talks to the same server
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                            str(args.port)], env, work / "server.log"))
        wait_until(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, "the Prefect server", 120, procs)
        db = work / "eef.duckdb"
        procs.append(start([str(BIN / "eef"), "serve", "--db", str(db)], env, work / "serve.log"))

        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        def deployment_id() -> str | None:
            with get_client(sync_client=True) as client:
                try:
                    return str(client.read_deployment_by_name("experiment/served").id)
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

        wait_until(lambda: deployment_id() is not None, "the served deployments", 120, procs)
        screenshot(f"{ui}/deployments/deployment/{deployment_id()}/run", out / "custom-run-form.png", (1400, 1500))

        params = {"db": str(db), "preset": args.preset, "name": NAME, "out_dir": str(work / "reports"),
                  "overrides": {"adapters_dir": str(work / "adapters")}}
        started = time.monotonic()
        run = run_deployment("experiment/served", parameters={"params": params}, timeout=args.timeout,
                             poll_interval=5)
        took = time.monotonic() - started
        print(f"experiment/served with preset {args.preset}: {run.state.type.value} after {took / 60:.1f} min")
        if not run.state.is_completed():
            raise SystemExit(f"error: the run ended {run.state.type.value}; see {work}/serve.log")

        with get_client(sync_client=True) as client:
            arts = {a.key: a for a in client.read_artifacts() if a.key}
        screenshot(f"{ui}/runs", out / "runs.png", (1600, 1000))
        screenshot(f"{ui}/runs/flow-run/{run.id}?tab=Artifacts", out / "experiment-run.png", (1600, 1400))
        screenshot(f"{ui}/runs/flow-run/{run.id}?tab=Logs", out / "experiment-logs.png", (1600, 900))
        screenshot(f"{ui}/artifacts/artifact/{arts[f'{NAME}-eef-it1'].id}", out / "iteration-table.png", (1600, 1300))
        screenshot(f"{ui}/artifacts/artifact/{arts[f'{NAME}-eef-summary'].id}", out / "run-summary.png", (1600, 1400))
    finally:
        for proc in reversed(procs):
            stop(proc)
        print(f"logs and the store: {work}")


if __name__ == "__main__":
    main()

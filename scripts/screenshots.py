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
import base64
import json
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
    return subprocess.Popen(args, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
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


class Browser:
    """Headless Chromium driven over the DevTools protocol (its websocket; `websockets` comes with
    Prefect): the UI is a single-page app, so a page is photographed once a text it must show is
    there, and a tab that no URL selects (this UI resets `?tab=` while the run loads) is clicked."""

    def __init__(self, profile: Path):
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            raise SystemExit("error: no chromium on PATH (apt-get install -y chromium)")
        self.proc = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for line in self.proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
            if "DevTools listening on" in line:
                port = line.split("ws://", 1)[1].split("/", 1)[0]
                break
        else:
            raise SystemExit("error: chromium did not start")
        pages = httpx.get(f"http://{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for_text(self, text: str, timeout: float = 60, click: str | None = None) -> None:
        """Until the page shows `text`, clicking the element labelled `click` meanwhile (again and
        again: the UI redraws its tabs when its data arrives)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"document.body && document.body.innerText.includes({json.dumps(text)})"):
                time.sleep(2.0)  # let charts and fonts settle
                return
            if click is not None:
                self.evaluate(f"""[...document.querySelectorAll('button, a, [role=tab], .p-tab')]
                    .find(e => e.textContent.trim() === {json.dumps(click)})?.click()""")
            time.sleep(0.5)
        debug = Path(tempfile.gettempdir()) / "eef-screenshot-failed.png"
        debug.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        raise SystemExit(f"error: the page never showed {text!r} (what it showed: {debug})")

    def screenshot(self, url: str, path: Path, size: tuple[int, int], shows: str, click: str | None = None) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)
        self.call("Page.navigate", url=url)
        self.wait_for_text(shows, click=click)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        shrink(path)
        print(f"{path} ({path.stat().st_size // 1024} KB): {url}" + (f" → {click}" if click else ""))

    def close(self) -> None:
        self.ws.close()
        stop(self.proc)


def shrink(path: Path) -> None:
    """256 colours are plenty for a UI page: a third of the bytes."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def find_run(name: str):
    """The last completed `experiment` flow run called `name`, or None."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        done = [r for r in client.read_flow_runs() if r.name == name and flows.get(r.flow_id) == "experiment"
                and r.state is not None and r.state.is_completed()]
    return max(done, key=lambda r: r.created) if done else None


def latest_artifacts() -> dict:
    """Key -> the newest version of each keyed artifact (a run's summary has one per iteration)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        arts = sorted((a for a in client.read_artifacts() if a.key), key=lambda a: a.created)
    return {a.key: a for a in arts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "ui"))
    parser.add_argument("--port", type=int, default=4299)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run")
    parser.add_argument("--work", help="the folder of an earlier call (its server still holds the run: "
                                       "photograph that run again instead of starting one)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines as they happen, also into a file
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ui = f"http://127.0.0.1:{args.port}"
    api = f"{ui}/api"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="eef-screenshots-"))
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_UI_URL": ui, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)  # this process's Prefect client talks to the same server
    procs: list[subprocess.Popen] = []
    browser = None
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
        browser = Browser(work / "chromium-profile")
        browser.screenshot(f"{ui}/deployments/deployment/{deployment_id()}/run", out / "custom-run-form.png",
                           (1400, 1500), shows="Expert Seeds")

        run = find_run(NAME) if args.work else None
        if run is None:
            params = {"db": str(db), "preset": args.preset, "name": NAME, "out_dir": str(work / "reports"),
                      "overrides": {"adapters_dir": str(work / "adapters")}}
            started = time.monotonic()
            run = run_deployment("experiment/served", parameters={"params": params}, timeout=args.timeout,
                                 poll_interval=5)
            took = time.monotonic() - started
            print(f"experiment/served with preset {args.preset}: {run.state.type.value} after {took / 60:.1f} min")
            if not run.state.is_completed():
                raise SystemExit(f"error: the run ended {run.state.type.value}; see {work}/serve.log")

        arts = latest_artifacts()
        browser.screenshot(f"{ui}/runs", out / "runs.png", (1600, 1450), shows=f"{NAME}-eef it1")
        browser.screenshot(f"{ui}/runs/flow-run/{run.id}", out / "experiment-run.png", (1600, 900),
                           shows=f"Experiment {NAME}: EEF vs RFT", click="Artifacts")
        browser.screenshot(f"{ui}/runs/flow-run/{run.id}", out / "experiment-logs.png", (1600, 800),
                           shows=f"experiment {NAME}:")
        browser.screenshot(f"{ui}/artifacts/artifact/{arts[f'{NAME}-eef-it1'].id}", out / "iteration-table.png",
                           (1600, 1100), shows="examples: initial states")
        browser.screenshot(f"{ui}/artifacts/artifact/{arts[f'experiment-{NAME}'].id}", out / "run-summary.png",
                           (1600, 1400), shows="mean reward")
    finally:
        if browser is not None:
            browser.close()
        for proc in reversed(procs):
            stop(proc)
        print(f"logs and the store: {work}")


if __name__ == "__main__":
    main()

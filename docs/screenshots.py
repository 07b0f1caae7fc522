"""Screenshots for the guides from a real `make flywheel` run, taken with headless Chromium: what a
reviewer and an operator open after it.

    make flywheel                       # configs/small.yaml, 3 rounds, data in ./.lwd
    uv run python docs/screenshots.py   # its pages; --no-review skips the review form

Starts a Prefect server with its UI on the run's own Prefect database (its PREFECT_HOME) and an MLflow
UI on its tracking database, and captures: the registered model and the champion's version page (gate
table, links, tags), the gate run (parameters, rounded metrics, plot), and in Prefect the flywheel's
round table, the last round's report, the canary's decision and the evaluation gate's table. With
--review (the default) it also trains and gates one more candidate, sends it to the `review`
deployment and captures the suspended run's form. Writes docs/screenshots/*.png; needs `chromium`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.service_defaults import apply_service_defaults  # noqa: E402
from infra.local_stack import free_port  # noqa: E402
from lwd_core.promotion import read_tags  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def lwd(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout[done.stdout.rindex("\n{") + 1:] if "\n{" in done.stdout else done.stdout)


class Browser:
    """Headless Chromium over the DevTools protocol: navigate, run a script, capture the page."""

    def __init__(self, width: int = 1400, height: int = 1000):
        from websockets.sync.client import connect

        self.port = free_port()
        self.profile = tempfile.mkdtemp()
        self.process = subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={self.port}",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/json/version")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json") as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str, settle_s: float = 6.0) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(settle_s)  # single-page apps render after load; nothing to wait on but time

    def run(self, script: str):
        return self.call("Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True)["result"].get("value")

    def wait_for(self, script: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.run(script):
            if time.monotonic() > deadline:
                raise TimeoutError(script)
            time.sleep(0.5)

    def save(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"wrote {path.relative_to(ROOT)}")

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()


def send_to_review(env: dict, api: str, version: str) -> str:
    """The `review` deployment's run for ``version``, once it waits on its form; its id."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        deadline = time.monotonic() + 180
        while True:
            try:
                run = run_deployment("review/review", parameters={"model_version": version}, timeout=0)
                break
            except Exception:  # the deployment registers once `serve` is up
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        with get_client(sync_client=True) as client:
            while not client.read_flow_run(run.id).state.is_paused():
                time.sleep(1)
    return str(run.id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "small.yaml"), help="the run's config")
    parser.add_argument("--data-dir", default=str(ROOT / ".lwd"), help="the run's data directory")
    parser.add_argument("--prefect-home", default=os.environ.get("PREFECT_HOME", str(Path.home() / ".prefect")),
                        help="the run's Prefect home, whose database holds its flow runs and artifacts")
    parser.add_argument("--review", action=argparse.BooleanOptionalAction, default=True,
                        help="also train and gate one more candidate and capture its review form")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    prefect_port, mlflow_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    base_env = {**os.environ, "LWD_CONFIG": args.config, "LWD_DATA_DIR": args.data_dir,
                "PREFECT_HOME": args.prefect_home}
    apply_service_defaults(base_env)  # also for the servers started here, not only `lwd`
    server_env = {**base_env, "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api}
    env = {**base_env, "PREFECT_API_URL": api, "LWD_TRACKING__UI_URL": f"http://127.0.0.1:{mlflow_port}"}
    mlflow_db = f"sqlite:///{Path(args.data_dir).resolve() / 'mlflow.db'}"
    mlflow_ui = f"http://127.0.0.1:{mlflow_port}"
    prefect_ui = f"http://127.0.0.1:{prefect_port}"
    processes = [
        subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                          str(prefect_port)], env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", mlflow_db, "--host", "127.0.0.1",
                          "--port", str(mlflow_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    browser = None
    try:
        wait_http(f"{api}/health")
        wait_http(f"{mlflow_ui}/health")
        from mlflow import MlflowClient

        registry = MlflowClient(tracking_uri=mlflow_db)
        champion = registry.get_model_version_by_alias("lwd-policy", "champion")
        gate_run = registry.get_run(read_tags(champion.tags)["gate_run_id"])
        artifacts = _latest_artifacts(api)
        last_round = max(int(key.rsplit("-", 1)[1]) for key in artifacts if key.startswith("flywheel-round-"))

        browser = Browser()
        shots = [
            ("mlflow-registered-model.png", f"{mlflow_ui}/#/models/lwd-policy"),
            ("mlflow-version.png", f"{mlflow_ui}/#/models/lwd-policy/versions/{champion.version}"),
            ("mlflow-gate-run.png", f"{mlflow_ui}/#/experiments/{gate_run.info.experiment_id}/runs/{gate_run.info.run_id}"),
            ("prefect-flywheel-rounds.png", f"{prefect_ui}/artifacts/artifact/{artifacts['flywheel-rounds']}"),
            ("prefect-round-report.png", f"{prefect_ui}/artifacts/artifact/{artifacts[f'flywheel-round-{last_round}']}"),
            ("prefect-canary.png", f"{prefect_ui}/artifacts/artifact/{artifacts['canary']}"),
            ("prefect-evaluation-gate.png", f"{prefect_ui}/artifacts/artifact/{artifacts['evaluation-gate']}"),
        ]
        for name, url in shots:
            browser.open(url, settle_s=8)
            # MLflow 3's assistant panel would take a third of the page: closed, as a reviewer would.
            browser.run("[...document.querySelectorAll('button')].filter(b => /close/i.test("
                        "b.getAttribute('aria-label') || '')).forEach(b => b.click())")
            time.sleep(1)
            browser.save(OUT / name)

        if args.review:
            processes.append(subprocess.Popen([sys.executable, "-m", "deployments.serve", "review"], env=env, cwd=ROOT,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            version = lwd(env, "train")["model_version"]
            lwd(env, "evaluate", "--model-version", version)
            run_id = send_to_review(env, api, version)
            browser.open(f"{prefect_ui}/runs/flow-run/{run_id}", settle_s=8)
            browser.wait_for("[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Resume')")
            browser.run("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Resume').click()")
            time.sleep(3)
            browser.save(OUT / "prefect-review-form.png")
    finally:
        if browser:
            browser.close()
        for process in processes:
            process.terminate()


def _latest_artifacts(api: str) -> dict[str, str]:
    """Per key, the id of the run's latest Prefect artifact (its page shows the content)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return {collection.key: str(collection.latest_id) for collection in client.read_latest_artifacts(limit=200)}


if __name__ == "__main__":
    main()

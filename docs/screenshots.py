"""Screenshots for the guides, taken with headless Chromium: the MLflow model version page of a gated
candidate and the Prefect form of its suspended review.

    uv run lwd flywheel --config configs/tiny.yaml --rounds 0 --auto-approve   # a champion to compare with
    uv run python docs/screenshots.py --config configs/tiny.yaml

Trains and gates one more candidate, starts a Prefect server with its UI, an MLflow UI and the
`review` deployment, sends the candidate to review, and drives Chromium over the DevTools protocol.
Writes docs/screenshots/{mlflow-version,prefect-review-form}.png. Needs `chromium` on PATH.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--data-dir", default=str(ROOT / ".lwd"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp())
    prefect_port, mlflow_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    base_env = {**os.environ, "LWD_CONFIG": args.config, "LWD_DATA_DIR": args.data_dir, "PREFECT_HOME": str(home)}
    apply_service_defaults(base_env)  # also for the servers started here, not only `lwd`
    server_env = {**base_env, "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                  "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api}
    env = {**base_env, "PREFECT_API_URL": api, "LWD_TRACKING__UI_URL": f"http://127.0.0.1:{mlflow_port}"}
    mlflow_db = f"sqlite:///{Path(args.data_dir).resolve() / 'mlflow.db'}"
    processes = [
        subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                          str(prefect_port)], env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", mlflow_db, "--host", "127.0.0.1",
                          "--port", str(mlflow_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    browser = None
    try:
        wait_http(f"{api}/health")
        processes.append(subprocess.Popen([sys.executable, "-m", "deployments.serve", "review"], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        version = lwd(env, "train")["model_version"]
        lwd(env, "evaluate", "--model-version", version)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health")

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

        browser = Browser()
        browser.open(f"http://127.0.0.1:{mlflow_port}/#/models/lwd-policy/versions/{version}", settle_s=8)
        browser.save(OUT / "mlflow-version.png")
        browser.open(f"http://127.0.0.1:{prefect_port}/runs/flow-run/{run.id}", settle_s=8)
        browser.wait_for("[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Resume')")
        browser.run("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Resume').click()")
        time.sleep(3)
        browser.save(OUT / "prefect-review-form.png")
    finally:
        if browser:
            browser.close()
        for process in processes:
            process.terminate()


if __name__ == "__main__":
    main()

"""prefect.yaml: every flow deploys to a real server, and the upload event trigger starts ingestion."""

from __future__ import annotations

import asyncio
import http.server
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from deployments.notifications import BLOCK_NAME
from deployments.serve import load_flow, load_specs
from tasks.events import MODEL_EVENTS

ROOT = Path(__file__).resolve().parent.parent


def test_every_deployment_names_a_flow_and_only_its_parameters():
    specs = load_specs()
    names = {spec["name"] for spec in specs}
    assert {"ingest", "label-rewards", "snapshot-buffer", "train", "evaluate-gate", "promote", "review",
            "watch-champion", "approve", "reject", "rollout", "flywheel", "flywheel-round", "generate-offline"} <= names
    for spec in specs:
        flow = load_flow(spec["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(spec.get("parameters") or {}) <= accepted, spec["name"]
        assert spec["work_pool"]["name"] == "lwd-process"


def _prefect(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


class _Inbox(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: what a Slack/Teams endpoint would get."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", 0))
        type(self).received.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_deploy_all_then_upload_events_trigger_an_ingest_run(prefect_server):
    env = {**os.environ, "PREFECT_API_URL": prefect_server["url"], "PREFECT_HOME": prefect_server["home"],
           "PREFECT_CLIENT_MAX_RETRIES": "15"}  # the loaded test server answers 503 for a while
    created = _prefect(env, "work-pool", "create", "lwd-process", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The reviewers' channel: a webhook block on a local receiver, made before deploying (as the
    # operator's guide says), so the deploy step wires the automations to it.
    inbox = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Inbox)
    threading.Thread(target=inbox.serve_forever, daemon=True).start()
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        CustomWebhookNotificationBlock(
            name="reviewers", url=f"http://127.0.0.1:{inbox.server_port}/hook", allow_private_urls=True,
            json_data={"text": "{{subject}}: {{body}}"}).save(BLOCK_NAME, overwrite=True)
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    async def read():
        async with get_client() as client:
            deployments = {d.name: d for d in await client.read_deployments()}
            automations = await client.read_automations()
            return deployments, automations

    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        deployments, automations = asyncio.run(read())
    assert {spec["name"] for spec in load_specs()} <= set(deployments)
    assert deployments["ingest"].schedules and deployments["ingest"].work_pool_name == "lwd-process"
    assert deployments["watch-champion"].schedules, "alias moves in the MLflow UI are picked up on a schedule"
    assert any(a.trigger.threshold == 8 and "lwd.episode.uploaded" in a.trigger.expect for a in automations)
    assert any(a.trigger.threshold == 64 for a in automations), "retrain trigger"
    notifying = {event for a in automations for event in a.trigger.expect
                 if any(action.type == "send-notification" for action in a.actions)}
    assert notifying == set(MODEL_EVENTS)

    # A review is announced: the automation sends it through the block to the reviewers' channel.
    announce = ("from tasks.events import AWAITING_REVIEW, emit_model_event, flush_events\n"
                "emit_model_event(AWAITING_REVIEW, 'lwd-policy', '7', {'gate_mean_success': '0.812', "
                "'champion': '6', 'url': 'http://mlflow/#/models/lwd-policy/versions/7'})\n"
                "flush_events()")
    assert subprocess.run([sys.executable, "-c", announce], env=env, cwd=ROOT, timeout=600).returncode == 0
    deadline = time.monotonic() + 180
    while not _Inbox.received and time.monotonic() < deadline:
        time.sleep(1)
    inbox.shutdown()
    assert _Inbox.received, "no notification reached the webhook"
    text = _Inbox.received[0]["text"]
    assert "lwd-policy v7 awaits review" in text and "0.812" in text and "versions/7" in text, text

    # What edge clients do after each upload: 8 events from robots -> one ingest run is scheduled.
    emit = ("import sys; from tasks.events import emit_episode_uploaded, flush_events\n"
            "for i in range(8):\n"
            "    emit_episode_uploaded({'robot_id': f'robot-0{i % 2}', 'episode_id': f'e{i}', 'key': 'raw/x'})\n"
            "flush_events()")
    assert subprocess.run([sys.executable, "-c", emit], env=env, cwd=ROOT, timeout=600).returncode == 0

    async def ingest_runs():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200)
            # Schedules also create ingest runs; count only the ones the automation created.
            return [r for r in runs if r.deployment_id == deployments["ingest"].id
                    and r.created_by is not None and r.created_by.type == "AUTOMATION"]

    deadline = time.monotonic() + 300  # events, the trigger and the automation's action, on a loaded server
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        while not (runs := asyncio.run(ingest_runs())) and time.monotonic() < deadline:
            time.sleep(1)
    assert len(runs) == 1, "8 upload events make exactly one ingest run"

"""prefect.yaml: every flow deploys to a real server, and the upload event trigger starts ingestion."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

from deployments.serve import load_flow, load_specs

ROOT = Path(__file__).resolve().parent.parent


def test_every_deployment_names_a_flow_and_only_its_parameters():
    specs = load_specs()
    names = {spec["name"] for spec in specs}
    assert {"ingest", "label-rewards", "snapshot-buffer", "train", "evaluate-gate", "promote", "approve", "rollout",
            "flywheel", "flywheel-round", "generate-offline"} <= names
    for spec in specs:
        flow = load_flow(spec["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(spec.get("parameters") or {}) <= accepted, spec["name"]
        assert spec["work_pool"]["name"] == "lwd-process"


def _prefect(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_deploy_all_then_upload_events_trigger_an_ingest_run(prefect_server):
    env = {**os.environ, "PREFECT_API_URL": prefect_server["url"], "PREFECT_HOME": prefect_server["home"]}
    created = _prefect(env, "work-pool", "create", "lwd-process", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            deployments = {d.name: d for d in await client.read_deployments()}
            automations = await client.read_automations()
            return deployments, automations

    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        deployments, automations = asyncio.run(read())
    assert {spec["name"] for spec in load_specs()} <= set(deployments)
    assert deployments["ingest"].schedules and deployments["ingest"].work_pool_name == "lwd-process"
    assert any(a.trigger.threshold == 8 and "lwd.episode.uploaded" in a.trigger.expect for a in automations)
    assert any(a.trigger.threshold == 64 for a in automations), "retrain trigger"

    # What edge clients do after each upload: 8 events from robots -> one ingest run is scheduled.
    emit = ("import sys; from tasks.events import emit_episode_uploaded, flush_events\n"
            "for i in range(8):\n"
            "    emit_episode_uploaded({'robot_id': f'robot-0{i % 2}', 'episode_id': f'e{i}', 'key': 'raw/x'})\n"
            "flush_events()")
    assert subprocess.run([sys.executable, "-c", emit], env=env, cwd=ROOT, timeout=120).returncode == 0

    async def ingest_runs():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200)
            # Schedules also create ingest runs; count only the ones the automation created.
            return [r for r in runs if r.deployment_id == deployments["ingest"].id
                    and r.created_by is not None and r.created_by.type == "AUTOMATION"]

    deadline = time.monotonic() + 90
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        while not (runs := asyncio.run(ingest_runs())) and time.monotonic() < deadline:
            time.sleep(1)
    assert len(runs) == 1, "8 upload events make exactly one ingest run"

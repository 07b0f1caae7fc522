"""The orchestrated flywheel against a real Prefect API server and MLflow on SQLite.

One module-scoped run of `lwd flywheel` (tiny config, 2 robots, 1 online round) sets up the state; the
other tests drive single stages through the CLI, the way operators and reviewers do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lwd_core.config import LWDConfig
from lwd_core.data.layout import buffer_prefix, get_episode
from lwd_core.fleet.actor import Actor, assign_tasks
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.fleet.edge import EdgeClient
from lwd_core.security import episode_signer, keyring_for, release_verifier
from lwd_core.store import open_store
from lwd_core.suite import select_tasks

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"


def lwd(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def last_json(stdout: str):
    return json.loads(stdout[stdout.rindex("\n{") + 1 :] if "\n{" in stdout else stdout[stdout.index("{"):])


@pytest.fixture(scope="module")
def stack(prefect_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("flywheel")
    # A loaded machine makes the SQLite-backed test server answer 503 for a while: retry longer than the default.
    env = {**os.environ, "LWD_DATA_DIR": str(data), "LWD_CONFIG": str(TINY), "PREFECT_API_URL": prefect_server["url"],
           "PREFECT_HOME": prefect_server["home"], "PREFECT_CLIENT_MAX_RETRIES": "15"}
    result = lwd(env, "flywheel", "--rounds", "1", "--auto-approve", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    os.environ["LWD_CONFIG"], previous = str(TINY), os.environ.get("LWD_CONFIG")
    try:
        config = LWDConfig(data_dir=str(data))
    finally:
        os.environ.pop("LWD_CONFIG") if previous is None else os.environ.__setitem__("LWD_CONFIG", previous)
    return {"env": env, "config": config, "summary": last_json(result.stdout), "stdout": result.stdout}


def registry(config):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking.mlflow_uri)


def versions(config) -> dict[str, dict]:
    found = registry(config).search_model_versions(f"name='{config.tracking.registered_model}'")
    return {str(v.version): dict(v.tags) for v in found}


def champion(config) -> str:
    return str(registry(config).get_model_version_by_alias(config.tracking.registered_model, "champion").version)


def test_flywheel_runs_every_stage_and_reports_where_to_look(stack, prefect_server):
    summary, config = stack["summary"], stack["config"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and [r["stage"] for r in rounds] == ["offline", "online"]
    assert all(r["gate"] == "pass" and r["approved"] for r in rounds)
    assert rounds[1]["fleet_episodes"] >= config.fleet.episodes_per_round
    assert "Prefect UI" in stack["stdout"] and "MLflow UI" in stack["stdout"]

    # MLflow: two registered versions, each tagged with its snapshot, checkpoint and policy hash.
    tags = versions(config)
    assert set(tags) >= {"1", "2"} and summary["champion"] == champion(config)
    for version in ("1", "2"):
        assert tags[version]["snapshot_id"].startswith("snap-") and tags[version]["policy_sha256"]
        assert tags[version]["gate"] == "pass" and tags[version]["approval"] in ("approved", "superseded")
    runs = registry(config).search_runs([registry(config).get_experiment_by_name(config.tracking.experiment).experiment_id])
    kinds = {r.data.tags.get("kind", r.data.tags.get("stage")) for r in runs}
    assert {"offline", "online", "gate"} <= kinds
    train_run = next(r for r in runs if r.data.tags.get("stage") == "online")
    assert "critic_loss" in train_run.data.metrics and train_run.data.params["snapshot_id"] == tags["2"]["snapshot_id"]

    # The fleet ends on the approved champion; the online buffer holds each fleet episode once.
    store = open_store(config)
    release = Coordinator(store).desired()["stable"]
    assert release["version"] == f"policy-v{champion(config)}"
    keys = store.list(buffer_prefix("online"), ".parquet")
    ids = [k.rsplit("/", 1)[1] for k in keys]
    assert len(ids) == len(set(ids)) > 0 and store.list("raw", ".parquet") == []
    assert {get_episode(store, k).robot_id for k in keys} <= {"robot-00", "robot-01"}

    # Prefect: the stage flows ran against the real API and finished green.
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def flow_run_states():
        async with get_client() as client:
            from prefect.client.schemas.filters import (
                FlowRunFilter,
                FlowRunFilterDeploymentId,
            )

            # Runs of deployments (other tests' schedules and triggers) are not this job's.
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(is_null_=True)), limit=200)
            flows = {f.id: f.name for f in await client.read_flows(limit=200)}
            return [(flows[r.flow_id], r.state_type.value) for r in runs]

    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        states = asyncio.run(flow_run_states())
    names = {name for name, _ in states}
    assert {"flywheel", "ingest", "label-rewards", "snapshot-buffer", "train", "evaluate-gate", "promote",
            "rollout", "generate-offline"} <= names
    assert all(state == "COMPLETED" for _, state in states), states

    async def learner_limit():
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name("lwd-learner")

    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        limit = asyncio.run(learner_limit())
    assert limit.limit == 1 and limit.active_slots == 0, "one learner at a time, and the slot was released"


def test_candidate_needs_a_reviewer_before_reaching_the_fleet(stack):
    env, config = stack["env"], stack["config"]
    trained = last_json(lwd(env, "train").stdout)
    version = trained["model_version"]
    gate = lwd(env, "evaluate", "--model-version", version)
    assert gate.returncode == 0, gate.stderr[-2000:]
    assert last_json(gate.stdout)["passed"] is True
    before = champion(config)
    promoted = last_json(lwd(env, "promote", "--model-version", version).stdout)
    assert promoted == {"version": version, "promoted": True, "approved": False}
    client = registry(config)
    assert str(client.get_model_version_by_alias(config.tracking.registered_model, "challenger").version) == version
    assert champion(config) == before, "promotion alone must not change the champion"
    refused = lwd(env, "rollout", "--model-version", version)
    assert refused.returncode != 0 and "not the approved champion" in refused.stderr
    approved = lwd(env, "approve", version, "--reviewer", "alice")
    assert approved.returncode == 0, approved.stderr[-2000:]
    assert champion(config) == version and versions(config)[version]["approved_by"] == "alice"


def test_approve_refuses_a_version_that_failed_the_gate(stack):
    env, config = stack["env"], stack["config"]
    version = last_json(lwd(env, "train").stdout)["model_version"]
    registry(config).set_model_version_tag(config.tracking.registered_model, version, "gate", "fail")
    refused = lwd(env, "approve", version)
    assert refused.returncode != 0 and "only versions that passed the gate" in refused.stderr
    rejected = lwd(env, "reject", version, "--reason", "drops the cube on restock-back", "--reviewer", "carol")
    assert rejected.returncode == 0, rejected.stderr[-2000:]
    tags = versions(config)[version]
    assert (tags["approval"], tags["rejected_by"], tags["rejection_reason"]) == (
        "rejected", "carol", "drops the cube on restock-back")
    status = json.loads(lwd(env, "status").stdout)
    assert status["champion"] == champion(config) and status["challenger"] != version
    # The champion approved by the previous test is not rolled out yet: status shows what the fleet runs.
    deployed = Coordinator(open_store(config)).desired()["stable"]["version"]
    assert status["fleet"]["stable"] == deployed and status["backlog_episodes"] >= 0


def test_rollout_rolls_back_when_the_canary_regresses(stack):
    env, config = stack["env"], stack["config"]
    store = open_store(config)
    coordinator = Coordinator(store)
    stable = coordinator.desired()["stable"]["version"]
    # The fleet's record for the stable release: it succeeded every time, over far more episodes than
    # the flywheel's fleet ran (the bar a canary must meet).
    coordinator.report("robot-01", {"task_id": "swap-pair", "state": "running", "running_version": stable,
                                    "per_version": {stable: {"episodes": 10**6, "successes": 10**6}}})
    candidate = last_json(lwd(env, "train").stdout)["model_version"]
    assert last_json(lwd(env, "evaluate", "--model-version", candidate).stdout)["passed"]
    assert lwd(env, "approve", candidate, "--reviewer", "bob").returncode == 0
    previous_champion = versions(config)[candidate]["previous_champion"]

    stop = threading.Event()
    robots = assign_tasks(["robot-00"], select_tasks(config.fleet.tasks))
    keyring = keyring_for(config, ["robot-00"])
    edge = EdgeClient(Path(config.data_dir) / "spool" / "canary-test", store, sign=episode_signer(keyring))
    # No teleoperator: the canary's own (untrained) policy decides, so it regresses.
    actor = Actor(store, edge, robots, intervene=False, max_steps=30, poll_s=0.2,
                  verify_release=release_verifier(keyring))
    thread = threading.Thread(target=actor.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        result = lwd(env, "rollout", "--model-version", candidate)
    finally:
        stop.set()
        thread.join(timeout=120)
        actor.close()
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = last_json(result.stdout)
    assert outcome["status"] == "rolled-back" and outcome["canary"]["robots"] == ["robot-00"]
    assert champion(config) == previous_champion
    assert versions(config)[candidate]["approval"] == "rolled-back"
    assert coordinator.desired()["canary"] is None and coordinator.desired()["stable"]["version"] == stable

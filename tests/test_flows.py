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
import time
from pathlib import Path

import pytest
from conftest import last_json, lwd

from lwd_core.config import LWDConfig
from lwd_core.data.layout import buffer_prefix, get_episode
from lwd_core.fleet.actor import Actor, assign_tasks
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.fleet.edge import EdgeClient
from lwd_core.fleet.staged_rollout import live_robots
from lwd_core.security import episode_signer, keyring_for, release_verifier, report_signer
from lwd_core.store import open_store
from lwd_core.suite import ACTION_DIM, select_tasks
from tasks.events import model_resource

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
MLFLOW_UI = "http://mlflow.example:5000"


@pytest.fixture(scope="module")
def stack(prefect_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("flywheel")
    # A loaded machine makes the SQLite-backed test server answer 503 for a while: retry longer than the default.
    env = {**os.environ, "LWD_DATA_DIR": str(data), "LWD_CONFIG": str(TINY), "PREFECT_API_URL": prefect_server["url"],
           "PREFECT_HOME": prefect_server["home"], "PREFECT_CLIENT_MAX_RETRIES": "15",
           # Several committed checkpoints per training run, and system metrics within its seconds.
           "LWD_ALGO__CHECKPOINT_EVERY": "20", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
           # Links read outside MLflow (Prefect's round reports) are built from it; links inside stay relative.
           "LWD_TRACKING__UI_URL": MLFLOW_UI}
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


def raw_tags(config) -> dict[str, dict]:
    found = registry(config).search_model_versions(f"name='{config.tracking.registered_model}'")
    return {str(v.version): dict(v.tags) for v in found}


def versions(config) -> dict[str, dict]:
    """Each version's tags as the flywheel reads them (its own state tag unpacked)."""
    from lwd_core.promotion import read_tags

    return {version: read_tags(tags) for version, tags in raw_tags(config).items()}


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
    # The training run and logged model are the registry's own fields, not tags a reviewer scrolls past;
    # the flywheel's own state is one tag, so the registry page shows the reviewer's tags.
    assert not {"run_id", "model_id"} & set(tags["2"])
    assert set(raw_tags(config)["2"]) <= {"gate", "gate_mean_success", "approval", "approved_by", "approval_comment",
                                          "approved_at", "canary_decision", "canary_evidence", "rollout",
                                          "flywheel_state"}
    from tasks.mlflow_adapter import model_version

    assert model_version(config, "2").run_id == train_run.info.run_id
    assert "critic_loss" in train_run.data.metrics and train_run.data.params["snapshot_id"] == tags["2"]["snapshot_id"]

    # The reviewer's evidence: the gate table as the version's description, linked to a gate run with
    # its plot; the snapshot as the training run's input; system metrics; a LoggedModel per checkpoint.
    client = registry(config)
    assert client.get_registered_model(config.tracking.registered_model).description.startswith(
        "The flow-matching robot policy")
    assert tags["2"]["approved_at"].endswith("Z") and "approved_us" not in tags["2"]  # ISO 8601, UTC
    description = client.get_model_version(config.tracking.registered_model, "2").description
    assert description.startswith("### Evaluation gate: PASS (v2 vs champion v1)") and "| **mean** |" in description
    gate_run = tags["2"]["gate_run_id"]
    assert gate_run in description and "gate_success_by_task.png" in {a.path for a in client.list_artifacts(gate_run)}
    # Its link is relative to the MLflow UI: from a UI on any host and port it opens that gate run.
    import re
    from urllib.parse import urljoin

    link = re.search(r"\[Gate run\]\(([^)]+)\)", description).group(1)
    opened = urljoin("http://10.1.2.3:31337/#/models/lwd-policy/versions/2", link)
    assert opened.startswith("http://10.1.2.3:31337/#/experiments/") and opened.endswith(f"/runs/{gate_run}")
    # The gate run says how it was run, with rounded numbers, and links back to the version.
    gate = client.get_run(gate_run).data
    assert {"episodes_per_task", "seed", "tolerance", "min_success", "rule"} <= set(gate.params)
    assert all(value == round(value, 4) for value in gate.metrics.values())
    assert "[v2](#/models/lwd-policy/versions/2)" in gate.tags["mlflow.note.content"]
    assert [d.dataset.name for d in train_run.inputs.dataset_inputs] == [tags["2"]["snapshot_id"]]
    assert any(key.startswith("system/") for key in client.get_run(train_run.info.run_id).data.metrics)
    import mlflow

    mlflow.set_tracking_uri(config.tracking.mlflow_uri)
    models = mlflow.search_logged_models(experiment_ids=[train_run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{train_run.info.run_id}'")
    names = sorted(m.name for m in models)
    assert "policy" in names and any(name.startswith("checkpoint-") for name in names), names

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

    # Progress on the flow runs' pages: training, evaluation, generation and fleet start-up, all finished.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["training-progress", "evaluation-progress", "offline-dataset-progress", "fleet-start"]
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {a.key for a in artifacts} == set(keys)
    assert all(a.type == "progress" and float(a.data) == 100.0 for a in artifacts if a.key != "fleet-start")
    # The round's report links its version and gate run in the MLflow UI at the configured address.
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}), get_client(sync_client=True) as client:
        (report,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["flywheel-round-1"])),
                                          limit=1)
    assert f"[v2]({MLFLOW_UI}/#/models/lwd-policy/versions/2)" in report.data
    assert f"[pass]({MLFLOW_UI}/#/runs/{gate_run})" in report.data


def model_event_fired(prefect_server, config, version: str, event: str, timeout: float = 180) -> bool:
    """Whether the server recorded ``event`` for a model version (events are stored asynchronously:
    wait for it, with a generous deadline)."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wanted = EventFilter(event=EventNameFilter(name=[event]),
                         resource=EventResourceFilter(id=[model_resource(config.tracking.registered_model, version)[
                             "prefect.resource.id"]]))
    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}), get_client(sync_client=True) as client:
        while not client.read_events(wanted, limit=1).events:
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
    return True


def deployed_release(config) -> str:
    return Coordinator(open_store(config)).desired()["stable"]["version"]


def test_an_alias_moved_in_mlflow_ships_once_the_approval_is_recorded(stack):
    env, config = stack["env"], stack["config"]
    trained = last_json(lwd(env, "train").stdout)
    version = trained["model_version"]
    gate = lwd(env, "evaluate", "--model-version", version)
    assert gate.returncode == 0, gate.stderr[-2000:]
    assert last_json(gate.stdout)["passed"] is True
    before = champion(config)
    promoted = last_json(lwd(env, "promote", "--model-version", version).stdout)
    assert (promoted["version"], promoted["promoted"], promoted["approved"], promoted["approval"]) == (
        version, True, False, "pending")
    client = registry(config)
    assert str(client.get_model_version_by_alias(config.tracking.registered_model, "challenger").version) == version
    assert champion(config) == before, "promotion alone must not change the champion"
    refused = lwd(env, "rollout", "--model-version", version)
    assert refused.returncode != 0 and "not the approved champion" in refused.stderr

    # The reviewer moves alias champion in the MLflow UI (here through its API). The alias alone does
    # not ship: rollout wants a recorded approval, which the watcher records, then it ships.
    client.set_registered_model_alias(config.tracking.registered_model, "champion", version)
    refused = lwd(env, "rollout", "--model-version", version)
    assert refused.returncode != 0 and "no reviewer's approval" in refused.stderr
    watched = lwd(env, "watch-champion")
    assert watched.returncode == 0, watched.stderr[-3000:]
    outcome = last_json(watched.stdout)
    assert outcome["status"] == "shipped" and outcome["rollout"]["status"] == "deployed", outcome
    tags = versions(config)[version]
    assert (tags["approval"], tags["approved_by"], tags["previous_champion"]) == ("approved", "mlflow-ui", before)
    assert deployed_release(config) == f"policy-v{version}"
    assert last_json(lwd(env, "watch-champion").stdout)["status"] == "nothing to ship"


def test_a_version_that_failed_its_gate_is_refused_even_with_the_alias_moved(stack, prefect_server):
    env, config = stack["env"], stack["config"]
    version = last_json(lwd(env, "train").stdout)["model_version"]
    registry(config).set_model_version_tag(config.tracking.registered_model, version, "gate", "fail")
    refused = lwd(env, "approve", version)
    assert refused.returncode != 0 and "only versions that passed the evaluation gate can be approved" in refused.stderr

    before, fleet = champion(config), deployed_release(config)
    registry(config).set_registered_model_alias(config.tracking.registered_model, "champion", version)
    refused = lwd(env, "rollout", "--model-version", version)
    assert refused.returncode != 0 and "only versions that passed the evaluation gate can ship" in refused.stderr
    watched = last_json(lwd(env, "watch-champion").stdout)
    assert watched["status"] == "refused" and champion(config) == before and deployed_release(config) == fleet
    assert versions(config)[version]["approval"] == "refused"
    assert model_event_fired(prefect_server, config, version, "lwd.rollout.refused")

    rejected = lwd(env, "reject", version, "--reason", "drops the cube on restock-back", "--reviewer", "carol")
    assert rejected.returncode == 0, rejected.stderr[-2000:]
    tags = versions(config)[version]
    assert (tags["approval"], tags["rejected_by"], tags["rejection_reason"]) == (
        "rejected", "carol", "drops the cube on restock-back")
    status = json.loads(lwd(env, "status").stdout)
    assert status["champion"] == champion(config) and status["challenger"] != version
    assert status["fleet"]["stable"] == deployed_release(config) and status["backlog_episodes"] >= 0


def test_a_round_waits_for_the_reviewer_in_the_suspended_review_form_then_ships(stack, prefect_server):
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env, config = stack["env"], stack["config"]
    deployments = ["flywheel-round/flywheel-round", "review/review"]
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        def client():
            return get_client(sync_client=True)

        def wait_for(predicate, what: str, timeout: float = 900):
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(1)

        def state_of(run_id):
            with client() as api:
                return api.read_flow_run(run_id).state

        def served() -> bool:
            with client() as api:
                try:
                    return all(api.read_deployment_by_name(name).work_pool_name is None for name in deployments)
                except ObjectNotFound:
                    return False

        # The session's server may hold these deployments on a work pool nobody works
        # (tests/test_deployments.py): drop them, so the runs go to the ones served here from prefect.yaml,
        # as a worker would run them.
        with client() as api:
            for name in deployments:
                try:
                    api.delete_deployment(api.read_deployment_by_name(name).id)
                except ObjectNotFound:
                    pass
        serve = subprocess.Popen([sys.executable, "-m", "deployments.serve", "flywheel-round", "review"], env=env,
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(served, "the served deployments")
            previous, known = champion(config), set(versions(config))
            # What the retrain trigger starts: the round trains and gates a candidate, starts its review
            # and finishes; the review suspends until a reviewer answers.
            round_run = run_deployment("flywheel-round/flywheel-round", parameters={"round_index": 9}, timeout=0)
            wait_for(lambda: state_of(round_run.id).is_final(), "the round")
            assert state_of(round_run.id).type == StateType.COMPLETED, state_of(round_run.id)
            (version,) = set(versions(config)) - known
            assert versions(config)[version]["gate"] == "pass"
            with client() as api:
                review_deployment = api.read_deployment_by_name("review/review").id
                reviews = [r for r in api.read_flow_runs(limit=200) if r.deployment_id == review_deployment
                           and r.parameters.get("model_version") == version]
            assert len(reviews) == 1, "the round started one review for its candidate"
            review_id = reviews[0].id
            wait_for(lambda: state_of(review_id).type == StateType.PAUSED, "the review to suspend")
            assert state_of(review_id).name == "Suspended"
            assert model_event_fired(prefect_server, config, version, "lwd.model.awaiting-review")
            assert champion(config) == previous and versions(config)[version]["approval"] == "pending"

            # What the Prefect UI's form sends when the reviewer presses Resume.
            resume_flow_run(review_id, run_input={"approve": True, "reviewer": "dana", "comment": "better on swap-pair"})
            wait_for(lambda: state_of(review_id).is_final(), "the resumed review")
            assert state_of(review_id).type == StateType.COMPLETED, state_of(review_id)
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=300)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    tags = versions(config)[version]
    assert (tags["approval"], tags["approved_by"], tags["approval_comment"]) == ("approved", "dana", "better on swap-pair")
    assert champion(config) == version and deployed_release(config) == f"policy-v{version}"
    assert tags["rollout"] == "deployed" and model_event_fired(prefect_server, config, version, "lwd.rollout.completed")


def test_rollout_rolls_back_when_the_canary_regresses(stack, prefect_server):
    env, config = stack["env"], stack["config"]
    store = open_store(config)
    keyring = keyring_for(config, ["robot-00", "robot-01"])
    coordinator = Coordinator(store, sign_report=report_signer(keyring))  # as robot-01 would report it
    stable = coordinator.desired()["stable"]["version"]
    # The fleet's record for the stable release on the canary's task: it succeeded every time, over far
    # more episodes than the flywheel's fleet ran (the bar a canary must meet).
    coordinator.report("robot-01", {"task_id": "restock-horizontal", "state": "running", "running_version": stable,
                                    "per_version": {stable: {"episodes": 10**6, "autonomous_successes": 10**6}}})
    candidate = last_json(lwd(env, "train").stdout)["model_version"]
    assert last_json(lwd(env, "evaluate", "--model-version", candidate).stdout)["passed"]
    assert lwd(env, "approve", candidate, "--reviewer", "bob").returncode == 0
    previous_champion = versions(config)[candidate]["previous_champion"]

    stop = threading.Event()
    robots = assign_tasks(["robot-00"], select_tasks(config.fleet.tasks))
    edge = EdgeClient(Path(config.data_dir) / "spool" / "canary-test", store, sign=episode_signer(keyring))
    # No teleoperator: the canary's own (untrained) policy decides, so it regresses.
    actor = Actor(store, edge, robots, human=None, max_steps=30, poll_s=0.2,
                  verify_release=release_verifier(keyring), sign_report=report_signer(keyring))
    thread = threading.Thread(target=actor.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        # The rollout picks canaries among live robots: wait for the actor's first heartbeat.
        deadline = time.monotonic() + 300
        while "robot-00" not in live_robots(coordinator, config.rollout.heartbeat_timeout_seconds):
            assert time.monotonic() < deadline and thread.is_alive(), "the actor never reported"
            time.sleep(0.5)
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
    assert model_event_fired(prefect_server, config, candidate, "lwd.rollout.rolled-back")


def test_the_champion_loads_as_an_mlflow_model_outside_the_repository(stack, tmp_path):
    env, config = stack["env"], stack["config"]
    # A fresh interpreter, started elsewhere, with this checkout taken off its import path: the model
    # must bring its own code (code_paths), signature and input example.
    script = f"""
import json, sys
from pathlib import Path
root = Path({str(ROOT)!r}).resolve()
sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() != root]
import mlflow, numpy as np
mlflow.set_tracking_uri({config.tracking.mlflow_uri!r})
model = mlflow.pyfunc.load_model("models:/{config.tracking.registered_model}@champion")
import lwd_core
actions = np.asarray(model.predict(model.input_example, params={{"seed": 3}}))
print(json.dumps({{"shape": list(actions.shape), "finite": bool(np.isfinite(actions).all()),
                  "code": lwd_core.__file__, "inputs": model.metadata.get_input_schema().input_names()}}))
"""
    clean_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "LWD_CONFIG")}
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env, capture_output=True,
                            text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    result = last_json(loaded.stdout)
    assert ROOT not in Path(result["code"]).resolve().parents, "lwd_core came from the checkout, not the model"
    assert result["inputs"] == ["obs", "instruction"] and result["finite"]
    assert result["shape"][0] == 1 and result["shape"][1] == config.algo.action_chunk * ACTION_DIM, result



def test_two_learners_never_hold_the_learner_slot_at_once(prefect_server):
    """The global concurrency limit behind every training task: a second learner waits for the first."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.pipeline import learner_slot

    held: dict[str, tuple[float, float]] = {}
    first_holds, second_trying = threading.Event(), threading.Event()

    def first() -> None:
        with temporary_settings({PREFECT_API_URL: prefect_server["url"]}), learner_slot():
            start = time.monotonic()
            first_holds.set()
            assert second_trying.wait(timeout=600), "the second learner never started"
            time.sleep(2.0)  # for the second's request to reach the server (no overlap either way)
            held["first"] = (start, time.monotonic())

    def second() -> None:
        with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
            second_trying.set()
            with learner_slot():
                held["second"] = (time.monotonic(), time.monotonic())

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert first_holds.wait(timeout=600), "the first learner never got the slot"
    threads.append(threading.Thread(target=second))
    threads[1].start()
    for thread in threads:
        thread.join(timeout=600)
    assert set(held) == {"first", "second"}
    assert held["second"][0] >= held["first"][1], f"the learners overlapped: {held}"

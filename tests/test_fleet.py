"""Fleet: offline dataset mix, coordinator, actor + edge client on the real simulator and object store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode, make_keyring, publisher

from lwd_core.algo.checkpoint import save_checkpoint
from lwd_core.algo.learner import Learner, LearnerSpec
from lwd_core.config import AlgoConfig, LWDConfig
from lwd_core.data.layout import buffer_prefix, get_episode
from lwd_core.fleet.actor import Actor, assign_tasks
from lwd_core.fleet.coordinator import (
    Coordinator,
    Release,
    choose_canary,
    release_for_checkpoint,
)
from lwd_core.fleet.edge import JOURNAL, EdgeClient
from lwd_core.sim.dataset import (
    DatasetReport,
    OfflineMix,
    generate_allocation,
    plan_allocations,
    record_episode,
    write_dataset_report,
)
from lwd_core.sim.environment import make_env
from lwd_core.suite import ACTION_DIM, CONTROL_PERIOD_S, OBS_DIM, get_task

SHORT, LONG = get_task("restock-horizontal"), get_task("swap-pair")


def tiny_policy_checkpoint(store, prefix: str, seed: int) -> Release:
    spec = LearnerSpec.from_config(AlgoConfig(hidden_dims=[32, 32], flow_steps=2).with_agent(
        "lwd", critic_heads=2, value_size=11), OBS_DIM, ACTION_DIM, "lwd")
    learner = Learner(spec)
    save_checkpoint(store, prefix, learner, learner.init(seed))
    # Pinned to the checkpoint's manifest; the coordinator signs it when it publishes.
    return release_for_checkpoint(store, prefix, version=prefix.rsplit("/", 1)[-1])


# -- offline dataset --------------------------------------------------------------------------------
def test_offline_plan_follows_the_paper_mix():
    plan = plan_allocations((SHORT, LONG, get_task("cycle-three")), 100_000, OfflineMix())
    steps = lambda pred: sum(a.steps for a in plan if pred(a))  # noqa: E731
    assert steps(lambda a: a.kind == "demo") == pytest.approx(50_000, abs=3)
    assert steps(lambda a: a.kind == "failed_rollout") == pytest.approx(35_000, abs=3)
    assert steps(lambda a: a.task_id != SHORT.task_id) == pytest.approx(70_000, abs=3)
    # With only short tasks, the long share has nowhere to go and the short tasks take everything.
    assert sum(a.steps for a in plan_allocations((SHORT,), 1000, OfflineMix())) == 1000
    with pytest.raises(ValueError, match="sum to 1"):
        OfflineMix(demo=0.6)


def test_an_offline_episode_is_the_same_on_every_run():
    """Stamped on a simulated timeline (not the wall clock): same seed, same episode id."""
    env = make_env(SHORT)
    try:
        first, again = (record_episode(env, SHORT, "demo", seed=11, max_steps=8) for _ in range(2))
    finally:
        env.close()
    assert first.episode_id == again.episode_id
    assert (np.diff(first.timestamps_us) == round(CONTROL_PERIOD_S * 1e6)).all()


def test_offline_generation_records_each_kind(local_store):
    mix = OfflineMix()
    report = DatasetReport(total_steps_planned=1600, mix={})
    for allocation in plan_allocations((SHORT, LONG), 1600, mix):
        report.merge(generate_allocation(local_store, get_task(allocation.task_id), allocation.kind,
                                         allocation.steps, seed=7))
    document = write_dataset_report(local_store, report, (SHORT, LONG), mix)
    keys = local_store.list(buffer_prefix("offline"), suffix=".parquet")
    assert sorted(keys) == sorted(report.keys) and len(keys) == document["achieved"]["episodes"]
    sources = {}
    for key in keys:
        episode = get_episode(local_store, key)  # verifies the content hash
        sources.setdefault((episode.task_id, episode.source), []).append(episode)
        assert key.startswith(f"buffer/offline/task={episode.task_id}/")
    for task in (SHORT, LONG):
        assert {source for (t, source) in sources if t == task.task_id} == {"demo", "play", "rollout"}
        assert all(e.outcome == "failure" for e in sources[(task.task_id, "rollout")]), "failed rollouts fail"
    assert any(e.outcome == "success" for e in sources[(SHORT.task_id, "demo")])
    # Whole episodes overshoot each budget a little; the long task still holds most of the volume.
    assert document["achieved"]["long_share"] > 0.55
    assert document["achieved"]["share_by_kind"]["demo"] > 0.35


# -- coordinator ------------------------------------------------------------------------------------
def test_coordinator_canary_then_promote(local_store, keyring):
    coordinator = publisher(local_store, keyring)
    v1 = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)
    v2 = tiny_policy_checkpoint(local_store, "checkpoints/v2", 1)
    assert v1.policy_sha256 != v2.policy_sha256
    robots = [f"robot-{i:02d}" for i in range(8)]
    assert coordinator.release_for("robot-00") is None
    coordinator.publish_all(v1)
    canary = choose_canary(robots, 0.25)
    assert canary == ["robot-00", "robot-01"]
    document = coordinator.publish_canary(v2, canary)
    assert document["revision"] == 2
    assert [coordinator.release_for(r).version for r in robots[:3]] == ["v2", "v2", "v1"]
    coordinator.publish_all(v2)
    assert {coordinator.release_for(r).version for r in robots} == {"v2"}
    coordinator.publish_canary(v1, canary)  # a canary that is then withdrawn (the rollout flow's rollback)
    coordinator.end_canary()
    assert {coordinator.release_for(r).version for r in robots} == {"v2"}
    assert choose_canary(robots, 0.0) == ["robot-00"]


# -- actor + edge client ----------------------------------------------------------------------------
def _run_actor(store, tmp_path, robots, events, episodes, **kwargs):
    edge = EdgeClient(tmp_path / "spool", store, notify=events.append, backoff_s=0.01)
    actor = Actor(store, edge, robots, max_steps=kwargs.pop("max_steps", 30), poll_s=0.0, **kwargs)
    try:
        actor.run(max_episodes=episodes)
    finally:
        actor.close()
    return edge, actor


def test_actor_and_edge_client_write_valid_episodes(any_store, tmp_path, keyring):
    release = tiny_policy_checkpoint(any_store, "checkpoints/v1", 0)
    publisher(any_store, keyring).publish_all(release)
    robots = assign_tasks(["robot-00", "robot-01"], (SHORT, LONG))
    events: list[dict] = []
    edge, _ = _run_actor(any_store, tmp_path, robots, events, episodes=4)
    report = edge.flush()
    assert not report.failed and not edge.pending()
    keys = any_store.list("raw", suffix=".parquet")
    assert len(keys) == 4 and len(events) == 4
    assert sorted(e["key"] for e in events) == sorted(keys)
    for key in keys:
        episode = get_episode(any_store, key)
        assert key.endswith(f"/{episode.robot_id}/{episode.episode_id}.parquet")
        assert episode.task_id == robots[episode.robot_id].task_id
        assert episode.policy_version == "v1" and episode.source == "rollout"
        assert episode.num_steps == 30 and episode.observations.shape[1] == OBS_DIM
        assert np.all(np.diff(episode.timestamps_us) > 0)
        assert np.all(np.abs(episode.actions) <= 1.0)
    status = {row["robot_id"]: row for row in Coordinator(any_store).status()}
    assert set(status) == {"robot-00", "robot-01"}
    assert all(row["running"] == "v1" and row["in_sync"] and row["episodes"] == 2 for row in status.values())


def test_actor_hot_swaps_only_verified_weights_between_episodes(local_store, tmp_path, keyring):
    coordinator = publisher(local_store, keyring)
    v1 = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)
    v2 = tiny_policy_checkpoint(local_store, "checkpoints/v2", 1)
    coordinator.publish_all(v1)
    robots = assign_tasks(["robot-00"], (SHORT,))
    edge = EdgeClient(tmp_path / "spool", local_store)
    actor = Actor(local_store, edge, robots, max_steps=12, poll_s=0.0)
    actor.run(max_episodes=1)
    # A release whose hash does not match the weights is refused; the robot keeps v1.
    forged = Release(version="v2", checkpoint=v2.checkpoint, policy_sha256=v1.policy_sha256)
    coordinator.publish_all(forged)
    actor.run(max_episodes=1)
    state = coordinator.actor("robot-00")
    assert state["running_version"] == "v1" and "refused v2" in state["last_error"]
    coordinator.publish_all(v2)
    actor.run(max_episodes=1)
    actor.close()
    edge.flush()
    versions = sorted(get_episode(local_store, k).policy_version for k in local_store.list("raw", suffix=".parquet"))
    assert versions == ["v1", "v1", "v2"]
    state = coordinator.actor("robot-00")
    assert state["running_version"] == "v2" and state["last_error"] is None
    assert [s["version"] for s in state["swaps"]] == ["v2", "v1"]
    assert state["swaps"][0]["swapped_us"] >= state["swaps"][0]["approved_us"]
    assert coordinator.distribution_latencies_s("v2")[0] >= 0


def test_edge_client_rejects_unreadable_spool_files(local_store, tmp_path):
    edge = EdgeClient(tmp_path / "spool", local_store)
    good = edge.spool(make_episode(seed=1))
    (edge.outbox / "robot-0__garbage.parquet").write_bytes(b"not parquet")
    report = edge.flush()
    assert report.uploaded == [good.stem.split("__")[1]]
    assert list(report.rejected) == ["robot-0__garbage.parquet"]
    assert (edge.rejected / "robot-0__garbage.parquet.reason.json").exists()
    assert local_store.list("raw", suffix=".parquet") and not edge.pending()


_UPLOADER = """
import json, os, sys
from lwd_core.fleet.edge import EdgeClient
from lwd_core.store import ObjectStore
store = ObjectStore(os.environ["STORE_URL"], json.loads(os.environ["STORE_OPTIONS"]))
EdgeClient(sys.argv[1], store).flush()
"""


def _spool_episodes(spool, store, count) -> set[str]:
    edge = EdgeClient(spool, store)
    return {edge.spool(make_episode(steps=200, obs_dim=OBS_DIM, seed=i, robot_id=f"robot-{i % 3}")).stem.split("__")[1]
            for i in range(count)}


def _uploader(spool, store, failpoints: str = "") -> subprocess.Popen:
    env = {**os.environ, "STORE_URL": store.url, "STORE_OPTIONS": json.dumps(store.storage_options),
           "LWD_FAILPOINTS": failpoints}
    return subprocess.Popen([sys.executable, "-c", _UPLOADER, str(spool)], env=env)


def _assert_exactly_once(store, spool, expected: set[str]) -> None:
    report = EdgeClient(spool, store).flush()  # the restarted uploader
    assert not report.failed
    keys = store.list("raw", suffix=".parquet")
    ids = [k.rsplit("/", 1)[1].removesuffix(".parquet") for k in keys]
    assert sorted(ids) == sorted(expected), "every spooled episode uploaded exactly once"
    for key in keys:
        get_episode(store, key)  # complete and unaltered
    assert not list((spool / "outbox").iterdir()) and not (spool / JOURNAL).exists()


@pytest.mark.parametrize("failpoint", ["edge.after_put=3", "edge.after_journal=2"])
def test_upload_killed_at_a_fail_point_resumes_without_loss_or_duplicate(s3_store, tmp_path, failpoint):
    spool = tmp_path / "spool"
    expected = _spool_episodes(spool, s3_store, 6)
    process = _uploader(spool, s3_store, failpoint)
    assert process.wait(timeout=900) == 137
    uploaded_before = len(s3_store.list("raw", suffix=".parquet"))
    assert 0 < uploaded_before < len(expected)
    _assert_exactly_once(s3_store, spool, expected)


def test_upload_killed_at_random_times_resumes_without_loss_or_duplicate(s3_store, tmp_path):
    spool = tmp_path / "spool"
    expected = _spool_episodes(spool, s3_store, 60)
    rng = random.Random(4)
    pending = [len(expected)]
    for _ in range(3):
        process = _uploader(spool, s3_store)
        # Wait for the uploader to start moving files (its imports take minutes on a loaded machine),
        # then kill it wherever it is.
        deadline = time.monotonic() + 900
        while len(list((spool / "outbox").iterdir())) == pending[-1] and process.poll() is None:
            assert time.monotonic() < deadline, "the uploader never started uploading"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        pending.append(len(list((spool / "outbox").iterdir())))
    assert 0 < pending[1] < len(expected), f"the first kill landed mid-upload (pending after kills: {pending})"
    _assert_exactly_once(s3_store, spool, expected)


# -- processes --------------------------------------------------------------------------------------
def test_supervisor_restarts_a_killed_actor(tmp_path):
    from lwd_core.fleet.supervisor import Child, Supervisor

    marker = tmp_path / "runs"
    # Dies like kill -9 on its first two runs, then finishes cleanly.
    script = ("import os, pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) if p.exists() else 0;"
              " p.write_text(str(n + 1)); os._exit(137 if n < 2 else 0)")
    child = Child("flaky", [sys.executable, "-c", script, str(marker)], dict(os.environ))
    Supervisor([child], backoff_s=0.05, poll_s=0.02).run(duration_s=900)  # returns once the child exits 0
    assert marker.read_text() == "3" and child.restarts == 2 and child.exit_code == 0


def test_fleet_up_runs_robots_as_processes_and_status_shows_versions(tmp_path):
    env = {**os.environ, "LWD_DATA_DIR": str(tmp_path / "data"), "LWD_FLEET__MAX_EPISODE_STEPS": "15",
           "LWD_FLEET__ROBOTS_PER_PROCESS": "2", "LWD_FLEET__POLL_SECONDS": "0.2"}
    env.pop("LWD_CONFIG", None)
    from lwd_core.store import open_store

    store = open_store(LWDConfig(data_dir=str(tmp_path / "data")))
    # The actors find the keys where `lwd fleet up` makes them on a file:// store: <data_dir>/keys.
    publisher(store, make_keyring(tmp_path / "data" / "keys")).publish_all(
        tiny_policy_checkpoint(store, "checkpoints/v1", 0))
    lwd = [sys.executable, "-m", "flows.cli"]
    up = subprocess.run([*lwd, "fleet", "up", "--robots", "3", "--episodes", "1"], env=env, capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-2000:]
    result = json.loads(up.stdout[up.stdout.index("{"):])
    assert result["robots"] == ["robot-00", "robot-01", "robot-02"]
    assert {p["exit_code"] for p in result["processes"].values()} == {0} and len(result["processes"]) == 2
    episodes = [get_episode(store, k) for k in store.list("raw", suffix=".parquet")]
    assert sorted(e.robot_id for e in episodes) == ["robot-00", "robot-01", "robot-02"]
    assert [e.task_id for e in sorted(episodes, key=lambda e: e.robot_id)] == [
        "restock-horizontal", "restock-forward", "restock-back"]
    status = subprocess.run([*lwd, "fleet", "status"], env=env, capture_output=True, text=True, timeout=900)
    assert status.returncode == 0, status.stderr[-2000:]
    lines = [line.split() for line in status.stdout.splitlines() if line.startswith("robot-")]
    assert [(row[0], row[2], row[3], row[4]) for row in lines] == [
        (f"robot-0{i}", "v1", "v1", "yes") for i in range(3)]


@pytest.fixture
def hung_api():
    """An address that accepts connections and never answers, as a hung Prefect server does."""
    import socket
    import threading

    server, held = socket.create_server(("127.0.0.1", 0)), []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/api"
    server.close()
    for connection in held:
        connection.close()


def test_actors_stop_and_exit_when_their_supervisor_is_killed_and_prefect_hangs(tmp_path, hung_api):
    """`lwd fleet up` killed with -9 while the Prefect API hangs: its actors (own sessions, so not
    killed with it) notice, stop, and exit without waiting on the episode events nobody takes."""
    data = tmp_path / "data"
    env = {**os.environ, "LWD_DATA_DIR": str(data), "LWD_FLEET__MAX_EPISODE_STEPS": "15",
           "LWD_FLEET__POLL_SECONDS": "0.2", "PREFECT_API_URL": hung_api}
    env.pop("LWD_CONFIG", None)
    from lwd_core.store import open_store

    store = open_store(LWDConfig(data_dir=str(data)))
    publisher(store, make_keyring(data / "keys")).publish_all(tiny_policy_checkpoint(store, "checkpoints/v1", 0))
    up = subprocess.Popen([sys.executable, "-m", "flows.cli", "fleet", "up", "--robots", "1"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = data / "logs" / "actor-0.log"

    def actor_pids() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if b"actor" in argv and str(data).encode() in b" ".join(argv):
                found.append(int(entry.name))
        return found

    try:
        deadline = time.monotonic() + 600
        while len(store.list("raw", suffix=".parquet")) < 2 or not actor_pids():  # robots at work, events queued
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else ""
            time.sleep(0.5)
        (actor,) = actor_pids()
    finally:
        up.kill()
        up.wait()
    deadline = time.monotonic() + 600
    while Path(f"/proc/{actor}").exists() and Path(f"/proc/{actor}/cmdline").read_bytes():
        if time.monotonic() > deadline:
            os.kill(actor, signal.SIGKILL)
            pytest.fail("the orphaned actor did not exit: " + log.read_text()[-3000:])
        time.sleep(0.5)
    text = log.read_text()
    assert "is gone: stopping" in text and "actor done" in text and "exiting without them" in text, text[-3000:]


def test_fleet_hosts_never_share_robot_ids_and_ingestion_knows_every_hosts_robots(tmp_path):
    from pydantic import ValidationError

    from flows.fleet import fleet_supervisor
    from tasks.pipeline import expectations

    config = LWDConfig(data_dir=str(tmp_path), fleet={"robots": 2, "hosts": ["lab-a", "lab-b"]})
    lab_a, _ = fleet_supervisor(config, host="lab-a")
    lab_b, supervisor = fleet_supervisor(config, host="lab-b")
    assert lab_a == ["lab-a-robot-00", "lab-a-robot-01"] and lab_b == ["lab-b-robot-00", "lab-b-robot-01"]
    assert "--fleet-size" in supervisor.children[0].argv
    assert expectations(config).robots == frozenset(lab_a + lab_b)
    with pytest.raises(ValueError, match="not one of fleet.hosts"):
        fleet_supervisor(config, host="lab-c")
    with pytest.raises(ValidationError):
        LWDConfig(data_dir=str(tmp_path), fleet={"hosts": ["Lab A"]})

"""The robot side (lwd_core/robot.py): no JAX, Prefect or MLflow; it follows only releases signed for
it, acts with the release's portable policy as the trained policy does, and its episodes land."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from conftest import publisher
from test_fleet import tiny_policy_checkpoint
from test_ingest import EXPECT

from lwd_core.algo.checkpoint import load_policy
from lwd_core.algo.text import tokenize
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.data.layout import PORTABLE_POLICY_FILE
from lwd_core.robot import FleetRobot
from lwd_core.security import episode_signature_check
from lwd_core.suite import SCENE_OBS_DIMS, get_task, pad_observation

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"jax", "jaxlib", "flax", "optax", "prefect", "mlflow", "ogbench", "mujoco", "gymnasium", "polars"}


def test_the_robot_side_imports_without_jax_prefect_mlflow_or_the_simulator():
    code = "import json, sys, lwd_core.robot; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert not HEAVY & set(json.loads(result.stdout.splitlines()[-1]))


def test_a_robot_follows_its_signed_release_acts_as_the_trained_policy_and_its_episodes_land(
        local_store, keyring, tmp_path):
    coordinator = publisher(local_store, keyring)
    v1 = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)
    robot = FleetRobot("robot-00", local_store, tmp_path / "spool", keyring.root, seed=0)
    assert robot.follow() is None  # nothing published yet
    coordinator.publish_all(v1)
    policy = robot.follow()
    assert policy is not None and coordinator.actor("robot-00")["running_version"] == "v1"

    # The portable policy's chunk is the trained policy's on the same observation, instruction and noise.
    task = get_task("restock-horizontal")
    learner, params = load_policy(local_store, "checkpoints/v1")
    raw = np.random.default_rng(1).normal(size=SCENE_OBS_DIMS[task.scene]).astype(np.float32)
    obs, tokens = pad_observation(raw, task)[None], tokenize(task.instruction)[None]
    noise = np.random.default_rng(2).standard_normal(policy.noise_shape, np.float32)
    expected = np.asarray(learner.agent.act_from_noise(params, obs, tokens, noise)).reshape(-1, 5)
    np.testing.assert_allclose(policy.act_from_noise(obs, tokens, noise), expected, atol=1e-4)

    # An episode on the robot: acted, recorded, spooled, signed and uploaded; ingestion accepts it.
    robot.start()
    episode = robot.begin(task.task_id)
    observations = np.random.default_rng(3).normal(size=(11, raw.size)).astype(np.float32)
    for step, action in enumerate(episode.act(observations[0])):
        last = step == 4
        episode.record(observations[step], action, observations[step + 1], success=last, terminal=last, chunk_pos=step)
    recorded = robot.finish(episode)
    robot.stop(drain=True)
    assert recorded.outcome == "success" and recorded.rewards.tolist() == [-1, -1, -1, -1, 0]
    report = ingest_batch(local_store, pending_raw(local_store), replace(EXPECT, policy_versions=frozenset({"v1"})),
                          check_signature=episode_signature_check(keyring))
    assert [(o.status, o.reasons) for o in report.outcomes] == [("accepted", [])]
    assert coordinator.actor("robot-00")["per_version"]["v1"]["episodes"] == 1

    # A release whose portable policy was altered in the store is refused; the robot keeps v1.
    v2 = tiny_policy_checkpoint(local_store, "checkpoints/v2", 1)
    local_store.put_atomic(f"checkpoints/v2/{PORTABLE_POLICY_FILE}",
                           local_store.get(f"checkpoints/v1/{PORTABLE_POLICY_FILE}"))
    coordinator.publish_all(v2)
    robot.follow()
    assert robot.track.release.version == "v1" and "v2" in robot.track.last_error
    assert coordinator.actor("robot-00")["running_version"] == "v1"


def test_a_robots_own_process_runs_episodes_with_its_release_and_they_land(local_store, keyring, tmp_path):
    """infra/robot/sim_robot.py: the robot-side package in a process of its own, a Gymnasium environment
    standing in for the hardware (docs/bring-your-own-robot.md runs it)."""
    publisher(local_store, keyring).publish_all(tiny_policy_checkpoint(local_store, "checkpoints/v1", 0))
    result = subprocess.run([sys.executable, str(ROOT / "infra" / "robot" / "sim_robot.py"), "--robot", "robot-01",
                             "--task", "open-drawer-window", "--store", local_store.url, "--spool", str(tmp_path / "spool"),
                             "--keys", str(keyring.root), "--episodes", "2", "--max-steps", "12"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expect = replace(EXPECT, policy_versions=frozenset({"v1"}), tasks=frozenset({"open-drawer-window"}))
    report = ingest_batch(local_store, pending_raw(local_store), expect, check_signature=episode_signature_check(keyring))
    assert [o.status for o in report.outcomes] == ["accepted", "accepted"], [o.reasons for o in report.outcomes]

"""Signed episodes and releases; no pickle anywhere fleet data or weights pass."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from corpus import ROBOT, fleet_episode
from test_fleet import tiny_policy_checkpoint
from test_ingest import EXPECT, upload

from lwd_core.config import LWDConfig
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.fleet.actor import Actor, assign_tasks
from lwd_core.fleet.coordinator import Coordinator, Release
from lwd_core.fleet.edge import EdgeClient
from lwd_core.security import (
    SIGNATURE_KEY,
    SIGNER_KEY,
    episode_signature_check,
    episode_signer,
    release_key,
)
from lwd_core.suite import get_task

ROOT = Path(__file__).resolve().parent.parent
FLEET = LWDConfig(fleet={"signing_secret": "fleet-secret", "robot_keys": {"robot-01": "robot-01-own-key"}}).fleet


def signed_bytes(episode, fleet=FLEET, **override) -> bytes:
    metadata = episode_signer(fleet)(episode) | override
    return episode.to_parquet_bytes(metadata)


def test_only_episodes_signed_by_their_own_robot_are_accepted(local_store):
    good = fleet_episode(seed=1)
    cases = {
        "valid": signed_bytes(good),
        "unsigned": fleet_episode(seed=2).to_parquet_bytes(),
        "wrong-secret": signed_bytes(fleet_episode(seed=3), LWDConfig(fleet={"signing_secret": "guess"}).fleet),
        "forged-signer": signed_bytes(fleet_episode(seed=4), **{SIGNER_KEY: "robot-01"}),
        "signature-of-other-episode": signed_bytes(fleet_episode(seed=5), **{
            SIGNATURE_KEY: episode_signer(FLEET)(good)[SIGNATURE_KEY]}),
    }
    keys = {upload(local_store, name, data): name for name, data in cases.items()}
    report = ingest_batch(local_store, pending_raw(local_store), EXPECT, check_signature=episode_signature_check(FLEET))
    status = {keys[o.raw_key]: (o.status, " ".join(o.reasons)) for o in report.outcomes}
    assert status.pop("valid") == ("accepted", "")
    assert status["unsigned"] == ("quarantined", "unauthenticated: unsigned episode")
    assert status["wrong-secret"] == ("quarantined", "unauthenticated: bad signature")
    assert status["forged-signer"][0] == "quarantined" and "not by its robot" in status["forged-signer"][1]
    assert status["signature-of-other-episode"] == ("quarantined", "unauthenticated: bad signature")


def test_explicit_robot_keys_are_used_instead_of_derived_ones():
    episode = fleet_episode(seed=6, robot_id="robot-01")
    derived = LWDConfig(fleet={"signing_secret": "fleet-secret"}).fleet
    assert episode_signer(FLEET)(episode) != episode_signer(derived)(episode)
    metadata = episode_signer(FLEET)(episode)
    assert episode_signature_check(FLEET)(episode, metadata) is None
    assert episode_signature_check(derived)(episode, metadata) == "bad signature"


def test_actor_loads_only_releases_with_a_valid_signature(local_store, tmp_path):
    coordinator = Coordinator(local_store)
    genuine = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)  # signed with the default secret
    default_key = release_key(LWDConfig().fleet)
    robots = assign_tasks([ROBOT], (get_task("restock-horizontal"),))
    actor = Actor(local_store, EdgeClient(tmp_path / "spool", local_store), robots, max_steps=5, poll_s=0.0,
                  release_key=default_key)
    unsigned = Release(version="v1", checkpoint=genuine.checkpoint, policy_sha256=genuine.policy_sha256)
    coordinator.publish_all(unsigned)
    actor.run(max_episodes=1, duration_s=3)  # refused: nothing to run, so it only waits
    state = coordinator.actor(ROBOT)
    assert state["running_version"] is None and "signature does not verify" in state["last_error"]
    coordinator.publish_all(genuine)
    actor.run(max_episodes=1)
    actor.close()
    assert coordinator.actor(ROBOT)["running_version"] == "v1"


FORBIDDEN_CALLS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
                   ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"), ("torch", "load")}


@pytest.mark.parametrize("package", ["lwd_core", "tasks", "flows", "deployments"])
def test_no_pickle_in_the_code_that_touches_fleet_data_or_weights(package):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "cloudpickle", "dill", "joblib"} & set(filter(None, names)), path
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in FORBIDDEN_CALLS, f"{path}:{node.lineno}"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, f"{path}:{node.lineno}"

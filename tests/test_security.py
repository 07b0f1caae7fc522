"""Signed episodes and releases; no pickle anywhere fleet data or weights pass."""

from __future__ import annotations

import ast
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_keyring, publisher
from corpus import ROBOT, fleet_episode
from test_fleet import tiny_policy_checkpoint
from test_ingest import EXPECT, upload

from lwd_core.config import LWDConfig
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.fleet.actor import Actor, assign_tasks
from lwd_core.fleet.edge import EdgeClient
from lwd_core.fleet.releases import read_revision_floor
from lwd_core.security import (
    SIGNATURE_KEY,
    SIGNER_KEY,
    Keyring,
    MissingKeyError,
    episode_signature_check,
    episode_signer,
    keyring_for,
    release_message,
    release_signer,
    release_verifier,
)
from lwd_core.store import sha256_hex
from lwd_core.suite import TELEOP_POLICY_VERSION, get_task

ROOT = Path(__file__).resolve().parent.parent


def signed_bytes(episode, keyring, **override) -> bytes:
    return episode.to_parquet_bytes(episode_signer(keyring)(episode) | override)


def test_only_episodes_signed_by_their_own_robot_are_accepted(local_store, keyring, tmp_path):
    other_fleet = make_keyring(tmp_path / "other-keys")
    good = fleet_episode(seed=1)
    as_other_robot = fleet_episode(seed=4)
    cases = {
        "valid": signed_bytes(good, keyring),
        "unsigned": fleet_episode(seed=2).to_parquet_bytes(),
        "another-fleets-key": signed_bytes(fleet_episode(seed=3), other_fleet),
        # robot-01 signs an episode of robot-00 with its own key and claims to be robot-00.
        "cross-robot": as_other_robot.to_parquet_bytes({
            SIGNATURE_KEY: keyring.private("robot-01").sign(f"lwd/episode:{as_other_robot.episode_id}".encode()).hex(),
            SIGNER_KEY: ROBOT}),
        "forged-signer": signed_bytes(fleet_episode(seed=5), keyring, **{SIGNER_KEY: "robot-01"}),
        "signature-of-other-episode": signed_bytes(fleet_episode(seed=6), keyring, **{
            SIGNATURE_KEY: episode_signer(keyring)(good)[SIGNATURE_KEY]}),
        "not-hex": signed_bytes(fleet_episode(seed=7), keyring, **{SIGNATURE_KEY: "zz" * 64}),
    }
    keys = {upload(local_store, name, data): name for name, data in cases.items()}
    public_only = Keyring(tmp_path / "public")  # ingestion holds public keys only
    for robot in (ROBOT, "robot-01"):
        (public_only.root / "robots").mkdir(parents=True, exist_ok=True)
        (public_only.root / "robots" / f"{robot}.pub").write_bytes((keyring.root / "robots" / f"{robot}.pub").read_bytes())
    report = ingest_batch(local_store, pending_raw(local_store), EXPECT, check_signature=episode_signature_check(public_only))
    status = {keys[o.raw_key]: (o.status, " ".join(o.reasons)) for o in report.outcomes}
    assert status.pop("valid") == ("accepted", "")
    assert status.pop("unsigned") == ("quarantined", "unauthenticated: unsigned episode")
    assert status.pop("forged-signer")[1].endswith(f"not by its robot {ROBOT!r}")
    assert status == {name: ("quarantined", "unauthenticated: bad signature") for name in status}


def test_actor_accepts_only_signed_current_releases(local_store, keyring, tmp_path):
    """Unsigned, robot-signed, rewritten-spec and replayed releases are all refused; a genuine one runs."""
    coordinator = publisher(local_store, keyring)
    robots = assign_tasks([ROBOT], (get_task("restock-horizontal"),))
    actor = Actor(local_store, EdgeClient(tmp_path / "spool", local_store, sign=episode_signer(keyring)), robots,
                  max_steps=5, poll_s=0.0, verify_release=release_verifier(keyring))

    def refused(document: dict, why: str) -> None:
        local_store.put_json("fleet/desired.json", document)  # what an attacker with write access could do
        before = actor.robots[0].rejected
        deadline = time.monotonic() + 120  # until the actor has decided on it, however loaded the machine
        while actor.robots[0].rejected == before and time.monotonic() < deadline:
            actor.run(max_episodes=1, duration_s=1)
        error = coordinator.actor(ROBOT)["last_error"] or ""
        assert why in error, error

    v1 = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)
    genuine = coordinator.publish_all(v1)
    signed_v1 = dict(genuine["stable"])
    refused(genuine | {"stable": signed_v1 | {"signature": ""}}, "signature does not verify")
    by_robot = signed_v1 | {"signature": keyring.private(ROBOT).sign(release_message(signed_v1)).hex()}
    refused(genuine | {"stable": by_robot}, "signature does not verify")
    # The spec rewritten in the store, its manifest entry updated to match: the signed manifest hash
    # no longer does.
    spec, manifest = local_store.get("checkpoints/v1/spec.json"), local_store.get("checkpoints/v1/_MANIFEST.json")
    rewritten = spec.replace(b'"flow_steps": 2', b'"flow_steps": 3')
    forged_manifest = json.loads(manifest)
    forged_manifest["files"]["spec.json"] = {"sha256": sha256_hex(rewritten), "bytes": len(rewritten)}
    local_store.put_atomic("checkpoints/v1/spec.json", rewritten)
    local_store.put_json("checkpoints/v1/_MANIFEST.json", forged_manifest)
    refused(genuine, "does not match the signed release's manifest")
    local_store.put_atomic("checkpoints/v1/spec.json", spec)
    local_store.put_atomic("checkpoints/v1/_MANIFEST.json", manifest)

    republished = coordinator.publish_all(v1)  # a new revision: the actor looks at it afresh
    actor.run(max_episodes=1, duration_s=120)
    assert coordinator.actor(ROBOT)["running_version"] == "v1"
    assert actor.accepted_revision == republished["revision"]
    v2 = coordinator.publish_all(tiny_policy_checkpoint(local_store, "checkpoints/v2", 1))
    actor.run(max_episodes=1, duration_s=120)
    assert coordinator.actor(ROBOT)["running_version"] == "v2"
    # An old signed release published again (a lower revision than the accepted one) is refused.
    refused(v2 | {"stable": signed_v1}, "replayed release")
    actor.close()
    assert coordinator.actor(ROBOT)["running_version"] == "v2"


def test_a_robot_runs_only_a_release_signed_for_it(local_store, keyring, tmp_path):
    """Whom a release is for is signed with it: rewriting the desired state's robot lists (widening the
    canary, dropping a robot from it, ending it, the canary's release as everyone's) moves no robot."""
    canary_robot, stable_robot = "robot-00", "robot-01"
    coordinator = publisher(local_store, keyring)
    robots = assign_tasks([canary_robot, stable_robot], (get_task("restock-horizontal"),))
    actor = Actor(local_store, EdgeClient(tmp_path / "spool", local_store, sign=episode_signer(keyring)), robots,
                  max_steps=5, poll_s=0.0, verify_release=release_verifier(keyring))
    by_id = {robot.robot_id: robot for robot in actor.robots}

    def running() -> dict[str, str | None]:
        return {robot_id: (robot.release.version if robot.release else None) for robot_id, robot in by_id.items()}

    def settle(until) -> None:
        deadline = time.monotonic() + 300  # until every robot has decided, however loaded the machine
        while not until() and time.monotonic() < deadline:
            actor.run(max_episodes=2, duration_s=1)

    coordinator.publish_all(tiny_policy_checkpoint(local_store, "checkpoints/v1", 0))
    settle(lambda: running() == {canary_robot: "v1", stable_robot: "v1"})
    genuine = coordinator.publish_canary(tiny_policy_checkpoint(local_store, "checkpoints/v2", 1), [canary_robot])
    settle(lambda: running() == {canary_robot: "v2", stable_robot: "v1"})
    assert running() == {canary_robot: "v2", stable_robot: "v1"}
    assert (genuine["canary"]["release"]["stage"], genuine["canary"]["release"]["targets"]) == ("canary", [canary_robot])
    assert genuine["stable"]["excluded"] == [canary_robot]

    def refused(document: dict, robot_id: str) -> None:
        local_store.put_json("fleet/desired.json", document)  # an attacker with write access to the store
        for robot in by_id.values():
            robot.rejected = None
        settle(lambda: by_id[robot_id].rejected is not None)
        assert running() == {canary_robot: "v2", stable_robot: "v1"}
        assert "not signed for" in (coordinator.actor(robot_id)["last_error"] or "")

    canary = genuine["canary"]
    refused(genuine | {"canary": canary | {"robots": [canary_robot, stable_robot]}}, stable_robot)  # widened
    refused(genuine | {"canary": canary | {"robots": []}}, canary_robot)  # a robot dropped from it
    refused(genuine | {"canary": None}, canary_robot)  # ended without the release key
    refused(genuine | {"stable": canary["release"]}, stable_robot)  # the canary's release as everyone's
    # Rewriting the signed lists themselves breaks the signature.
    widened = canary["release"] | {"targets": [canary_robot, stable_robot]}
    local_store.put_json("fleet/desired.json", genuine | {"canary": {"release": widened,
                                                                     "robots": [canary_robot, stable_robot]}})
    by_id[stable_robot].rejected = None
    settle(lambda: by_id[stable_robot].rejected is not None)
    assert "signature does not verify" in coordinator.actor(stable_robot)["last_error"]
    # The genuine end of the canary (signed) moves the canary robot back.
    coordinator.end_canary()
    settle(lambda: running() == {canary_robot: "v1", stable_robot: "v1"})
    actor.close()
    assert running() == {canary_robot: "v1", stable_robot: "v1"}


def test_a_restarted_actor_still_refuses_older_releases(local_store, keyring, tmp_path):
    """The accepted revision survives a restart (it is on the robot's disk); a floor file that cannot
    be read refuses every release rather than starting again from 0."""
    coordinator = publisher(local_store, keyring)
    robots = assign_tasks([ROBOT], (get_task("restock-horizontal"),))

    def start_actor() -> Actor:  # a fresh process: nothing in memory, the same spool on disk
        return Actor(local_store, EdgeClient(tmp_path / "spool", local_store, sign=episode_signer(keyring)), robots,
                     max_steps=5, poll_s=0.0, verify_release=release_verifier(keyring))

    def refused(actor: Actor, document: dict, why: str) -> None:
        local_store.put_json("fleet/desired.json", document)
        deadline = time.monotonic() + 120
        while actor.robots[0].rejected is None and time.monotonic() < deadline:
            actor.run(max_episodes=1, duration_s=1)
        actor.close()
        assert actor.robots[0].release is None
        assert why in (coordinator.actor(ROBOT)["last_error"] or "")

    old = coordinator.publish_all(tiny_policy_checkpoint(local_store, "checkpoints/v1", 0))
    current = coordinator.publish_all(tiny_policy_checkpoint(local_store, "checkpoints/v2", 1))
    first = start_actor()
    first.run(max_episodes=1, duration_s=120)
    first.close()
    assert coordinator.actor(ROBOT)["running_version"] == "v2"

    restarted = start_actor()
    assert restarted.accepted_revision == current["revision"]
    refused(restarted, old, "replayed release")

    # A canary that went to other robots, then rolled back: the running release re-signed at a newer
    # revision lifts this robot's floor too, so the canary's document, replayed with this robot in its
    # canary list (the list is not signed), is refused, after a restart as well.
    canary_v3 = coordinator.publish_canary(tiny_policy_checkpoint(local_store, "checkpoints/v3", 2), ["robot-77"])
    rolled_back = coordinator.end_canary()
    follower = start_actor()
    follower.run(max_episodes=1, duration_s=120)
    follower.close()
    assert follower.robots[0].revision_floor == rolled_back["revision"] > canary_v3["revision"]
    canary_v3["canary"]["robots"] = [ROBOT]
    refused(start_actor(), canary_v3, "replayed release")

    # Revisions count per store: another store's floor does not hold this one's releases back.
    assert read_revision_floor(restarted.floor_dir, ROBOT, "file:///another-store") == 0

    (restarted.floor_dir / f"{ROBOT}.json").write_text("{not json")
    refused(start_actor(), current, "release floor")


def test_a_signed_demonstration_from_a_teleoperator_is_accepted_and_from_a_robot_is_not(local_store, keyring):
    """Teleoperators sign as robots do (their key pair in the keyring's robots/); only they may upload demos."""
    keyring.generate(["operator-1"], release=False)
    demo = fleet_episode(seed=1, robot_id="operator-1", source="demo", policy_version=TELEOP_POLICY_VERSION)
    robot_demo = fleet_episode(seed=1, source="demo", policy_version=TELEOP_POLICY_VERSION)
    keys = {upload(local_store, name, signed_bytes(episode, keyring)): name
            for name, episode in (("teleoperator", demo), ("robot", robot_demo))}
    exp = replace(EXPECT, teleoperators=frozenset({"operator-1"}))
    report = ingest_batch(local_store, pending_raw(local_store), exp, check_signature=episode_signature_check(keyring))
    status = {keys[o.raw_key]: (o.status, " ".join(o.reasons)) for o in report.outcomes}
    assert status["teleoperator"] == ("accepted", "")
    assert status["robot"][0] == "quarantined" and "source not allowed" in status["robot"][1]


def test_keys_are_private_to_their_owner_and_rotate(tmp_path):
    keyring = make_keyring(tmp_path / "keys", robots=2)
    for name in ("robots/robot-00.key", "release.key"):
        assert (keyring.root / name).stat().st_mode & 0o777 == 0o600
    before = keyring.fingerprint("robot-00")
    assert keyring.generate(["robot-00"], release=False) == []  # existing keys are kept
    assert keyring.generate(["robot-00"], release=False, rotate=True) == ["robot-00"]
    assert keyring.fingerprint("robot-00") != before
    keyring.generate(["cell.1", "cell.2"], release=False)  # ids with dots keep their own files
    assert keyring.fingerprint("cell.1") != keyring.fingerprint("cell.2")


def test_a_store_other_than_file_never_generates_keys(tmp_path):
    config = LWDConfig(data_dir=tmp_path, storage={"url": "s3://bucket/prefix"})
    keyring = keyring_for(config, ["robot-00"])
    with pytest.raises(MissingKeyError, match="lwd keys generate"):
        release_signer(keyring)


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


def test_the_rollout_side_believes_only_reports_their_robot_signed(local_store, keyring):
    """Whoever can write to the store cannot make a canary look good or a robot look alive: the rollout
    side's coordinator ignores reports not signed by the robot they name, and the signature covers the
    outcomes and the heartbeat."""
    from lwd_core.fleet.coordinator import Coordinator, tally
    from lwd_core.fleet.staged_rollout import judge_canary, live_robots
    from lwd_core.security import report_signer, report_verifier

    rollout_side = Coordinator(local_store, verify_report=report_verifier(keyring))
    robot = Coordinator(local_store, sign_report=report_signer(keyring))
    v1 = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)
    record = {"running_version": "v1", "task_id": "restock-horizontal",
              "per_version": {"v1": {"episodes": 3, "autonomous_successes": 1}}}
    robot.report(ROBOT, record)
    assert live_robots(rollout_side, 60) == [ROBOT]
    assert tally(rollout_side.actors(), "v1").autonomous_successes == 1

    genuine = local_store.get_json(f"fleet/actors/{ROBOT}.json")
    forgeries = {
        "inflated": genuine | {"per_version": {"v1": {"episodes": 300, "autonomous_successes": 300}}},
        "unsigned": {k: v for k, v in genuine.items() if k != "signature"},
        "another-robots-key": genuine | {"signature": report_signer(keyring)(genuine | {"robot_id": "robot-01"})},
        "renamed": genuine | {"robot_id": "robot-01"},
        "path-in-id": genuine | {"robot_id": "../release"},
        "not-a-report": [genuine],
    }
    for name, forged in forgeries.items():
        local_store.put_json(f"fleet/actors/{ROBOT}.json", forged)
        assert rollout_side.actors() == {}, name
    # A canary judged on forged evidence alone sees none: it waits for real episodes, then rolls back.
    local_store.put_json(f"fleet/actors/{ROBOT}.json", forgeries["inflated"])
    verdict, report = judge_canary(rollout_side, replace(v1, version="v1"), [ROBOT], "v0", min_episodes=2,
                                   min_robots=1, timeout_s=0.5, tolerance=0.1)
    assert not verdict.promote and report["episodes"] == 0

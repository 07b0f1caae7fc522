"""Coordinator: which model each robot should run, and which it actually runs.

State lives in the object store so every actor, flow and dashboard reads one source of truth:

    fleet/desired.json          written by the rollout flow only: stable release, optional canary
                                release with its robot subset, a revision counter and history
    fleet/actors/<robot>.json   written by that robot's actor only: running version, heartbeats,
                                per-version episode/success counts, recent swap timestamps

A release names a committed checkpoint, the sha256 of its policy file and of its whole manifest, and
carries the release key's signature with the revision it was published at, its stage and the robots it
is for (lwd_core.security); actors refuse releases that do not verify, that are not for them, that are
older than one they accepted, or whose files do not hash to what the signed manifest says. Timestamps are UTC microseconds so latency percentiles can be computed afterwards.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lwd_core.data.layout import (
    FLEET_ACTORS_PREFIX,
    FLEET_DESIRED_KEY,
    POLICY_FILE,
    actor_status_key,
    safe_name,
)
from lwd_core.data.outcomes import OutcomeCounts
from lwd_core.store import ObjectStore, commit_manifest_key, now_us, sha256_hex

log = logging.getLogger(__name__)
_HISTORY = 20


@dataclass(frozen=True)
class Release:
    version: str
    checkpoint: str
    policy_sha256: str
    published_us: int = 0
    # When the model became eligible (registered/approved): the start of distribution latency.
    approved_us: int = 0
    # sha256 of the checkpoint's _MANIFEST.json: every file the release consists of, spec included.
    manifest_sha256: str = ""
    # The desired-state revision it was published at, and the release key's signature over all of
    # the above (lwd_core.security.release_message); both set by the coordinator when it publishes.
    revision: int = 0
    signature: str = ""
    # Whom it is for, set when published and signed with the rest: a canary names its robots; the
    # stable release is for every robot but the canary's. A robot runs only a release signed for it,
    # so rewriting the desired state cannot widen a canary or move a robot to another release.
    stage: Literal["stable", "canary"] = "stable"
    targets: tuple[str, ...] | None = None  # None: every robot
    excluded: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Release | None:
        if not data:
            return None
        lists = {name: tuple(data[name]) for name in ("targets", "excluded") if data.get(name) is not None}
        return cls(**{**data, **lists})

    def is_for(self, robot_id: str) -> bool:
        return (self.targets is None or robot_id in self.targets) and robot_id not in self.excluded


def release_for_checkpoint(store: ObjectStore, checkpoint: str, version: str, approved_us: int | None = None) -> Release:
    """A release pinned to the checkpoint's commit manifest: the policy's sha256 it records, and the
    manifest's own sha256 (which covers every file)."""
    checkpoint = checkpoint.strip("/")
    manifest = store.get(commit_manifest_key(checkpoint))
    return Release(version=safe_name(version, "model version"), checkpoint=checkpoint,
                   policy_sha256=json.loads(manifest)["files"][POLICY_FILE]["sha256"],
                   manifest_sha256=sha256_hex(manifest), approved_us=approved_us or now_us())


def tally(actors: dict[str, dict[str, Any]], version: str, robots: list[str] | None = None) -> OutcomeCounts:
    """What ``robots`` (default: all) of these actor reports finished under ``version``."""
    return sum((OutcomeCounts.from_dict(state.get("per_version", {}).get(version))
                for robot_id, state in actors.items() if robots is None or robot_id in robots), OutcomeCounts())


def choose_canary(robot_ids: list[str], fraction: float, minimum: int = 1) -> list[str]:
    """A deterministic canary subset: the first ceil(fraction * n) robots, at least ``minimum`` (the
    robots the canary's evidence needs)."""
    if not robot_ids:
        return []
    count = min(len(robot_ids), max(minimum, math.ceil(fraction * len(robot_ids))))
    return sorted(robot_ids)[:count]


class Coordinator:
    def __init__(self, store: ObjectStore, sign_release: Callable[[dict[str, Any]], str] | None = None,
                 sign_report: Callable[[dict[str, Any]], str] | None = None,
                 verify_report: Callable[[dict[str, Any]], bool] | None = None):
        """``sign_release``: the release key's signer (lwd_core.security.release_signer), needed to
        publish. ``sign_report``: a robot's signer of its own reports (report_signer). ``verify_report``:
        for the rollout side, which then sees only reports their robot signed (report_verifier): anyone
        who can write to the store could otherwise make a canary look good. Status readers need none."""
        self.store = store
        self.sign_release, self.sign_report, self.verify_report = sign_release, sign_report, verify_report

    # -- desired state (rollout flow) ----------------------------------------------------------
    def published_versions(self) -> set[str]:
        """Every release version ever published (stable, history, canary): what fleet episodes may carry."""
        desired = self.desired()
        releases = [desired.get("stable"), *desired.get("history", [])]
        if desired.get("canary"):
            releases.append(desired["canary"]["release"])
        return {release["version"] for release in releases if release}

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"revision": 0, "stable": None, "canary": None, "history": [], "updated_us": 0}

    def desired(self) -> dict[str, Any]:
        if not self.store.exists(FLEET_DESIRED_KEY):
            return self._empty()
        return self.store.get_json(FLEET_DESIRED_KEY)

    def _update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply ``change`` to the desired state as one compare-and-swap (retried on a concurrent
        writer's newer document, never overwriting it), with the next revision."""
        if self.sign_release is None:
            raise PermissionError("publishing needs the release key (Coordinator(store, sign_release=...))")

        def apply(current: dict[str, Any] | None) -> dict[str, Any]:
            document = copy.deepcopy(current) if current else self._empty()
            change(document)
            document["revision"] = int(document.get("revision", 0)) + 1
            document["updated_us"] = now_us()
            # Every release a robot may be told to run carries this revision and whom it is for under
            # a fresh signature.
            canary = document["canary"]
            if document["stable"]:
                document["stable"].update(stage="stable", targets=None, excluded=canary["robots"] if canary else [])
            if canary:
                canary["release"].update(stage="canary", targets=canary["robots"], excluded=[])
            for release in (document["stable"], (canary or {}).get("release")):
                if release:
                    release["revision"] = document["revision"]
                    release["signature"] = self.sign_release(release)
            return document

        return self.store.update_json(FLEET_DESIRED_KEY, apply)

    def publish_all(self, release: Release) -> dict[str, Any]:
        """Every robot should run ``release``; any canary ends."""
        release = asdict(Release(**{**asdict(release), "published_us": now_us()}))

        def change(document: dict[str, Any]) -> None:
            if document["stable"] and document["stable"]["version"] != release["version"]:
                document["history"] = ([document["stable"]] + document["history"])[:_HISTORY]
            document["stable"], document["canary"] = release, None

        return self._update(change)

    def publish_canary(self, release: Release, robots: list[str]) -> dict[str, Any]:
        """Only ``robots`` should run ``release``; the rest keep the stable release."""
        if not robots:
            raise ValueError("a canary needs at least one robot")
        canary = {"release": asdict(Release(**{**asdict(release), "published_us": now_us()})),
                  "robots": sorted(safe_name(r, "robot id") for r in robots)}
        return self._update(lambda document: document.update(canary=canary))

    def end_canary(self) -> dict[str, Any]:
        """Roll the canary robots back to the stable release."""
        return self._update(lambda document: document.update(canary=None))

    def release_for(self, robot_id: str, document: dict[str, Any] | None = None) -> Release | None:
        document = document or self.desired()
        canary = document.get("canary")
        if canary and robot_id in canary["robots"]:
            return Release.from_dict(canary["release"])
        return Release.from_dict(document.get("stable"))

    # -- actual state (actors) -----------------------------------------------------------------
    def report(self, robot_id: str, state: dict[str, Any]) -> None:
        report = {**state, "robot_id": robot_id, "heartbeat_us": now_us()}
        if self.sign_report is not None:
            report["signature"] = self.sign_report(report)
        self.store.put_json(actor_status_key(robot_id), report)

    def actor(self, robot_id: str) -> dict[str, Any] | None:
        key = actor_status_key(robot_id)
        return self.store.get_json(key) if self.store.exists(key) else None

    def actors(self) -> dict[str, dict[str, Any]]:
        """The robots' last reports, by robot (only those that verify, when verifying)."""
        states = {}
        for key in self.store.list(FLEET_ACTORS_PREFIX, suffix=".json"):
            state = self.store.get_json(key)
            if self.verify_report is not None and not self.verify_report(state):
                log.warning("ignoring %s: not signed by the robot it names", key)
                continue
            states[state["robot_id"]] = state
        return states

    # -- views ---------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One row per known robot: desired vs running version, health and outcomes."""
        document = self.desired()
        rows = []
        now = now_us()
        for robot_id, state in sorted(self.actors().items()):
            release = self.release_for(robot_id, document)
            counts = sum(map(OutcomeCounts.from_dict, state.get("per_version", {}).values()), OutcomeCounts())
            rows.append({
                "robot_id": robot_id,
                "task_id": state.get("task_id"),
                "desired": release.version if release else None,
                "running": state.get("running_version"),
                "in_sync": bool(release) and state.get("running_version") == release.version,
                "state": state.get("state"),
                "episodes": counts.episodes,
                **counts.rates(),
                "heartbeat_age_s": (now - state["heartbeat_us"]) / 1e6,
                "last_error": state.get("last_error"),
            })
        return rows

    def running(self, version: str, robots: list[str] | None = None) -> bool:
        """Whether every robot (or every robot in ``robots``) runs ``version``."""
        states = self.actors()
        targets = robots if robots is not None else list(states)
        return bool(targets) and all(states.get(r, {}).get("running_version") == version for r in targets)

    def distribution_latencies_s(self, version: str) -> list[float]:
        """Per robot: seconds from the release's approval to that robot running it."""
        latencies = []
        for state in self.actors().values():
            for swap in state.get("swaps", []):
                if swap["version"] == version and swap.get("approved_us"):
                    latencies.append((swap["swapped_us"] - swap["approved_us"]) / 1e6)
                    break
        return latencies

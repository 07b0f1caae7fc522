"""Which release a robot runs: the rule every robot follows, simulated (lwd_core/fleet/actor.py) or real
(lwd_core/robot.py), with no JAX.

Between episodes a robot looks up its release in the coordinator's desired state and moves to it only if
the release key's signature verifies, its revision is no older than the robot's accepted one (its
floor), it is signed for this robot, and its policy loads with every hash checked. A refused release is
remembered and reported; the robot keeps what it runs.

Each robot's floor is kept on local disk and written before it switches, so a restarted robot still
refuses an old signed release published again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lwd_core.data.episode import Episode
from lwd_core.data.layout import safe_name
from lwd_core.data.outcomes import OutcomeCounts
from lwd_core.fleet.coordinator import Release, now_us
from lwd_core.fleet.edge import fsync_write

log = logging.getLogger(__name__)
FLOOR_DIR = "release-floor"  # inside the spool unless the robot is given a directory
_SWAPS_KEPT = 20


def _floor_path(floor_dir: Path, robot_id: str) -> Path:
    return floor_dir / f"{safe_name(robot_id, 'robot id')}.json"


def read_revision_floor(floor_dir: Path, robot_id: str, store_url: str) -> int | None:
    """The robot's persisted floor: 0 if it never accepted a release of this store here, None if the
    file cannot be trusted (it is written atomically, so a bad one means tampering or a disk fault:
    fail closed). Revisions count per store: another store's floor (the host moved to a new bucket,
    say) does not apply."""
    path = _floor_path(floor_dir, robot_id)
    if not path.exists():
        return 0
    try:
        floor = json.loads(path.read_text())
        revision = floor["revision"]
        if floor.get("store", store_url) != store_url:
            return 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("%s: release floor %s unreadable (%s): refusing every release", robot_id, path, exc)
        return None
    if type(revision) is not int or revision < 0:
        log.error("%s: release floor %s holds %r, not a revision: refusing every release", robot_id, path, revision)
        return None
    return revision


def write_revision_floor(floor_dir: Path, robot_id: str, revision: int, store_url: str) -> None:
    floor_dir.mkdir(parents=True, exist_ok=True)
    fsync_write(_floor_path(floor_dir, robot_id), json.dumps({"revision": revision, "store": store_url}).encode())


@dataclass(eq=False)
class ReleaseTrack:
    """One robot's releases: what it runs, what it last refused and why, its floor, and its record
    under each version (the canary's evidence)."""

    robot_id: str
    release: Release | None = None
    rejected: Release | None = None
    swaps: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = None
    # Highest release revision accepted (persisted); None: its floor file is unreadable, so no floor
    # can be established and every release is refused until an operator checks and removes the file.
    revision_floor: int | None = 0
    per_version: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, episode: Episode) -> None:
        """A finished episode in its version's record, autonomous or assisted."""
        counts = OutcomeCounts.from_dict(self.per_version.get(episode.policy_version))
        counts.add(episode.outcome == "success", episode.interventions)
        self.per_version[episode.policy_version] = counts.to_dict()


class ReleaseFollower:
    """The rule above for the robots of one process. ``verify_release``: the release key's verifier
    (lwd_core.security.release_verifier); production robots always pass it, None skips only that
    check, never the hash checks (``load`` does those)."""

    def __init__(self, floor_dir: Path, store_url: str, verify_release: Callable[[dict[str, Any]], bool] | None):
        self.floor_dir, self.store_url, self.verify_release = Path(floor_dir), store_url, verify_release

    def restore(self, track: ReleaseTrack, last_report: dict[str, Any] | None) -> None:
        """A restarted robot: its floor from disk, its history (outcomes per version, swaps) from its last
        report."""
        track.revision_floor = read_revision_floor(self.floor_dir, track.robot_id, self.store_url)
        track.per_version = (last_report or {}).get("per_version", {})
        track.swaps = (last_report or {}).get("swaps", [])

    def _check_revision(self, track: ReleaseTrack, release: Release, accepted_revision: int) -> None:
        if track.revision_floor is None:
            raise PermissionError(f"release floor {_floor_path(self.floor_dir, track.robot_id)} is unreadable: "
                                  f"no revision can be trusted until an operator checks and removes it")
        if release.revision < accepted_revision:
            raise PermissionError(f"revision {release.revision} is older than the accepted "
                                  f"{accepted_revision}: a replayed release (if this store's desired state "
                                  f"was reset, clear {self.floor_dir})")

    def consider(self, track: ReleaseTrack, desired: Release | None, accepted_revision: int,
                 load: Callable[[Release], Any]) -> str | None:
        """Between episodes: move ``track`` to ``desired`` if it passes the rule (``load`` fetches its
        policy, every hash checked, and raises if it cannot). ``accepted_revision``: the highest any
        robot of this process accepted (every publish re-signs all current releases at the new
        revision, so a genuine release is never below it). Returns the state to report ("running",
        "rejected-release"), or None when nothing changed."""
        if desired is None:
            return None
        if track.release and desired.version == track.release.version \
                and desired.policy_sha256 == track.release.policy_sha256:
            self._follow_revision(track, desired)
            return None
        if desired == track.rejected:
            return None  # already refused this exact release; wait for a different one
        try:
            if self.verify_release is not None:
                if not self.verify_release(asdict(desired)):
                    raise PermissionError("release signature does not verify")
                self._check_revision(track, desired, accepted_revision)
            if not desired.is_for(track.robot_id):
                raise PermissionError(f"the {desired.stage} release is not signed for {track.robot_id} "
                                      f"(the desired state's robot lists were changed without the release key)")
            load(desired)
            # Durable before the switch: a crash after it must not reopen the door to older releases.
            floor = max(track.revision_floor or 0, desired.revision)
            write_revision_floor(self.floor_dir, track.robot_id, floor, self.store_url)
        except Exception as exc:  # bad signature, integrity, missing checkpoint: keep what we have
            track.rejected = desired
            track.last_error = f"refused {desired.version}: {type(exc).__name__}: {exc}"
            log.error("%s %s", track.robot_id, track.last_error)
            return "rejected-release"
        track.release, track.rejected, track.last_error = desired, None, None
        track.revision_floor = floor
        track.swaps = ([{"version": desired.version, "approved_us": desired.approved_us,
                         "published_us": desired.published_us, "swapped_us": now_us()}] + track.swaps)[:_SWAPS_KEPT]
        return "running"

    def _follow_revision(self, track: ReleaseTrack, current: Release) -> None:
        """The running release re-signed at a newer revision (every publish re-signs all current
        releases): the floor rises with it, or a release replaced meanwhile (a rolled-back canary, say)
        could be replayed to this robot later."""
        if track.revision_floor is None or current.revision <= track.revision_floor or not current.is_for(track.robot_id):
            return
        if self.verify_release is not None and not self.verify_release(asdict(current)):
            return  # not the rollout side's: the floor follows signed revisions only
        try:
            write_revision_floor(self.floor_dir, track.robot_id, current.revision, self.store_url)
        except OSError as exc:
            log.error("%s: release floor not raised to %d: %s", track.robot_id, current.revision, exc)
            return
        track.revision_floor = current.revision


def status_report(track: ReleaseTrack, task_id: str, state: str) -> dict[str, Any]:
    """What a robot tells the coordinator (``lwd fleet status``, the canary's evidence)."""
    running = track.release
    return {
        "task_id": task_id,
        "state": state,
        "running_version": running.version if running else None,
        "running_sha256": running.policy_sha256 if running else None,
        "per_version": track.per_version,
        "swaps": track.swaps,
        "last_error": track.last_error,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }

"""Object-store key layout: the one place that knows where each kind of object lives.

    raw/<date>/<robot>/<episode_id>.parquet       written by edge clients (atomic)
    quarantine/<episode_id>.parquet + .reason.json
    buffer/<offline|online>/task=<task>/<episode_id>.parquet
    snapshots/<snapshot_id>.json                  immutable manifest
    checkpoints/<version>/...  + _MANIFEST.json   committed artifact
    fleet/desired.json, fleet/actors/<robot>.json coordinator state
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from lwd_core.data.episode import Episode
from lwd_core.store import ObjectStore

BufferKind = Literal["offline", "online"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(value: str, what: str) -> str:
    """Ids that become key components: no separators, no dot-dot, bounded length."""
    if not _SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe name (letters, digits, . _ -; at most 128)")
    return value


def raw_key(robot_id: str, episode_id: str, when: datetime | None = None) -> str:
    day = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
    return f"raw/{day}/{safe_name(robot_id, 'robot id')}/{safe_name(episode_id, 'episode id')}.parquet"


def quarantine_key(name: str) -> str:
    return f"quarantine/{safe_name(name, 'quarantine name')}.parquet"


def quarantine_reason_key(name: str) -> str:
    return f"quarantine/{safe_name(name, 'quarantine name')}.reason.json"


def buffer_prefix(kind: BufferKind) -> str:
    if kind not in ("offline", "online"):
        raise ValueError(f"buffer kind must be offline or online, not {kind!r}")
    return f"buffer/{kind}"


def buffer_key(kind: BufferKind, task_id: str, episode_id: str) -> str:
    return f"{buffer_prefix(kind)}/task={safe_name(task_id, 'task id')}/{safe_name(episode_id, 'episode id')}.parquet"


def snapshot_key(snapshot_id: str) -> str:
    return f"snapshots/{safe_name(snapshot_id, 'snapshot id')}.json"


def checkpoint_prefix(version: str) -> str:
    return f"checkpoints/{safe_name(version, 'model version')}"


def put_episode(store: ObjectStore, key: str, episode: Episode, extra_metadata: dict[str, str] | None = None) -> str:
    return store.put_atomic(key, episode.to_parquet_bytes(extra_metadata))


def get_episode(store: ObjectStore, key: str, verify_id: bool = True) -> Episode:
    return Episode.from_parquet_bytes(store.get(key), verify_id=verify_id)

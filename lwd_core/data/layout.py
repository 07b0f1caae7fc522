"""Object-store key layout: the one place that knows where each kind of object lives.

    raw/<date>/<robot>/<episode_id>.parquet            written by edge clients (atomic)
    quarantine/<name>.parquet + .reason.json
    ingest/batches/<time>-<run>.json                   one report per ingest micro-batch
    ingest/leases.json                                 which ingest worker holds which shard of raw/
    buffer/<offline|online>/task=<task>/<episode_id>.parquet
    buffer/offline/_DATASET.json                       what the offline generator produced
    labels/<offline|online>/<time>.parquet             reward labels, one row per episode
    snapshots/<snapshot_id>.json, snapshots/_latest.json
    checkpoints/run-<snapshot>-<name>-from<step>/step-<step>/   a committed checkpoint:
        train_state.msgpack, policy.msgpack (what robots load), spec.json, _MANIFEST.json
    checkpoints/_latest.json                           the flywheel's last checkpoint
    checkpoints/_pretrained.json                       the pretrained policy offline runs start from
    evals/<digest>.json                                cached evaluation of a checkpoint
    experiments/<experiment_id>/results.json
    fleet/desired.json, fleet/actors/<robot>.json      coordinator state
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


STATE_FILE = "train_state.msgpack"
POLICY_FILE = "policy.msgpack"
PORTABLE_POLICY_FILE = "policy.onnx"  # the same acting function for robots without JAX (lwd_core.algo.portable)
SPEC_FILE = "spec.json"
RAW_PREFIX = "raw"
INGEST_LOG_PREFIX = "ingest/batches"
INGEST_LEASES_KEY = "ingest/leases.json"
LABELS_PREFIX = "labels"
SNAPSHOT_LATEST_KEY = "snapshots/_latest.json"
CHECKPOINT_LATEST_KEY = "checkpoints/_latest.json"
# The pretrained policy every offline run of this store starts from (written when one is pretrained here).
PRETRAINED_KEY = "checkpoints/_pretrained.json"
FLEET_DESIRED_KEY = "fleet/desired.json"
FLEET_ACTORS_PREFIX = "fleet/actors"


def raw_key(robot_id: str, episode_id: str, when: datetime | None = None) -> str:
    day = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
    return f"raw/{day}/{safe_name(robot_id, 'robot id')}/{safe_name(episode_id, 'episode id')}.parquet"


def import_staging_key(dataset: str, name: str) -> str:
    """Where an imported episode waits for ingestion: outside raw/, which the fleet's ingestion drains
    with the fleet's expectations."""
    return f"import/{safe_name(dataset, 'dataset name')}/{safe_name(name, 'episode name')}.parquet"


def quarantine_key(name: str) -> str:
    return f"quarantine/{safe_name(name, 'quarantine name')}.parquet"


def quarantine_reason_key(name: str) -> str:
    return f"quarantine/{safe_name(name, 'quarantine name')}.reason.json"


def ingest_log_key(stamp_us: int, run_name: str) -> str:
    return f"{INGEST_LOG_PREFIX}/{stamp_us}-{safe_name(run_name, 'run name')}.json"


def _checked_kind(kind: BufferKind) -> BufferKind:
    if kind not in ("offline", "online"):
        raise ValueError(f"buffer kind must be offline or online, not {kind!r}")
    return kind


def buffer_prefix(kind: BufferKind) -> str:
    return f"buffer/{_checked_kind(kind)}"


def buffer_key(kind: BufferKind, task_id: str, episode_id: str) -> str:
    return f"{buffer_prefix(kind)}/task={safe_name(task_id, 'task id')}/{safe_name(episode_id, 'episode id')}.parquet"


def dataset_report_key() -> str:
    return f"{buffer_prefix('offline')}/_DATASET.json"


def labels_prefix(kind: BufferKind) -> str:
    return f"{LABELS_PREFIX}/{_checked_kind(kind)}"


def labels_key(kind: BufferKind, stamp_us: int) -> str:
    return f"{labels_prefix(kind)}/{stamp_us}.parquet"


def snapshot_key(snapshot_id: str) -> str:
    return f"snapshots/{safe_name(snapshot_id, 'snapshot id')}.json"


def training_run_prefix(snapshot_id: str, name: str, from_step: int) -> str:
    """Same snapshot, name and starting step -> same prefix, so a retried run resumes there."""
    return f"checkpoints/run-{safe_name(snapshot_id, 'snapshot id')}-{safe_name(name, 'run name')}-from{from_step}"


def checkpoint_key(run_prefix: str, step: int) -> str:
    return f"{run_prefix}/step-{step:09d}"


def replay_segments_prefix(kind: BufferKind, settings_digest: str) -> str:
    """Built transitions of one buffer under one set of n-step settings (lwd_core.algo.transition_cache)."""
    return f"replay-segments/{_checked_kind(kind)}/{safe_name(settings_digest, 'settings digest')}"


def replay_segment_key(kind: BufferKind, settings_digest: str, stamp_us: int) -> str:
    return f"{replay_segments_prefix(kind, settings_digest)}/{stamp_us:020d}.npz"


def eval_cache_key(digest: str) -> str:
    return f"evals/{safe_name(digest, 'evaluation digest')}.json"


def experiment_results_key(experiment_id: str) -> str:
    return f"experiments/{safe_name(experiment_id, 'experiment id')}/results.json"


def actor_status_key(robot_id: str) -> str:
    return f"{FLEET_ACTORS_PREFIX}/{safe_name(robot_id, 'robot id')}.json"


def put_episode(store: ObjectStore, key: str, episode: Episode, extra_metadata: dict[str, str] | None = None) -> str:
    return store.put_atomic(key, episode.to_parquet_bytes(extra_metadata))


def get_episode(store: ObjectStore, key: str, verify_id: bool = True) -> Episode:
    return Episode.from_parquet_bytes(store.get(key), verify_id=verify_id)

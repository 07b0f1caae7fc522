"""Buffer snapshots: an immutable, content-addressed manifest of exactly which episodes, labelled by
which label tables, a training run used. The id is the hash of the sorted episode keys and their label
tables, so the same data with the same labels gives the same snapshot, relabelled data a new one, and a
training run that names a snapshot can always be reproduced. ``snapshots/_latest.json`` points at the
newest one, and only moves by compare-and-swap from where it was before the buffers were listed: a build
that loses a race to another lists again (seeing at least what the winner saw), so the pointer never
moves back to an older listing and never loses a newer one.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from lwd_core.data.labels import read_labels
from lwd_core.data.layout import (
    LABELS_PREFIX,
    SNAPSHOT_LATEST_KEY,
    BufferKind,
    buffer_prefix,
    snapshot_key,
)
from lwd_core.store import ObjectStore, StoreError, now_us


class SnapshotEpisode(BaseModel):
    """One buffered episode of a snapshot; ``steps`` and ``label_table`` come from its labels (0 and
    None while no table labels it: training skips such an episode)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    episode_id: str
    task_id: str
    kind: BufferKind
    steps: int = 0
    label_table: str | None = None


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    snapshot_id: str
    parent: str | None = None
    created_us: int = 0
    episodes: list[SnapshotEpisode]
    # Per buffer kind and task: {"episodes": n, "steps": n}.
    stats: dict[str, dict[str, dict[str, int]]] = {}
    unlabelled: int = 0

    def labelled(self, kind: BufferKind) -> list[SnapshotEpisode]:
        """The episodes of one buffer that training may use, in manifest order."""
        return [entry for entry in self.episodes if entry.kind == kind and entry.label_table is not None]

    def summary(self) -> SnapshotSummary:
        return SnapshotSummary(snapshot_id=self.snapshot_id, parent=self.parent, stats=self.stats,
                               unlabelled=self.unlabelled, episodes=len(self.episodes))


class SnapshotSummary(BaseModel):
    """A snapshot without its episode list: what the snapshot flow returns."""

    model_config = ConfigDict(frozen=True)

    snapshot_id: str
    parent: str | None
    stats: dict[str, dict[str, dict[str, int]]]
    unlabelled: int
    episodes: int


def _listed(store: ObjectStore, kind: BufferKind) -> list[tuple[str, str, str]]:
    """(key, episode id, task id) of every buffered episode of ``kind``."""
    listed = []
    for key in store.list(buffer_prefix(kind), suffix=".parquet"):
        listed.append((key, key.rsplit("/", 1)[1].removesuffix(".parquet"), key.split("/")[2].removeprefix("task=")))
    return listed


# Builds racing this one: each lost race costs a fresh listing (and a new manifest if the buffers grew).
SNAPSHOT_ATTEMPTS = 5


def build_snapshot(store: ObjectStore) -> Snapshot:
    """Write (or reuse) the snapshot of everything in the buffers now and point ``_latest`` at it."""
    for _ in range(SNAPSHOT_ATTEMPTS):
        # Read before listing: a build that moves the pointer after this read may have listed later than
        # this one, so then this write is refused and this build lists again.
        pointer, generation = store.get_json_versioned(SNAPSHOT_LATEST_KEY)
        snapshot = _write_snapshot(store, (pointer or {}).get("snapshot_id"))
        if store.put_json_if(SNAPSHOT_LATEST_KEY, {"snapshot_id": snapshot.snapshot_id}, generation):
            return snapshot
    raise StoreError(f"{SNAPSHOT_LATEST_KEY}: gave up after {SNAPSHOT_ATTEMPTS} racing snapshot builds")


def _write_snapshot(store: ObjectStore, previous: str | None) -> Snapshot:
    """The manifest of everything in the buffers now, written unless it exists (``previous``: the
    snapshot the pointer names, its parent)."""
    listed = {kind: _listed(store, kind) for kind in ("offline", "online")}
    if not any(listed.values()):
        raise ValueError("the buffers are empty: generate the offline dataset first")
    labels = read_labels(store, store.list(LABELS_PREFIX, suffix=".parquet"), columns=["episode_id", "steps"])
    # A relabelled episode (its old table kept) is labelled by its newest table: keys sort by time.
    labelled = {} if labels.is_empty() else {
        row["episode_id"]: (row["table"], int(row["steps"])) for row in labels.sort("table").iter_rows(named=True)}
    episodes = [SnapshotEpisode(key=key, episode_id=episode_id, task_id=task, kind=kind,
                                steps=labelled.get(episode_id, (None, 0))[1],
                                label_table=labelled.get(episode_id, (None, 0))[0])
                for kind, entries in listed.items() for key, episode_id, task in entries]
    digest = hashlib.sha256(json.dumps([[e.key, e.label_table] for e in episodes]).encode()).hexdigest()
    snapshot_id = f"snap-{digest[:16]}"
    key = snapshot_key(snapshot_id)
    if store.exists(key):
        return Snapshot.model_validate(store.get_json(key))
    stats: dict[str, dict[str, dict[str, int]]] = {}
    for entry in episodes:
        row = stats.setdefault(entry.kind, {}).setdefault(entry.task_id, {"episodes": 0, "steps": 0})
        row["episodes"] += 1
        row["steps"] += entry.steps
    snapshot = Snapshot(snapshot_id=snapshot_id, parent=previous, created_us=now_us(), episodes=episodes,
                        stats=stats, unlabelled=sum(1 for e in episodes if e.label_table is None))
    store.put_json(key, snapshot.model_dump(mode="json"))
    return snapshot


def load_snapshot(store: ObjectStore, snapshot_id: str = "") -> Snapshot:
    """A snapshot by id (empty: the latest); a manifest that does not fit the schema is a clear error."""
    if not snapshot_id:
        if not store.exists(SNAPSHOT_LATEST_KEY):
            raise FileNotFoundError("no snapshot yet: run snapshot_buffer first")
        snapshot_id = store.get_json(SNAPSHOT_LATEST_KEY)["snapshot_id"]
    return Snapshot.model_validate(store.get_json(snapshot_key(snapshot_id)))


def stats_table(stats: dict[str, dict[str, dict[str, int]]]) -> list[dict]:
    """A snapshot's ``stats`` as table rows (kind, task, episodes, steps)."""
    return [{"kind": kind, "task": task, **row} for kind, tasks in sorted(stats.items())
            for task, row in sorted(tasks.items())]

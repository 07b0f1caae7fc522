"""Buffer snapshots: an immutable, content-addressed manifest of exactly which episodes a training run
used. The id is the hash of the sorted episode keys, so the same data gives the same snapshot and a
training run that names a snapshot can always be reproduced. ``snapshots/_latest.json`` points at the
newest one, and only moves by compare-and-swap from where it was before the buffers were listed: a build
that loses a race to another lists again (seeing at least what the winner saw), so the pointer never
moves back to an older listing and never loses a newer one.
"""

from __future__ import annotations

import hashlib
import json

from lwd_core.data.labels import read_labels
from lwd_core.data.layout import (
    LABELS_PREFIX,
    SNAPSHOT_LATEST_KEY,
    buffer_prefix,
    snapshot_key,
)
from lwd_core.store import ObjectStore, StoreError, now_us


def _entries(store: ObjectStore, kind: str) -> list[dict]:
    entries = []
    for key in store.list(buffer_prefix(kind), suffix=".parquet"):
        task = key.split("/")[2].removeprefix("task=")
        entries.append({"key": key, "episode_id": key.rsplit("/", 1)[1].removesuffix(".parquet"), "task_id": task,
                        "kind": kind})
    return entries


# Builds racing this one: each lost race costs a fresh listing (and a new manifest if the buffers grew).
SNAPSHOT_ATTEMPTS = 5


def build_snapshot(store: ObjectStore) -> dict:
    """Write (or reuse) the snapshot of everything in the buffers now and point ``_latest`` at it;
    returns its manifest."""
    for _ in range(SNAPSHOT_ATTEMPTS):
        # Read before listing: a build that moves the pointer after this read may have listed later than
        # this one, so then this write is refused and this build lists again.
        pointer, generation = store.get_json_versioned(SNAPSHOT_LATEST_KEY)
        manifest = _write_snapshot(store, (pointer or {}).get("snapshot_id"))
        if store.put_json_if(SNAPSHOT_LATEST_KEY, {"snapshot_id": manifest["snapshot_id"]}, generation):
            return manifest
    raise StoreError(f"{SNAPSHOT_LATEST_KEY}: gave up after {SNAPSHOT_ATTEMPTS} racing snapshot builds")


def _write_snapshot(store: ObjectStore, previous: str | None) -> dict:
    """The manifest of everything in the buffers now, written unless it exists (``previous``: the
    snapshot the pointer names, its parent)."""
    episodes = _entries(store, "offline") + _entries(store, "online")
    if not episodes:
        raise ValueError("the buffers are empty: generate the offline dataset first")
    label_keys = store.list(LABELS_PREFIX, suffix=".parquet")
    digest = hashlib.sha256(json.dumps([e["key"] for e in episodes]).encode()).hexdigest()
    snapshot_id = f"snap-{digest[:16]}"
    key = snapshot_key(snapshot_id)
    if store.exists(key):
        manifest = store.get_json(key)
    else:
        labels = read_labels(store, label_keys)
        steps = dict(zip(labels["episode_id"], labels["steps"], strict=True)) if len(labels) else {}
        stats: dict[str, dict[str, dict[str, int]]] = {}
        for entry in episodes:
            entry["steps"] = int(steps.get(entry["episode_id"], 0))
            row = stats.setdefault(entry["kind"], {}).setdefault(entry["task_id"], {"episodes": 0, "steps": 0})
            row["episodes"] += 1
            row["steps"] += entry["steps"]
        manifest = {"snapshot_id": snapshot_id, "parent": previous, "created_us": now_us(),
                    "episodes": episodes, "labels": label_keys, "stats": stats,
                    "unlabelled": sum(1 for e in episodes if e["episode_id"] not in steps)}
        store.put_json(key, manifest)
    return manifest


def load_snapshot(store: ObjectStore, snapshot_id: str = "") -> dict:
    if not snapshot_id:
        if not store.exists(SNAPSHOT_LATEST_KEY):
            raise FileNotFoundError("no snapshot yet: run snapshot_buffer first")
        snapshot_id = store.get_json(SNAPSHOT_LATEST_KEY)["snapshot_id"]
    return store.get_json(snapshot_key(snapshot_id))


def stats_table(manifest: dict) -> list[dict]:
    return [{"kind": kind, "task": task, **row} for kind, tasks in sorted(manifest["stats"].items())
            for task, row in sorted(tasks.items())]

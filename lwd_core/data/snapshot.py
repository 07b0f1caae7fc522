"""Buffer snapshots: an immutable, content-addressed manifest of exactly which episodes a training run
used. The id is the hash of the sorted episode keys, so the same data gives the same snapshot and a
training run that names a snapshot can always be reproduced. ``snapshots/_latest.json`` points at the
newest one.
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
from lwd_core.store import ObjectStore, now_us


def _entries(store: ObjectStore, kind: str) -> list[dict]:
    entries = []
    for key in store.list(buffer_prefix(kind), suffix=".parquet"):
        task = key.split("/")[2].removeprefix("task=")
        entries.append({"key": key, "episode_id": key.rsplit("/", 1)[1].removesuffix(".parquet"), "task_id": task,
                        "kind": kind})
    return entries


def build_snapshot(store: ObjectStore) -> dict:
    """Write (or reuse) the snapshot of everything in the buffers now; returns its manifest."""
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
        previous = store.get_json(SNAPSHOT_LATEST_KEY)["snapshot_id"] if store.exists(SNAPSHOT_LATEST_KEY) else None
        manifest = {"snapshot_id": snapshot_id, "parent": previous, "created_us": now_us(),
                    "episodes": episodes, "labels": label_keys, "stats": stats,
                    "unlabelled": sum(1 for e in episodes if e["episode_id"] not in steps)}
        store.put_json(key, manifest)
    store.put_json(SNAPSHOT_LATEST_KEY, {"snapshot_id": snapshot_id})
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

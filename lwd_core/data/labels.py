"""Reward labelling and return bookkeeping for buffered episodes.

The sparse reward is re-derived from the simulator's success flag (ingest already rejects episodes
whose reward column disagrees). Labels are written as one small Parquet table per labelling batch,
``labels/<kind>/<time>.parquet``, one row per episode; snapshots name these tables.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from lwd_core.data.episode import Episode
from lwd_core.data.layout import BufferKind, buffer_prefix, labels_key, labels_prefix
from lwd_core.data.nstep import NStepSchedule, discounted_return
from lwd_core.store import ObjectStore, now_us
from lwd_core.suite import get_task, sparse_rewards


def label_episode(episode: Episode, gamma: float, schedule: NStepSchedule) -> dict:
    rewards = sparse_rewards(episode.successes)
    success_steps = np.flatnonzero(episode.successes)
    horizon = get_task(episode.task_id).horizon
    return {
        "episode_id": episode.episode_id,
        "task_id": episode.task_id,
        "robot_id": episode.robot_id,
        "policy_version": episode.policy_version,
        "source": episode.source,
        "outcome": episode.outcome,
        "steps": episode.num_steps,
        "first_success_step": int(success_steps[0]) if len(success_steps) else -1,
        "intervention_steps": int(episode.interventions.sum()),
        "return": float(rewards.sum()),
        "discounted_return": discounted_return(rewards, gamma),
        "n_offline": schedule.n_for(horizon, "offline"),
        "n_online": schedule.n_for(horizon, "online"),
        "labelled_us": now_us(),
    }


def labelled_ids(store: ObjectStore, kind: BufferKind) -> set[str]:
    ids: set[str] = set()
    for key in store.list(labels_prefix(kind), suffix=".parquet"):
        ids.update(pl.read_parquet(io.BytesIO(store.get(key)), columns=["episode_id"])["episode_id"].to_list())
    return ids


def unlabelled_keys(store: ObjectStore, kind: BufferKind) -> list[str]:
    done = labelled_ids(store, kind)
    keys = store.list(buffer_prefix(kind), suffix=".parquet")
    return [k for k in keys if k.rsplit("/", 1)[1].removesuffix(".parquet") not in done]


def labels_table(kind: BufferKind, rows: list[dict]) -> tuple[str, bytes]:
    """A labels table's key and bytes, for a writer that commits it with other objects."""
    buffer = io.BytesIO()
    pl.DataFrame(rows).write_parquet(buffer)
    return labels_key(kind, now_us()), buffer.getvalue()


def write_labels(store: ObjectStore, kind: BufferKind, rows: list[dict]) -> str | None:
    if not rows:
        return None
    key, data = labels_table(kind, rows)
    store.put_atomic(key, data)
    return key


def read_labels(store: ObjectStore, keys: list[str]) -> pl.DataFrame:
    frames = [pl.read_parquet(io.BytesIO(store.get(k))) for k in keys]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

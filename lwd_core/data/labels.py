"""Reward labelling: the rewards, success and step counts training sees.

Each step's reward comes from the suite's reward rule (:func:`lwd_core.suite.sparse_rewards`) applied
to the episode's success flags, never from the reward column a robot wrote. Labels are written as one
small Parquet table per labelling batch, ``labels/<kind>/<time>.parquet``, one row per episode (its
per-step ``rewards`` a list column); a snapshot names the table that labels each of its episodes, and
training reads rewards from there (:mod:`lwd_core.algo.transition_cache`).
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from lwd_core.data.episode import Episode
from lwd_core.data.layout import (
    BufferKind,
    buffer_prefix,
    get_episode,
    labels_key,
    labels_prefix,
)
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
        "rewards": rewards.tolist(),
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
    pl.DataFrame(rows, schema_overrides={"rewards": pl.List(pl.Float32)}).write_parquet(buffer)
    return labels_key(kind, now_us()), buffer.getvalue()


def write_labels(store: ObjectStore, kind: BufferKind, rows: list[dict]) -> str | None:
    if not rows:
        return None
    key, data = labels_table(kind, rows)
    store.put_atomic(key, data)
    return key


class LabelReport(BaseModel):
    """What one labelling pass wrote for a buffer: episodes labelled and their table (None: nothing new)."""

    model_config = ConfigDict(frozen=True)

    kind: BufferKind
    labelled: int
    table: str | None
    successes: int
    intervention_steps: int


class LabellingResult(BaseModel):
    """The label-rewards flow's result: one report per buffer."""

    offline: LabelReport
    online: LabelReport


def label_buffer(store: ObjectStore, kind: BufferKind, gamma: float, schedule: NStepSchedule) -> LabelReport:
    """Label every buffered episode of ``kind`` that no table labels yet, as one new table."""
    rows = [label_episode(get_episode(store, key), gamma, schedule) for key in unlabelled_keys(store, kind)]
    return LabelReport(kind=kind, labelled=len(rows), table=write_labels(store, kind, rows),
                       successes=sum(row["outcome"] == "success" for row in rows),
                       intervention_steps=sum(row["intervention_steps"] for row in rows))


def read_labels(store: ObjectStore, keys: list[str], columns: list[str] | None = None) -> pl.DataFrame:
    """The rows of these label tables, each with the ``table`` it came from."""
    frames = [pl.read_parquet(io.BytesIO(store.get(k)), columns=columns).with_columns(table=pl.lit(k))
              for k in keys]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def label_rewards(store: ObjectStore, table: str, episode_ids: set[str]) -> dict[str, np.ndarray]:
    """Per-step rewards of these episodes as one label table holds them."""
    frame = read_labels(store, [table], columns=["episode_id", "rewards"])
    return {episode_id: np.asarray(rewards, np.float32)
            for episode_id, rewards in zip(frame["episode_id"], frame["rewards"], strict=True)
            if episode_id in episode_ids}

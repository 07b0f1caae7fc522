"""Episode schema: one Parquet file per episode, one row per environment step.

Why per environment step rather than per policy decision: the training action chunk (h) and n-step
horizon are learner settings, so the learner cuts chunks as windows of consecutive executed actions;
``chunk_pos`` keeps where each action sat in the chunk the actor emitted, so acting-time chunks are
recoverable too. Episode-level fields repeat on every row (dictionary-encoded by Parquet, so nearly free)
which lets a buffer concatenate episodes and filter with plain column predicates.

``episode_id`` is the sha256 of the episode's canonical content (metadata + arrays), so the same episode
uploaded twice has the same id (exactly-once ingestion) and a corrupted or altered file no longer
matches its id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

SCHEMA_VERSION = "1"
SOURCES = ("demo", "play", "rollout")
OUTCOMES = ("success", "failure")
Source = Literal["demo", "play", "rollout"]
Outcome = Literal["success", "failure"]

EPISODE_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String(),
    "robot_id": pl.String(),
    "task_id": pl.String(),
    "instruction": pl.String(),
    "policy_version": pl.String(),
    "source": pl.String(),
    "outcome": pl.String(),
    "step": pl.Int32(),
    "obs": pl.List(pl.Float32()),
    "action": pl.List(pl.Float32()),
    "chunk_pos": pl.Int16(),
    "reward": pl.Float32(),
    "success": pl.Boolean(),
    "intervention": pl.Boolean(),
    "terminal": pl.Boolean(),
    "done": pl.Boolean(),
    "timestamp": pl.Datetime("us", "UTC"),
    "next_obs": pl.List(pl.Float32()),
}
METADATA_KEYS = ("robot_id", "task_id", "instruction", "policy_version", "source", "outcome")
# Footer bounds checked before anything is decoded (:func:`check_parquet_bounds`). An honest row is
# under 1 kB uncompressed (two observations and an action of float32, flags, short strings stored
# once per file in a dictionary page); these allow 4x that, plus a fixed allowance per column.
MAX_ROW_BYTES = 4096
COLUMN_ALLOWANCE_BYTES = 64 * 1024


class EpisodeFormatError(ValueError):
    """The bytes or frame are not an episode of this schema; the message says why."""


@dataclass(frozen=True, eq=False)
class Episode:
    """A finished episode. Arrays are indexed by environment step t = 0..T-1.

    ``observations[t]`` is seen before ``actions[t]``; ``next_observations[t]`` after it (kept per step
    so the final observation, needed to bootstrap a truncated episode, is never lost). ``terminals[t]``
    means the environment ended the episode (no bootstrap); the last step of a time-limited episode has
    ``done`` but not ``terminal``. ``timestamps_us`` are UTC microseconds when each step finished.
    """

    robot_id: str
    task_id: str
    instruction: str
    policy_version: str
    source: Source
    outcome: Outcome
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray
    interventions: np.ndarray
    terminals: np.ndarray
    chunk_pos: np.ndarray
    timestamps_us: np.ndarray
    next_observations: np.ndarray
    episode_id: str = ""

    def __post_init__(self) -> None:
        canon = {
            "observations": np.float32,
            "actions": np.float32,
            "rewards": np.float32,
            "successes": np.bool_,
            "interventions": np.bool_,
            "terminals": np.bool_,
            "chunk_pos": np.int16,
            "timestamps_us": np.int64,
            "next_observations": np.float32,
        }
        for name, dtype in canon.items():
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        self._check_shapes()
        if not self.episode_id:
            object.__setattr__(self, "episode_id", self.content_hash())

    def _check_shapes(self) -> None:
        steps = self.num_steps
        if steps == 0:
            raise EpisodeFormatError("episode has no steps")
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise EpisodeFormatError("observations and actions must be 2-D (steps, dim)")
        for name in ("actions", "rewards", "successes", "interventions", "terminals", "chunk_pos",
                     "timestamps_us", "next_observations"):
            if len(getattr(self, name)) != steps:
                raise EpisodeFormatError(f"{name} has {len(getattr(self, name))} steps, expected {steps}")
        if self.next_observations.shape != self.observations.shape:
            raise EpisodeFormatError("next_observations must have the shape of observations")
        if self.source not in SOURCES:
            raise EpisodeFormatError(f"unknown source {self.source!r}; expected one of {SOURCES}")
        if self.outcome not in OUTCOMES:
            raise EpisodeFormatError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")

    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def metadata(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in METADATA_KEYS}

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"lwd-episode-v{SCHEMA_VERSION}".encode())
        digest.update(json.dumps(self.metadata(), sort_keys=True).encode())
        for name in ("observations", "actions", "rewards", "successes", "interventions", "terminals",
                     "chunk_pos", "timestamps_us", "next_observations"):
            array = getattr(self, name)
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def replace(self, **changes: Any) -> Episode:
        """A copy with changes; the id is recomputed from the new content."""
        return dataclasses.replace(self, episode_id="", **changes)

    # -- tabular form ------------------------------------------------------------------------------
    def to_frame(self) -> pl.DataFrame:
        steps = self.num_steps
        done = np.zeros(steps, dtype=bool)
        done[-1] = True
        columns: dict[str, Any] = {
            "episode_id": [self.episode_id] * steps,
            **{key: [value] * steps for key, value in self.metadata().items()},
            "step": np.arange(steps, dtype=np.int32),
            "obs": list(self.observations),
            "action": list(self.actions),
            "chunk_pos": self.chunk_pos,
            "reward": self.rewards,
            "success": self.successes,
            "intervention": self.interventions,
            "terminal": self.terminals,
            "done": done,
            "timestamp": self.timestamps_us,
            "next_obs": list(self.next_observations),
        }
        frame = pl.DataFrame(
            {name: columns[name] for name in EPISODE_SCHEMA},
            schema={name: (pl.Int64() if name == "timestamp" else dtype) for name, dtype in EPISODE_SCHEMA.items()},
        )
        return frame.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, verify_id: bool = True) -> Episode:
        check_schema(frame)
        if frame.height == 0:
            raise EpisodeFormatError("episode has no rows")
        meta: dict[str, str] = {}
        for key in ("episode_id", *METADATA_KEYS):
            values = frame[key].unique()
            if len(values) != 1 or values[0] is None:
                raise EpisodeFormatError(f"column {key!r} must hold one value for the whole episode")
            meta[key] = values[0]
        frame = frame.sort("step")
        if not np.array_equal(frame["step"].to_numpy(), np.arange(frame.height)):
            raise EpisodeFormatError("steps must be 0..T-1 with no gaps or repeats")
        done = frame["done"].to_numpy()
        if not done[-1] or done[:-1].any():
            raise EpisodeFormatError("'done' must be set on the last step only")
        for name in ("reward", "success", "intervention", "terminal", "chunk_pos", "timestamp"):
            if frame[name].null_count():
                raise EpisodeFormatError(f"column {name!r} has nulls")
        episode = cls(
            **{key: meta[key] for key in METADATA_KEYS},
            observations=_stack(frame["obs"], "obs"),
            actions=_stack(frame["action"], "action"),
            rewards=frame["reward"].to_numpy(),
            successes=frame["success"].to_numpy(),
            interventions=frame["intervention"].to_numpy(),
            terminals=frame["terminal"].to_numpy(),
            chunk_pos=frame["chunk_pos"].to_numpy(),
            timestamps_us=frame["timestamp"].dt.epoch("us").to_numpy(),
            next_observations=_stack(frame["next_obs"], "next_obs"),
            episode_id=meta["episode_id"],
        )
        if verify_id and episode.content_hash() != episode.episode_id:
            raise EpisodeFormatError(
                f"episode_id {episode.episode_id[:16]}... does not match its content (altered or corrupted)"
            )
        return episode

    # -- Parquet bytes -----------------------------------------------------------------------------
    def to_parquet_bytes(self, extra_metadata: dict[str, str] | None = None) -> bytes:
        buffer = io.BytesIO()
        metadata = {"lwd.schema_version": SCHEMA_VERSION, "lwd.episode_id": self.episode_id}
        metadata.update(extra_metadata or {})
        self.to_frame().write_parquet(buffer, compression="zstd", metadata=metadata)
        return buffer.getvalue()

    @classmethod
    def from_parquet_bytes(cls, data: bytes, verify_id: bool = True) -> Episode:
        return cls.from_frame(read_episode_frame(data), verify_id=verify_id)


def check_schema(frame: pl.DataFrame) -> None:
    missing = [name for name in EPISODE_SCHEMA if name not in frame.columns]
    if missing:
        raise EpisodeFormatError(f"missing columns: {missing}")
    extra = [name for name in frame.columns if name not in EPISODE_SCHEMA]
    if extra:
        raise EpisodeFormatError(f"unexpected columns: {extra}")
    wrong = {
        name: f"{frame.schema[name]} (expected {dtype})"
        for name, dtype in EPISODE_SCHEMA.items()
        if frame.schema[name] != dtype
    }
    if wrong:
        raise EpisodeFormatError(f"wrong column types: {wrong}")


def read_episode_frame(data: bytes) -> pl.DataFrame:
    """Parse Parquet bytes into a frame, turning any reader failure into an EpisodeFormatError."""
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises several types for truncated/garbage input
        raise EpisodeFormatError(f"unreadable Parquet: {type(exc).__name__}: {exc}") from exc


def check_parquet_bounds(data: bytes, max_rows: int) -> None:
    """Reject from the footer alone, before any data page is decoded: more rows than an episode can
    have, more columns than the schema, or a column (a multi-megabyte instruction string, say) whose
    uncompressed size exceeds what that many rows can honestly take. A file that passes decodes into at
    most ``max_rows * MAX_ROW_BYTES`` plus the column allowances."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
    except Exception as exc:
        raise EpisodeFormatError(f"unreadable Parquet footer: {type(exc).__name__}: {exc}") from exc
    if meta.num_rows > max_rows:
        raise EpisodeFormatError(f"too many rows: {meta.num_rows} > {max_rows} (from the footer; nothing decoded)")
    if meta.num_columns > len(EPISODE_SCHEMA):
        raise EpisodeFormatError(f"too many columns: {meta.num_columns} > {len(EPISODE_SCHEMA)}")
    sizes: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            sizes[column.path_in_schema] = sizes.get(column.path_in_schema, 0) + column.total_uncompressed_size
    limit = max(meta.num_rows, 1) * MAX_ROW_BYTES + COLUMN_ALLOWANCE_BYTES
    for name, size in sizes.items():
        if size > limit:
            raise EpisodeFormatError(f"column {name!r} is {size} bytes uncompressed, over {limit} for "
                                     f"{meta.num_rows} rows")


def read_parquet_metadata(data: bytes) -> dict[str, str]:
    try:
        return pl.read_parquet_metadata(io.BytesIO(data))
    except Exception as exc:
        raise EpisodeFormatError(f"unreadable Parquet footer: {type(exc).__name__}: {exc}") from exc


def _stack(series: pl.Series, name: str) -> np.ndarray:
    if series.null_count():
        raise EpisodeFormatError(f"column {name!r} has nulls")
    lengths = series.list.len().unique()
    if len(lengths) != 1:
        raise EpisodeFormatError(f"column {name!r} has rows of different lengths {sorted(lengths.to_list())}")
    width = int(lengths[0])
    if width == 0:
        raise EpisodeFormatError(f"column {name!r} has empty rows")
    return series.explode().to_numpy().astype(np.float32).reshape(len(series), width)

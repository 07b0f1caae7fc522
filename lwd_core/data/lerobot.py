"""LeRobotDataset v3 in and out: a lab's demonstrations become offline episodes, and a snapshot's
episodes become a dataset LeRobot's own tools open.

The v3 layout (as lerobot 0.4 writes it; tests/fixtures/lerobot was made by that library):

    meta/info.json                              codebase_version "v3.0", fps, features, data_path
    meta/tasks.parquet                          one row per task text, its task_index
    meta/episodes/chunk-000/file-000.parquet    per episode: index, tasks, length, frame range, file
    meta/stats.json                             per feature: min, max, mean, std, count
    data/chunk-000/file-000.parquet             one row per frame: the features, timestamp,
                                                frame_index, episode_index, index, task_index

Importing only reads and converts: each LeRobot episode becomes an :class:`Episode` (or the reason it
cannot), and ingestion (:func:`lwd_core.data.ingest.ingest_batch`) validates, quarantines and buffers
it like any upload. Nothing here trusts the dataset's reward column: rewards follow from success by the
suite's rule.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lwd_core.config import LeRobotConfig
from lwd_core.data.episode import Episode
from lwd_core.data.ingest import IngestReport, Outcome, ingest_batch, quarantine
from lwd_core.data.layout import get_episode, import_staging_key
from lwd_core.data.snapshot import Snapshot
from lwd_core.data.validation import Expectations
from lwd_core.store import ObjectStore
from lwd_core.suite import (
    CONTROL_PERIOD_S,
    KNOWN_TASKS,
    OBS_DIM,
    SCENE_OBS_DIMS,
    TASKS_BY_ID,
    TELEOP_POLICY_VERSION,
    TaskSpec,
    pad_observation,
    sparse_rewards,
)

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
# Imported steps get timestamps from this fixed epoch plus the dataset's own (seconds from the episode's
# start), episodes ten minutes apart (longer than any suite episode): the same dataset imported twice
# makes the same episode ids, so a second import lands nothing twice, and a million episodes stay in
# the past.
IMPORT_EPOCH_US = 946_684_800 * 10**6  # 2000-01-01 UTC
_EPISODE_SPACING_US = 600 * 10**6


@dataclass(frozen=True)
class LeRobotEpisode:
    """One episode as the dataset holds it: its index, task text and frames (one row each)."""

    index: int
    task: str
    frames: pl.DataFrame

    def parquet_bytes(self) -> bytes:
        """The frames as Parquet: what quarantine keeps of an episode that cannot be imported."""
        sink = io.BytesIO()
        self.frames.write_parquet(sink)
        return sink.getvalue()


class LeRobotFormatError(ValueError):
    """The dataset as a whole cannot be read (not v3, a file missing): nothing is imported."""


def read_dataset(root: Path) -> tuple[dict[str, Any], Iterator[LeRobotEpisode]]:
    """The dataset's info.json and its episodes, read one data file at a time."""
    root = Path(root)
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, ValueError) as exc:
        raise LeRobotFormatError(f"{root}: no readable meta/info.json ({exc})") from exc
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise LeRobotFormatError(f"{root}: LeRobotDataset {info.get('codebase_version')!r}; import reads "
                                 f"{CODEBASE_VERSION} (convert older datasets with lerobot's own converter)")
    tasks = _tasks(root)
    episodes = pl.concat([pl.read_parquet(path) for path in sorted((root / "meta" / "episodes").rglob("*.parquet"))])

    def each() -> Iterator[LeRobotEpisode]:
        for (chunk, file), rows in episodes.sort("episode_index").group_by(
                ["data/chunk_index", "data/file_index"], maintain_order=True):
            data = pl.read_parquet(root / info["data_path"].format(chunk_index=chunk, file_index=file))
            for row in rows.iter_rows(named=True):
                frames = data.filter(pl.col("episode_index") == row["episode_index"]).sort("frame_index")
                task_index = frames["task_index"][0] if len(frames) else -1
                yield LeRobotEpisode(row["episode_index"], tasks.get(task_index, (row["tasks"] or [""])[0]), frames)

    return info, each()


def _tasks(root: Path) -> dict[int, str]:
    """task_index -> task text. LeRobot keeps the text as the pandas index of meta/tasks.parquet."""
    table = pq.read_table(root / "meta" / "tasks.parquet")
    text = next(name for name in table.column_names if name != "task_index")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist(), strict=True))


def suite_task(task_text: str, mapping: LeRobotConfig) -> TaskSpec:
    if task_text in mapping.tasks:
        task_id = mapping.tasks[task_text]
        if task_id not in TASKS_BY_ID:
            raise ValueError(f"lerobot.tasks maps {task_text!r} to {task_id!r}, which is not a suite task")
        return TASKS_BY_ID[task_id]
    for task in KNOWN_TASKS:
        if task.instruction == task_text:
            return task
    raise ValueError(f"task {task_text!r} is no suite task's instruction; map it in lerobot.tasks")


def _column(frames: pl.DataFrame, name: str, what: str) -> np.ndarray:
    if name not in frames.columns:
        raise ValueError(f"no feature {name!r} for the {what} (set lerobot.{what} to the dataset's name for it)")
    values = frames[name].to_numpy()
    if values.dtype == object:  # a list column per frame
        values = np.stack(values)
    return values.reshape(len(frames), -1) if values.ndim > 1 else values


def to_episode(lerobot: LeRobotEpisode, mapping: LeRobotConfig, fps: float) -> Episode:
    """The suite's episode for a LeRobot one, or ValueError saying why it cannot be one."""
    task, frames = suite_task(lerobot.task, mapping), lerobot.frames
    if len(frames) == 0:
        raise ValueError("the episode has no frames")
    missing = [f"{name!r} for the {what} (set lerobot.{what})" for what, name in
               (("state", mapping.state), ("action", mapping.action), ("success", mapping.success))
               if name not in frames.columns]
    if missing:
        raise ValueError(f"no feature {'; no feature '.join(missing)}")
    # The suite's episodes end at the goal: frames recorded after the first success are not part of it.
    successes = _column(frames, mapping.success, "success").reshape(len(frames)).astype(bool)
    reached = np.flatnonzero(successes)
    if len(reached):
        frames, successes = frames.head(int(reached[0]) + 1), successes[: int(reached[0]) + 1]
    state = _column(frames, mapping.state, "state").astype(np.float32)
    scene_dims = SCENE_OBS_DIMS[task.scene]
    if state.shape[1] == scene_dims:
        observations = np.stack([pad_observation(row, task) for row in state])
    elif state.shape[1] == OBS_DIM:
        observations = state
    else:
        raise ValueError(f"{mapping.state} has {state.shape[1]} dims; {task.task_id}'s scene state has {scene_dims} "
                         f"(or the suite's padded {OBS_DIM})")
    # The next observation is the following frame's; the last frame's is its own (the dataset ends there).
    next_observations = np.concatenate([observations[1:], observations[-1:]])
    seconds = (frames["timestamp"].to_numpy().astype(np.float64) if "timestamp" in frames.columns
               else np.arange(len(frames)) / fps)
    return Episode(
        robot_id=mapping.uploader, task_id=task.task_id, instruction=task.instruction,
        policy_version=TELEOP_POLICY_VERSION, source=mapping.source,
        outcome="success" if successes[-1] else "failure", observations=observations,
        actions=_column(frames, mapping.action, "action").astype(np.float32),
        rewards=sparse_rewards(successes), successes=successes, interventions=np.zeros(len(frames), bool),
        terminals=successes.copy(), chunk_pos=np.zeros(len(frames), np.int16),
        timestamps_us=IMPORT_EPOCH_US + lerobot.index * _EPISODE_SPACING_US + np.round(seconds * 1e6).astype(np.int64),
        next_observations=next_observations)


def import_expectations(mapping: LeRobotConfig) -> Expectations:
    """What an imported episode must be: a suite task's, from the import's identity, demonstrations or
    play, of any age (a dataset records the past)."""
    return replace(Expectations.for_suite(KNOWN_TASKS, robots=(), policy_versions=(), teleoperators=(mapping.uploader,)),
                   max_age_s=float("inf"))


def import_dataset(store: ObjectStore, root: Path, mapping: LeRobotConfig) -> IngestReport:
    """Every episode of the dataset through ingestion into the offline buffer: one that cannot be
    converted, or fails validation, is quarantined with its reason; the others land exactly once (a
    second import of the same dataset finds them already there)."""
    info, episodes = read_dataset(root)
    fps = float(info.get("fps") or 20)
    name = Path(root).name
    report, staged = IngestReport(), []
    for lerobot in episodes:
        key = import_staging_key(name, f"episode-{lerobot.index:06d}")
        try:
            episode = to_episode(lerobot, mapping, fps)
        except (ValueError, KeyError, TypeError) as exc:  # this episode only: the rest go on
            reasons = [f"not importable: {exc}"]
            report.outcomes.append(Outcome(key, "quarantined", reasons=reasons,
                                           destination=quarantine(store, key, lerobot.parquet_bytes(), reasons, None)))
            continue
        store.put_atomic(key, episode.to_parquet_bytes())
        staged.append(key)
    if staged:
        report.outcomes += ingest_batch(store, staged, import_expectations(mapping), kind="offline").outcomes
    return report


def export_snapshot(store: ObjectStore, snapshot: Snapshot, root: Path) -> dict[str, int]:
    """Every episode of the snapshot (offline and online buffers) as a LeRobotDataset v3 under ``root``."""
    episodes = (get_episode(store, entry.key) for entry in snapshot.episodes)
    return write_dataset(episodes, root, fps=round(1 / CONTROL_PERIOD_S))


def write_dataset(episodes: Iterable[Episode], root: Path, fps: float, robot_type: str = "lwd-sim") -> dict[str, int]:
    """A LeRobotDataset v3 of these episodes under ``root`` (one data file). Features: the suite's
    observation as ``observation.state``, ``action``, ``next.reward`` (the suite's rule),
    ``next.done``, ``next.success`` and ``intervention``; the episodes metadata keeps each episode's id,
    robot, policy version, source and outcome under ``lwd/``."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    rows, episode_rows, tasks = [], [], {}
    start = 0
    for index, episode in enumerate(episodes):
        task_index = tasks.setdefault(episode.instruction, len(tasks))
        steps = episode.num_steps
        rows.append(pl.DataFrame({
            "observation.state": episode.observations.astype(np.float32),
            "action": episode.actions.astype(np.float32),
            "next.reward": episode.rewards.astype(np.float32),
            "next.done": episode.terminals.astype(bool),
            "next.success": episode.successes.astype(bool),
            "intervention": episode.interventions.astype(bool),
            "timestamp": ((episode.timestamps_us - episode.timestamps_us[0]) / 1e6).astype(np.float32),
            "frame_index": np.arange(steps, dtype=np.int64),
            "episode_index": np.full(steps, index, np.int64),
            "index": np.arange(start, start + steps, dtype=np.int64),
            "task_index": np.full(steps, task_index, np.int64),
        }))
        episode_rows.append({
            "episode_index": index, "tasks": [episode.instruction], "length": steps,
            "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
            "dataset_to_index": start + steps, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
            "lwd/episode_id": episode.episode_id, "lwd/robot_id": episode.robot_id,
            "lwd/policy_version": episode.policy_version, "lwd/source": episode.source, "lwd/outcome": episode.outcome,
        })
        start += steps
    if not rows:
        raise ValueError("no episodes to export")
    data = pl.concat(rows)
    features = {name: _feature(data[name]) for name in data.columns}
    for directory in ("data/chunk-000", "meta/episodes/chunk-000"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    pq.write_table(_fixed_size_lists(data.to_arrow()), root / DATA_PATH.format(chunk_index=0, file_index=0))
    pl.DataFrame(episode_rows).write_parquet(root / EPISODES_PATH)
    _write_tasks(root / "meta" / "tasks.parquet", sorted(tasks, key=tasks.get))
    (root / "meta" / "stats.json").write_text(json.dumps(_stats(data), indent=2))
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episode_rows),
            "total_frames": len(data), "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(episode_rows)}"},
            "data_path": DATA_PATH, "video_path": None, "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return {"episodes": len(episode_rows), "frames": len(data), "tasks": len(tasks)}


def _write_tasks(path: Path, texts: list[str]) -> None:
    """meta/tasks.parquet as LeRobot reads it: a pandas frame whose index is the task text."""
    pandas = {"index_columns": ["__index_level_0__"],
              "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str",
                                  "metadata": {"encoding": "UTF-8"}}],
              "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                           "numpy_type": "int64", "metadata": None},
                          {"name": None, "field_name": "__index_level_0__", "pandas_type": "object",
                           "numpy_type": "str", "metadata": None}],
              "attributes": {}}
    table = pa.table({"task_index": pa.array(range(len(texts)), pa.int64()),
                      "__index_level_0__": pa.array(texts, pa.large_string())})
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()}), path)


def _feature(column: pl.Series) -> dict[str, Any]:
    if isinstance(column.dtype, pl.Array | pl.List):
        width = len(column[0])
        return {"dtype": "float32", "shape": [width], "names": None}
    dtype = {pl.Boolean: "bool", pl.Float32: "float32", pl.Int64: "int64"}[column.dtype.base_type()]
    return {"dtype": dtype, "shape": [1], "names": None}


def _fixed_size_lists(table: pa.Table) -> pa.Table:
    """Vectors as fixed-size lists, as LeRobot writes them."""
    columns = []
    for column in table.columns:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
            width = len(column[0].as_py())
            values = pa.array(np.stack(column.to_pylist()).astype(np.float32).ravel())
            column = pa.FixedSizeListArray.from_arrays(values, width)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _stats(data: pl.DataFrame) -> dict[str, dict[str, list[float]]]:
    stats = {}
    for name in data.columns:
        values = data[name].to_numpy()
        values = (np.stack(values) if values.dtype == object else values.reshape(len(data), -1)).astype(np.float64)
        stats[name] = {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
                       "std": values.std(0).tolist(), "count": [len(values)]}
    return stats

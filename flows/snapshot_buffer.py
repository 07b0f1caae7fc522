"""Snapshot the offline + online buffers into an immutable manifest a training run names."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from lwd_core.config import LWDConfig, load_config
from lwd_core.data.snapshot import SnapshotSummary, stats_table
from tasks.pipeline import take_snapshot


@flow(name="snapshot-buffer")
def snapshot_buffer(config: LWDConfig | None = None) -> SnapshotSummary:
    config = config or load_config()
    snapshot = take_snapshot(config)
    create_table_artifact(key="buffer-snapshot", table=stats_table(snapshot.stats),
                          description=f"Snapshot {snapshot.snapshot_id} (parent {snapshot.parent}): "
                                      f"{snapshot.episodes} episodes")
    get_run_logger().info("snapshot %s: %d episodes", snapshot.snapshot_id, snapshot.episodes)
    return snapshot

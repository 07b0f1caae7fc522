"""LeRobotDataset v3 interop: `lwd import lerobot DIR` brings a lab's dataset in as offline data (through
ingestion's validation and quarantine), `lwd export lerobot SNAPSHOT DIR` hands a snapshot's episodes to
LeRobot's tools."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lwd_core.config import LWDConfig, load_config
from tasks.lerobot import ExportResult, ImportResult, export_snapshot, import_dataset


@flow(name="import-lerobot")
def import_lerobot(path: str, config: LWDConfig | None = None) -> ImportResult:
    """``path``: the dataset's root (meta/info.json, data/, ...); feature names from config ``lerobot``."""
    result = import_dataset(config or load_config(), path)
    log = get_run_logger()
    log.info("imported %s: %d accepted, %d already there, %d quarantined", path, result.accepted,
             result.duplicates, result.quarantined)
    for key, reasons in result.quarantine_reasons.items():
        log.warning("quarantined %s: %s", key, "; ".join(reasons))
    return result


@flow(name="export-lerobot")
def export_lerobot(snapshot_id: str, path: str, config: LWDConfig | None = None) -> ExportResult:
    """``snapshot_id`` empty: the latest snapshot; ``path``: a new or empty directory."""
    result = export_snapshot(config or load_config(), snapshot_id, path)
    get_run_logger().info("exported snapshot %s to %s: %d episodes, %d frames", result.snapshot_id, path,
                          result.episodes, result.frames)
    return result

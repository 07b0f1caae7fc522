"""Prefect tasks over lwd_core.data.lerobot: a LeRobotDataset v3 imported as offline data, a snapshot
exported as one."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from lwd_core.config import LWDConfig
from lwd_core.data import lerobot
from lwd_core.data.snapshot import load_snapshot
from lwd_core.store import open_store
from tasks.retries import RETRY_DELAYS_S, unless_refused


class ImportResult(BaseModel):
    dataset: str
    accepted: int
    duplicates: int  # already in the buffer (a dataset imported again lands nothing twice)
    quarantined: int
    quarantine_reasons: dict[str, list[str]]  # staging key -> why


class ExportResult(BaseModel):
    snapshot_id: str
    path: str
    episodes: int
    frames: int
    tasks: int


# Retried as a whole (the store briefly unreachable): episodes already buffered count as duplicates the
# second time. A dataset that cannot be read is not retried.
@task(retries=2, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=unless_refused)
def import_dataset(config: LWDConfig, path: str) -> ImportResult:
    report = lerobot.import_dataset(open_store(config), Path(path), config.lerobot)
    return ImportResult(dataset=path, accepted=report.count("accepted"), duplicates=report.count("duplicate"),
                        quarantined=report.count("quarantined"),
                        quarantine_reasons={o.raw_key: o.reasons for o in report.outcomes if o.status == "quarantined"})


@task
def export_snapshot(config: LWDConfig, snapshot_id: str, path: str) -> ExportResult:
    store = open_store(config)
    snapshot = load_snapshot(store, snapshot_id)
    written = lerobot.export_snapshot(store, snapshot, Path(path))
    return ExportResult(snapshot_id=snapshot.snapshot_id, path=path, **written)

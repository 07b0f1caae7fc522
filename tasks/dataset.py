"""Prefect tasks for the generated offline dataset."""

from __future__ import annotations

from prefect import task

from lwd_core.config import LWDConfig
from lwd_core.sim.dataset import (
    DatasetReport,
    OfflineMix,
    generate_allocation,
    write_dataset_report,
)
from lwd_core.store import open_store
from lwd_core.suite import get_task, select_tasks


def offline_mix(config: LWDConfig) -> OfflineMix:
    d = config.dataset
    return OfflineMix(demo=d.demo, failed_rollout=d.failed_rollout, play=d.play, long_share=d.long_share)


@task(retries=2, retry_delay_seconds=2, task_run_name="offline-{kind}-{task_id}")
def generate_offline_allocation(config: LWDConfig, task_id: str, kind: str, steps: int, seed: int) -> DatasetReport:
    """Fill one (task, kind) budget. Deterministic seeds: a retry rewrites the same episode ids."""
    return generate_allocation(open_store(config), get_task(task_id), kind, steps, seed)


@task
def write_offline_report(config: LWDConfig, report: DatasetReport) -> dict:
    return write_dataset_report(open_store(config), report, select_tasks(config.fleet.tasks), offline_mix(config))

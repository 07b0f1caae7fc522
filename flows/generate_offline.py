"""Generate the offline dataset in the simulator with the paper's mix (see lwd_core.sim.dataset)."""

from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from lwd_core.config import LWDConfig, load_config
from lwd_core.sim.dataset import DatasetReport, DatasetSummary, plan_allocations
from lwd_core.suite import select_tasks
from tasks.dataset import generate_offline_allocation, offline_mix, write_offline_report
from tasks.progress import progress


# One simulator (~190 MB) per allocation in flight: as many at once as there are cores, not every
# (task, kind) of the plan at once.
@flow(name="generate-offline", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def generate_offline(total_steps: int = 0, seed: int = -1, config: LWDConfig | None = None) -> DatasetSummary:
    """``total_steps``/``seed`` override the config's dataset section (0 / -1: use the config)."""
    config = config or load_config()
    logger = get_run_logger()
    total_steps = total_steps or config.dataset.total_steps
    seed = config.dataset.seed if seed < 0 else seed
    suite = select_tasks(config.fleet.tasks)
    plan = plan_allocations(suite, total_steps, offline_mix(config))
    futures = [generate_offline_allocation.submit(config, a.task_id, a.kind, a.steps, seed) for a in plan]
    report = DatasetReport(total_steps_planned=total_steps, mix={})
    with progress(f"generating {total_steps} offline steps", len(futures), key="offline-dataset-progress") as advance:
        for done, future in enumerate(futures, start=1):
            report.merge(future.result())
            advance(done)
    document = write_offline_report(config, report)
    achieved = DatasetSummary(**document["achieved"])
    create_table_artifact(
        key="offline-dataset",
        table=[{"task": t, **{f"{k}_steps": v for k, v in row.items()},
                **{f"{k}_successes": v for k, v in document["successes"].get(t, {}).items()}}
               for t, row in sorted(document["steps"].items())],
        description=f"Offline dataset: {achieved.episodes} episodes, {achieved.hours:.2f} robot hours",
    )
    logger.info("offline dataset: %s", achieved)
    return achieved

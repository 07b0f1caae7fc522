"""The parent flywheel flow.

What runs today is the offline stage on embedded defaults: oracle demonstrations in the simulator ->
offline buffer -> LWD (DIVL + QAM) training -> committed checkpoint -> per-task success in the sim.
The online rounds (fleet, ingest, gate, promotion, rollout) chain onto this as their flows land.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger

from lwd_core.config import load_config
from lwd_core.sim.tasks import select_tasks
from tasks.offline import evaluate_in_sim, generate_demonstrations, train_offline


@flow(name="flywheel")
def flywheel(rounds: int = 1, robots: int = 0, demos_per_task: int = 2, train_steps: int = 200,
             eval_episodes: int = 2) -> dict:
    config = load_config()
    logger = get_run_logger()
    suite = select_tasks(config.fleet.tasks)
    keys: list[str] = []
    for index, spec in enumerate(suite):
        keys += generate_demonstrations(config, spec.task_id, demos_per_task, seed=1000 * index)
    logger.info("offline buffer: %d demonstration episodes over %d tasks", len(keys), len(suite))
    checkpoint = train_offline(config, keys, train_steps, version="offline-0")
    table = {spec.task_id: evaluate_in_sim(config, checkpoint, spec.task_id, eval_episodes, seed=index)
             for index, spec in enumerate(suite)}
    summary = {"checkpoint": config.storage.url + "/" + checkpoint, "success_by_task": table,
               "mean_success": sum(table.values()) / len(table)}
    logger.info("round 0 (offline): %s", json.dumps(summary))
    return summary

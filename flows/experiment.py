"""`lwd experiment`: the paper's comparison (BC, HG-DAgger, RECAP, IQL, LWD offline, LWD online) from one
pretrained start with equal update and fleet budgets; see :mod:`lwd_core.experiment` for the protocol.

Results go to ``<data_dir>/experiment/`` (results.json, results.md, success_vs_experience.png,
value_diagnostics.png; each arm's store, with its buffers, labels, snapshots and checkpoints, under
``stores/<experiment_id>/``), to the object store (``experiments/<id>/results.json``) and to MLflow: one
run per arm with success against fleet hours (the round as the step) and, for the value arms, DIVL's tau
over training, and a parent run with the table, the plots and the significance tests.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from lwd_core.algo.compilation import use_compilation_cache
from lwd_core.config import LWDConfig, load_config
from lwd_core.experiment import (
    PLOT_FILE,
    RESULTS_FILE,
    VALUE_PLOT_FILE,
    Experiment,
    write_report,
)
from lwd_core.sim.pool import SimPool
from tasks.experiment import log_experiment, store_results


class ExperimentSummary(BaseModel):
    """Where an experiment's results are, with each arm's final success and its test against LWD online
    (the whole record is ``results.json``)."""

    experiment_id: str
    minutes: float
    results: str  # results.json on this machine
    stored: str  # results.json in the object store
    mlflow_run_id: str
    final_success: dict[str, float]
    comparisons: dict[str, dict[str, int | float]]  # difference, wins, losses, p_value


@flow(name="experiment", log_prints=True)
def experiment(config: LWDConfig | None = None) -> ExperimentSummary:
    """Budgets, arms and seeds come from the config's ``experiment`` and ``algo`` sections
    (configs/experiment-reduced.yaml on 2 CPU cores, configs/experiment-full.yaml on a GPU machine)."""
    config = config or load_config()
    use_compilation_cache(config.compilation_cache_dir)
    logger = get_run_logger()
    experiment_id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(config.data_dir).resolve() / "experiment"
    with SimPool(config.experiment.workers) as pool:
        results = Experiment(config.experiment, config.algo, pool, out_dir / "stores" / experiment_id, log=print).run()
    results["experiment_id"] = experiment_id

    table = write_report(results, out_dir)
    stored = store_results(config, experiment_id, results)
    plots = [path for path in (out_dir / PLOT_FILE, out_dir / VALUE_PLOT_FILE) if path.exists()]
    run_id = log_experiment(config, experiment_id, results, table, plots)
    print(table)
    logger.info("experiment %s done in %.1f min; results in %s", experiment_id, results["minutes"], out_dir)
    return ExperimentSummary(experiment_id=experiment_id, minutes=results["minutes"],
                             results=str(out_dir / RESULTS_FILE), stored=stored, mlflow_run_id=run_id,
                             final_success={key: arm["final"]["success"] for key, arm in results["arms"].items()},
                             comparisons=results["comparisons"])

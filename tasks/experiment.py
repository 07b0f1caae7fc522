"""Prefect tasks of ``lwd experiment``: its record in the object store and in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from lwd_core.config import LWDConfig
from lwd_core.data.layout import experiment_results_key
from lwd_core.store import open_store
from tasks import tracking


@task(retries=2, retry_delay_seconds=5)
def store_results(config: LWDConfig, experiment_id: str, results: dict) -> str:
    """``experiments/<id>/results.json`` in the object store; returns its address."""
    store = open_store(config)
    key = experiment_results_key(experiment_id)
    store.put_json(key, results)
    return store.uri(key)


@task(retries=2, retry_delay_seconds=5)
def log_experiment(config: LWDConfig, experiment_id: str, results: dict, table: str, plot: Path) -> str:
    """A parent MLflow run with the settings, the table, the plot and the tests; one nested run per arm
    with success against fleet hours (the round as the step). Returns the parent run's id."""
    mlflow = tracking.mlflow_setup(config)
    with mlflow.start_run(run_name=experiment_id) as run:
        mlflow.set_tags({"kind": "experiment"})
        mlflow.log_params({"experiment." + k: str(v) for k, v in config.experiment.model_dump().items()})
        mlflow.log_params({"algo." + k: str(v) for k, v in config.algo.model_dump().items()})
        for key, arm in results["arms"].items():
            with mlflow.start_run(run_name=f"{experiment_id}-{key}", nested=True):
                mlflow.set_tags({"kind": "experiment-arm", "arm": arm["label"]})
                for point in arm["curve"]:
                    mlflow.log_metrics({"success": point["success"], "fleet_hours": point["fleet_hours"]},
                                       step=point["round"])
                mlflow.log_metric("final_success", arm["final"]["success"])
                if key in results["comparisons"]:
                    mlflow.log_metric("p_value_vs_reference", results["comparisons"][key]["p_value"])
        mlflow.log_dict(results, "results.json")
        mlflow.log_text(table, "results.md")
        mlflow.log_artifact(str(plot))
        return run.info.run_id

"""Prefect tasks of ``lwd experiment``: its record in the object store and in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from lwd_core.config import LWDConfig
from lwd_core.data.layout import experiment_results_key
from lwd_core.store import open_store
from tasks import mlflow_adapter


@task(retries=2, retry_delay_seconds=5)
def store_results(config: LWDConfig, experiment_id: str, results: dict) -> str:
    """``experiments/<id>/results.json`` in the object store; returns its address."""
    store = open_store(config)
    key = experiment_results_key(experiment_id)
    store.put_json(key, results)
    return store.uri(key)


@task(retries=2, retry_delay_seconds=5)
def log_experiment(config: LWDConfig, experiment_id: str, results: dict, table: str, plots: list[Path]) -> str:
    """The experiment's MLflow runs (:func:`tasks.mlflow_adapter.log_experiment`); the parent run's id."""
    return mlflow_adapter.log_experiment(config, experiment_id, results, table, plots)

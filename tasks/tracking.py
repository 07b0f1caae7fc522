"""MLflow: runs, the policy model registry, and the approval aliases reviewers move.

Registry conventions (MLflow 3: aliases and tags replace stages):
- alias ``challenger``: a candidate that passed the evaluation gate, awaiting review;
- alias ``champion``: the approved model the fleet runs (moved by a reviewer in the MLflow UI,
  by ``lwd approve``, or by the flywheel only when auto-approve is explicitly on);
- version tags: ``snapshot_id``, ``checkpoint`` (store prefix), ``policy_sha256``, ``gate``
  (pending/pass/fail), ``approval`` (pending/approved/rejected/rolled-back), ``approved_by``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lwd_core.config import LWDConfig
from lwd_core.data.layout import POLICY_FILE, SPEC_FILE
from lwd_core.store import COMMIT_MANIFEST, ObjectStore

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_CODE = str(Path(__file__).with_name("mlflow_policy.py"))


def mlflow_setup(config: LWDConfig):
    import mlflow

    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    mlflow.set_tracking_uri(config.tracking.mlflow_uri)
    if mlflow.get_experiment_by_name(config.tracking.experiment) is None:
        from mlflow.exceptions import MlflowException

        try:
            mlflow.create_experiment(config.tracking.experiment,
                                     artifact_location=config.tracking.artifact_location or None)
        except MlflowException:
            pass  # created concurrently by another run
    mlflow.set_experiment(config.tracking.experiment)
    return mlflow


def client(config: LWDConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking.mlflow_uri)


def register_policy(config: LWDConfig, store: ObjectStore, checkpoint: str, tags: dict[str, str]) -> str:
    """Log the checkpoint's policy as a pyfunc model in the active run and register a version."""
    name = config.tracking.registered_model
    mlflow = mlflow_setup(config)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for artifact, file in (("policy", POLICY_FILE), ("spec", SPEC_FILE)):
            path = Path(tmp) / file
            path.write_bytes(store.get_committed(checkpoint, file))
            artifacts[artifact] = str(path)
        info = mlflow.pyfunc.log_model(name="policy", python_model=MODEL_CODE, artifacts=artifacts,
                                       pip_requirements=["jax", "flax", "numpy", "pandas"],
                                       registered_model_name=name)
    version = str(info.registered_model_version)
    mlflow_client = client(config)
    for key, value in {**tags, "gate": "pending", "approval": "pending"}.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))
    return version


def version_tags(config: LWDConfig, version: str) -> dict[str, str]:
    return dict(client(config).get_model_version(config.tracking.registered_model, version).tags)


def set_version_tags(config: LWDConfig, version: str, tags: dict[str, Any]) -> None:
    mlflow_client = client(config)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(config.tracking.registered_model, version, key, str(value))


def alias_version(config: LWDConfig, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(config).get_model_version_by_alias(config.tracking.registered_model, alias).version)
    except MlflowException:
        return None


def set_alias(config: LWDConfig, alias: str, version: str) -> None:
    client(config).set_registered_model_alias(config.tracking.registered_model, alias, version)


def delete_alias(config: LWDConfig, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client(config).delete_registered_model_alias(config.tracking.registered_model, alias)
    except MlflowException:
        pass


def release_name(version: str) -> str:
    """The name actors and episodes carry for a registry version."""
    return f"policy-v{version}"


@contextmanager
def training_run(config: LWDConfig, plan: Any) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """An MLflow run for one :class:`~lwd_core.algo.training.SnapshotTraining`: its plan as parameters
    and tags; yields the metric logger the training loop calls."""
    mlflow = mlflow_setup(config)
    with mlflow.start_run(run_name=f"train-{plan.stage}-{plan.snapshot_id}"):
        mlflow.set_tags({"stage": plan.stage, "snapshot_id": plan.snapshot_id, "parent_checkpoint": plan.parent or "",
                         "method": plan.method, "run_root": plan.run_root})
        mlflow.log_params({"snapshot_id": plan.snapshot_id, "stage": plan.stage, "steps": plan.steps,
                           "offline_transitions": plan.replay.sizes["offline"],
                           "online_transitions": plan.replay.sizes["online"],
                           **{f"algo.{k}": v for k, v in config.algo.model_dump().items()}})
        yield lambda step, metrics: mlflow.log_metrics(metrics, step=step)


def finish_training_run(config: LWDConfig, store: ObjectStore, plan: Any, result: Any, seconds: float) -> dict:
    """Inside :func:`training_run`: per-task values, throughput, the checkpoint manifest, and a registered
    model version for the checkpoint. Returns what the flows pass on."""
    import mlflow

    from lwd_core.algo.training import per_task_value

    run = mlflow.active_run()
    step = int(result.state.step)
    mlflow.log_metrics({f"value_mean/{t}": v for t, v in per_task_value(result.learner, result.state,
                                                                       plan.replay).items()}, step=step)
    mlflow.log_metric("updates_per_second", plan.steps / max(seconds, 1e-9))
    if result.resumed_from:
        mlflow.set_tag("resumed_from", result.resumed_from)
    manifest = store.get_json(f"{result.checkpoint}/{COMMIT_MANIFEST}")
    mlflow.log_dict(manifest, f"checkpoint/{COMMIT_MANIFEST}")
    mlflow.set_tag("checkpoint", store.uri(result.checkpoint))
    version = register_policy(config, store, result.checkpoint, tags={
        "snapshot_id": plan.snapshot_id, "checkpoint": result.checkpoint,
        "policy_sha256": manifest["files"][POLICY_FILE]["sha256"], "stage": plan.stage, "run_id": run.info.run_id})
    return {"checkpoint": result.checkpoint, "model_version": version, "run_id": run.info.run_id, "stage": plan.stage,
            "snapshot_id": plan.snapshot_id, "steps": plan.steps, "seconds": seconds,
            "final_metrics": result.history[-1] if result.history else {}}

"""The MLflow adapter: every call the flywheel makes to MLflow (runs, the policy model registry, the
aliases reviewers move). Tasks call it; flows call tasks. It holds no Prefect task itself.

Registry conventions (MLflow 3: aliases and tags replace stages):
- alias ``challenger``: a candidate that passed the evaluation gate, awaiting review;
- alias ``champion``: the approved model the fleet runs (moved by a reviewer in the MLflow UI,
  by ``lwd approve``, or by the flywheel only when auto-approve is explicitly on);
- version tags: what :class:`lwd_core.promotion.ModelVersion` reads and the transitions in
  :mod:`lwd_core.promotion` write.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lwd_core import promotion
from lwd_core.config import LWDConfig
from lwd_core.data.layout import POLICY_FILE, PORTABLE_POLICY_FILE, SPEC_FILE
from lwd_core.gating import GateResult
from lwd_core.promotion import ModelVersion, TrainedVersion
from lwd_core.store import COMMIT_MANIFEST, ObjectStore, commit_manifest_key

if TYPE_CHECKING:
    from lwd_core.algo.trainer import TrainingPlan, TrainResult

MODEL_CODE = str(Path(__file__).with_name("mlflow_policy.py"))


def mlflow_setup(config: LWDConfig):
    import mlflow

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


# What the pyfunc model imports: pinned to this environment's versions so it loads elsewhere. Passed
# as pip_requirements, they are not inferred, so MLflow has no conflicting pins to check with pip.
MODEL_REQUIREMENTS = ("jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pydantic", "pydantic-settings", "pyyaml",
                      "fsspec", "polars", "msgpack")


def policy_signature():
    """Input: padded observations and instructions; output: one flattened action chunk per row;
    parameter ``seed`` for the flow's noise."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import (
        Array,
        ColSpec,
        DataType,
        ParamSchema,
        ParamSpec,
        Schema,
    )

    return ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.double), "obs"), ColSpec(DataType.string, "instruction")]),
        outputs=Schema([ColSpec(Array(DataType.double))]),
        params=ParamSchema([ParamSpec("seed", DataType.long, 0)]))


def policy_input_example():
    import pandas as pd

    from lwd_core.suite import OBS_DIM, TASK_SUITE

    return pd.DataFrame({"obs": [[0.0] * OBS_DIM], "instruction": [TASK_SUITE[0].instruction]})


def register_policy(config: LWDConfig, store: ObjectStore, checkpoint: str, policy_sha256: str, snapshot_id: str,
                    stage: str) -> str:
    """Log the checkpoint's policy as a pyfunc model (a LoggedModel) in the active run and register a
    version. The model carries ``lwd_core`` as code, a signature and an input example: it loads with
    ``mlflow.pyfunc.load_model("models:/<name>@champion")`` outside this repository."""
    from importlib.metadata import version as installed

    import lwd_core

    name = config.tracking.registered_model
    mlflow = mlflow_setup(config)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for artifact, file in (("policy", POLICY_FILE), ("portable_policy", PORTABLE_POLICY_FILE), ("spec", SPEC_FILE)):
            path = Path(tmp) / file
            path.write_bytes(store.get_committed(checkpoint, file))
            artifacts[artifact] = str(path)
        info = mlflow.pyfunc.log_model(
            name="policy", python_model=MODEL_CODE, artifacts=artifacts,
            code_paths=[str(Path(lwd_core.__file__).parent)], signature=policy_signature(),
            input_example=policy_input_example(),
            pip_requirements=[f"{package}=={installed(package)}" for package in MODEL_REQUIREMENTS],
            registered_model_name=name, model_type="flow-policy",
            # No tags: MLflow copies a registered model's tags onto its version, whose tags are the reviewer's.
            params={"checkpoint": checkpoint, "policy_sha256": policy_sha256})
    version = str(info.registered_model_version)
    if not client(config).get_registered_model(name).description:
        client(config).update_registered_model(name, description=promotion.MODEL_DESCRIPTION)
    tag_version(config, version, promotion.registered(snapshot_id, checkpoint, policy_sha256, stage))
    return version


def model_version(config: LWDConfig, version: str) -> ModelVersion:
    found = client(config).get_model_version(config.tracking.registered_model, version)
    return ModelVersion.from_tags(str(found.version), {**found.tags, "run_id": found.run_id or ""})


def tag_version(config: LWDConfig, version: str, tags: dict[str, str]) -> None:
    """Apply one transition's tag update (:mod:`lwd_core.promotion`) to a registry version."""
    mlflow_client, name = client(config), config.tracking.registered_model
    current = mlflow_client.get_model_version(name, version).tags if promotion.STATE_FIELDS & set(tags) else {}
    for key, value in promotion.tag_update(current, tags).items():
        mlflow_client.set_model_version_tag(name, version, key, value)


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


@contextmanager
def training_run(config: LWDConfig, plan: TrainingPlan, store_uri: str = "") -> Iterator[Callable[[int, dict[str, float]], None]]:
    """An MLflow run for one :class:`~lwd_core.algo.trainer.TrainingPlan`: its plan as parameters
    and tags, the snapshot as its input dataset (``store_uri``: the snapshot manifest's address), CPU/GPU
    and memory as system metrics; yields the metric logger the training loop calls."""
    mlflow = mlflow_setup(config)
    # A sample a second: a round of a few hundred updates lasts a minute, and MLflow's default (one every
    # 10 s, the first reading 0% CPU) showed one meaningless point.
    mlflow.set_system_metrics_sampling_interval(1)
    with mlflow.start_run(run_name=f"train-{plan.kind}-{plan.snapshot_id}", log_system_metrics=True):
        log_snapshot_input(mlflow, store_uri, plan.snapshot_id)
        mlflow.set_tags({"stage": plan.kind, "snapshot_id": plan.snapshot_id, "parent_checkpoint": plan.parent or "",
                         "method": plan.method, "run_root": plan.run_root})
        mlflow.log_params({"snapshot_id": plan.snapshot_id, "stage": plan.kind, "steps": plan.steps,
                           "stages": " -> ".join(f"{stage.phase} {stage.steps}" for stage in plan.stages),
                           "offline_transitions": plan.transitions["offline"],
                           "online_transitions": plan.transitions["online"],
                           **{f"algo.{k}": v for k, v in config.algo.model_dump().items()}})
        yield lambda step, metrics: mlflow.log_metrics(metrics, step=step)


def log_snapshot_input(mlflow, store_uri: str, snapshot_id: str) -> None:
    """The snapshot a run trained on, as its MLflow input dataset (lineage in the UI). Snapshot ids are
    content digests, so the id is the dataset's digest too."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if not store_uri:
        return
    with warnings.catch_warnings():  # file:// matches two equivalent local source classes; either is right
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(store_uri)
    if source is not None:
        mlflow.log_input(MetaDataset(source=source, name=snapshot_id, digest=snapshot_id.removeprefix("snap-")[:16]),
                         context="training")


def pending_candidate(config: LWDConfig) -> str | None:
    """The newest registered version that has not been gated yet."""
    versions = client(config).search_model_versions(f"name='{config.tracking.registered_model}'")
    pending = [int(v.version) for v in versions if ModelVersion.awaits_gate(v.tags)]
    return str(max(pending)) if pending else None


def log_gate_run(config: LWDConfig, gate: GateResult, episodes_per_task: int) -> None:
    """A gate run: how it was run (parameters), the decision (``gate.json``), success metrics, a
    description linking to the version it judged, and the reviewer's evidence."""
    from lwd_core.gating import gate_metrics

    mlflow = mlflow_setup(config)
    with mlflow.start_run(run_name=f"gate-v{gate.candidate}"):
        verdict = "PASS" if gate.passed else "FAIL"
        version_page = config.tracking.ui_link(config.tracking.version_route(gate.candidate))
        mlflow.set_tags({"kind": "gate", "candidate": gate.candidate, "champion": gate.champion or "",
                         "passed": gate.passed, "mlflow.note.content":
                             f"Evaluation gate of [v{gate.candidate}]({version_page}) "
                             f"against {gate.versus}: {verdict}. "
                             f"Rule: {gate.rule}."})
        mlflow.log_params({"episodes_per_task": episodes_per_task, "seed": config.gate.seed,
                           "tolerance": config.gate.tolerance, "min_success": config.gate.min_success,
                           "rule": gate.rule[:500], "candidate": gate.candidate, "champion": gate.champion or "-"})
        mlflow.log_metrics({name: round(value, 4)
                            for name, value in gate_metrics(gate.candidate_eval, gate.champion_eval).items()})
        mlflow.log_dict(gate.model_dump(mode="json"), "gate.json")
        log_gate_evidence(config, gate, episodes_per_task)


def log_gate_evidence(config: LWDConfig, gate: GateResult, episodes_per_task: int) -> None:
    """Inside the gate's run: the per-task bar plot with intervals, and the reviewer's table as the
    model version's description, linking back to this run."""
    import mlflow

    from lwd_core.gating import gate_report_markdown

    run = mlflow.active_run()
    title = (f"Gate v{gate.candidate}: {'PASS' if gate.passed else 'FAIL'}, n = {episodes_per_task} episodes per task\n"
             f"{gate.rule}")
    mlflow.log_figure(gate_plot(gate.candidate, gate.candidate_eval, gate.champion, gate.champion_eval, title),
                      "gate_success_by_task.png")
    run_url = config.tracking.ui_link(f"/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    report = gate_report_markdown(gate, run_url)
    client(config).update_model_version(config.tracking.registered_model, gate.candidate, description=report)
    tag_version(config, gate.candidate, promotion.gate_evidence(run.info.run_id))


def gate_plot(candidate: str, candidate_eval: dict, champion: str | None, champion_eval: dict | None,
              title: str = ""):
    """Success per task, candidate beside champion, with 95% Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(candidate_eval["tasks"])
    series = [(f"v{candidate} (candidate)", candidate_eval)]
    if champion_eval is not None:
        series.append((f"v{champion} (champion)", champion_eval))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 2), 4))
    width = 0.8 / len(series)
    for index, (label, evaluation) in enumerate(series):
        rows = [evaluation["tasks"][t] for t in tasks]
        rates = np.array([r["success_rate"] for r in rows])
        errors = np.array([[r["success_rate"] - r["ci_low"] for r in rows], [r["ci_high"] - r["success_rate"] for r in rows]])
        axis.bar(np.arange(len(tasks)) + (index - (len(series) - 1) / 2) * width, rates, width, yerr=errors,
                 capsize=3, label=label)
    axis.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right")
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("success rate (95% CI)")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    plt.close(figure)
    return figure


def checkpoint_logger(store: ObjectStore, plan: TrainingPlan) -> Callable[[str, int], None]:
    """Inside :func:`training_run`: each committed checkpoint becomes a LoggedModel of the run (an
    external one: the bytes stay in the object store, named by key and policy hash). The final
    checkpoint is logged as the pyfunc model :func:`register_policy` registers instead."""
    import mlflow

    def log(checkpoint: str, step: int) -> None:
        if step >= plan.target_step:
            return
        manifest = store.get_json(commit_manifest_key(checkpoint))
        mlflow.create_external_model(
            name=f"checkpoint-{step}-intermediate", source_run_id=mlflow.active_run().info.run_id,
            model_type="flow-policy-checkpoint",
            params={"checkpoint": store.uri(checkpoint), "policy_sha256": manifest["files"][POLICY_FILE]["sha256"]},
            tags={"step": str(step), "snapshot_id": plan.snapshot_id, "stage": plan.kind,
                  "note": f"intermediate checkpoint at step {step} of {plan.target_step}: where this run resumes "
                          "after a crash; not registered (the run's final policy is its registered model)"})

    return log


def finish_training_run(config: LWDConfig, store: ObjectStore, plan: TrainingPlan, result: TrainResult, seconds: float) -> TrainedVersion:
    """Inside :func:`training_run`: per-task values, throughput, the checkpoint manifest, and a registered
    model version for the checkpoint. Returns what the flows pass on."""
    import mlflow

    from lwd_core.algo.trainer import value_by_task

    run = mlflow.active_run()
    step = int(result.state.step)
    mlflow.log_metrics({f"value_mean/{t}": v for t, v in value_by_task(result.learner, result.state,
                                                                       result.buffers).items()}, step=step)
    mlflow.log_metric("updates_per_second", plan.steps / max(seconds, 1e-9))
    if result.resumed_from:
        mlflow.set_tag("resumed_from", result.resumed_from)
    manifest = store.get_json(commit_manifest_key(result.checkpoint))
    mlflow.log_dict(manifest, f"checkpoint/{COMMIT_MANIFEST}")
    mlflow.set_tag("checkpoint", store.uri(result.checkpoint))
    version = register_policy(config, store, result.checkpoint, manifest["files"][POLICY_FILE]["sha256"],
                              plan.snapshot_id, plan.kind)
    return TrainedVersion(model_version=version, checkpoint=result.checkpoint, run_id=run.info.run_id,
                          stage=plan.kind, snapshot_id=plan.snapshot_id, steps=plan.steps, seconds=seconds,
                          final_metrics=result.history[-1] if result.history else {})


def log_experiment(config: LWDConfig, experiment_id: str, results: dict, table: str, plots: list[Path]) -> str:
    """``lwd experiment``'s record: a parent run (settings, table, plots, tests) and a nested run per arm
    with success against fleet hours (the round as the step) and, for a value arm, DIVL's tau and entropy
    per logged window and its value diagnostics. Returns the parent run's id."""
    mlflow = mlflow_setup(config)
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
                training = arm.get("value", {}).get("training", {})
                for window, (tau, entropy) in enumerate(zip(training.get("tau", []), training.get("entropy", []))):
                    mlflow.log_metrics({"divl_tau": tau, "divl_entropy": entropy}, step=window)
                if arm.get("value"):
                    mlflow.log_dict(arm["value"], "value_diagnostics.json")
                if key in results["comparisons"]:
                    mlflow.log_metric("p_value_vs_reference", results["comparisons"][key]["p_value"])
        mlflow.log_dict(results, "results.json")
        mlflow.log_text(table, "results.md")
        for path in plots:
            mlflow.log_artifact(str(path))
        return run.info.run_id

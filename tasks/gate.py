"""Prefect tasks of the evaluation gate (flows/evaluate_gate.py): registry reads and the records of a
decision :func:`lwd_core.gating.gate_decision` took. The gate's MLflow run is not retried (a retry
would log a second run); reads and tags are."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from lwd_core import promotion
from lwd_core.config import LWDConfig
from lwd_core.gating import GateResult, gate_table
from tasks import mlflow_adapter
from tasks.retries import RETRY_DELAYS_S


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def gate_contenders(config: LWDConfig, model_version: str) -> tuple[str | None, str | None]:
    """The candidate (default: the newest version not gated yet) and the current champion."""
    candidate = model_version or mlflow_adapter.pending_candidate(config)
    return candidate, mlflow_adapter.alias_version(config, promotion.CHAMPION)


@task
def log_gate_run(config: LWDConfig, gate: GateResult, episodes_per_task: int) -> None:
    mlflow_adapter.log_gate_run(config, gate, episodes_per_task)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_gate_result(config: LWDConfig, gate: GateResult) -> None:
    """The verdict on the model version's tags, the per-task table on the flow run's page, a log line."""
    verdict = "PASS" if gate.passed else "FAIL"
    mlflow_adapter.tag_version(config, gate.candidate, promotion.gated(gate.passed, gate.candidate_mean))
    version_page = config.tracking.markdown_link("version page", config.tracking.version_route(gate.candidate))
    create_table_artifact(key="evaluation-gate", table=gate_table(gate.candidate_eval, gate.champion_eval),
                          description=f"v{gate.candidate} vs {gate.versus}: {verdict} ({gate.rule}). "
                                      f"Success with 95% Wilson intervals on the same seeds; the {version_page}")
    champion = "" if gate.champion_mean is None else f" {gate.champion_mean:.0%}"
    get_run_logger().info("gate v%s: %s, %.0f%% vs %s%s", gate.candidate, verdict, 100 * gate.candidate_mean,
                          gate.versus, champion)

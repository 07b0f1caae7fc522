"""Prefect tasks of the evaluation gate (flows/evaluate_gate.py): registry reads and the records of a
decision :func:`lwd_core.gating.gate_decision` took. The gate's MLflow run is not retried (a retry
would log a second run); reads and tags are."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from lwd_core.config import LWDConfig
from lwd_core.gating import GateDecision, gate_table
from tasks import tracking

RETRY_DELAYS_S = [1, 5, 20]


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def gate_contenders(config: LWDConfig, model_version: str) -> tuple[str | None, str | None]:
    """The candidate (default: the newest version not gated yet) and the current champion."""
    candidate = model_version or tracking.pending_candidate(config)
    return candidate, tracking.alias_version(config, tracking.CHAMPION)


@task
def log_gate_run(config: LWDConfig, decision: dict, verdict: GateDecision) -> None:
    tracking.log_gate_run(config, decision, verdict)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_gate_result(config: LWDConfig, decision: dict, verdict: GateDecision) -> None:
    """The verdict on the model version's tags, the per-task table on the flow run's page, a log line."""
    candidate, champion, passed = decision["candidate"], decision["champion"], verdict.passed
    tracking.set_version_tags(config, candidate, {"gate": "pass" if passed else "fail",
                                                  "gate_mean_success": f"{verdict.candidate_mean:.3f}"})
    create_table_artifact(key="evaluation-gate", table=gate_table(decision["candidate_eval"], decision["champion_eval"]),
                          description=f"v{candidate} vs champion {champion or '-'}: "
                                      f"{'PASS' if passed else 'FAIL'} ({verdict.rule})")
    get_run_logger().info("gate v%s: %s (%.2f vs %s)", candidate, "PASS" if passed else "FAIL", verdict.candidate_mean,
                          verdict.champion_mean)

"""Prefect tasks of the promotion flows (flows/promote.py): registry reads and the tag updates of each
transition in :mod:`lwd_core.promotion`, through the MLflow adapter; the reviewer's form and the
review runs waiting for it. Reads and idempotent writes retry; waiting for a reviewer does not."""

from __future__ import annotations

import time

from prefect import task
from prefect.input import RunInput
from pydantic import Field

from lwd_core import promotion
from lwd_core.config import LWDConfig
from lwd_core.promotion import CHALLENGER, CHAMPION, ModelVersion
from lwd_core.store import now_us
from tasks import mlflow_adapter
from tasks.events import AWAITING_REVIEW, ROLLOUT_REFUSED, emit_model_event
from tasks.retries import RETRY_DELAYS_S

REVIEW_FLOW = "review"


class ReviewDecision(RunInput):
    """The form a waiting review shows in the Prefect UI."""

    approve: bool = Field(description="Ship this version to the fleet (canary robots first, then all)?")
    reviewer: str = Field(default="prefect-ui", min_length=1, max_length=100,
                          description="Who decides; recorded on the model version")
    comment: str = Field(default="", max_length=500, description="Why; recorded on the model version")


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def read_version(config: LWDConfig, version: str) -> ModelVersion:
    return mlflow_adapter.model_version(config, version)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def champion_version(config: LWDConfig) -> str | None:
    """The version alias ``champion`` is on (None before the first approval)."""
    return mlflow_adapter.alias_version(config, CHAMPION)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def registry_aliases(config: LWDConfig) -> dict[str, str | None]:
    """Which version each alias is on (``lwd status``)."""
    return {alias: mlflow_adapter.alias_version(config, alias) for alias in (CHAMPION, CHALLENGER)}


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def make_challenger(config: LWDConfig, version: ModelVersion) -> None:
    """Alias ``challenger``, approval pending, and the champion it would replace."""
    mlflow_adapter.set_alias(config, CHALLENGER, version.version)
    mlflow_adapter.tag_version(config, version.version,
                               promotion.challenger(mlflow_adapter.alias_version(config, CHAMPION)))


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_approval(config: LWDConfig, version: ModelVersion, reviewer: str, comment: str) -> str | None:
    """Alias ``champion`` on the version with who/when/why; the previous champion is superseded.
    Returns the previous champion."""
    previous = mlflow_adapter.alias_version(config, CHAMPION)
    if previous == version.version:  # the alias was already moved in the MLflow UI
        previous = version.previous_champion
    mlflow_adapter.set_alias(config, CHAMPION, version.version)
    mlflow_adapter.tag_version(config, version.version, promotion.approved(reviewer, comment, previous, now_us()))
    if mlflow_adapter.alias_version(config, CHALLENGER) == version.version:
        mlflow_adapter.delete_alias(config, CHALLENGER)
    if previous and previous != version.version:
        mlflow_adapter.tag_version(config, previous, promotion.superseded())
    return previous


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_rejection(config: LWDConfig, version: str, reviewer: str, reason: str) -> None:
    """The version leaves ``challenger``, carrying who and why."""
    mlflow_adapter.tag_version(config, version, promotion.rejected(reviewer, reason, now_us()))
    if mlflow_adapter.alias_version(config, CHALLENGER) == version:
        mlflow_adapter.delete_alias(config, CHALLENGER)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def refuse_champion(config: LWDConfig, version: ModelVersion, deployed: str | None) -> tuple[str, str | None]:
    """Alias ``champion`` was moved onto a version that did not pass its gate: put it back (on the
    previous champion, else on what the fleet runs), record the refusal, tell subscribers. Returns the
    reason and where the alias is now."""
    reason = (f"gate={version.gate_label!r}: alias champion was moved onto a version that did not pass its gate")
    restored = version.previous_champion or deployed
    if restored and restored != version.version:
        mlflow_adapter.set_alias(config, CHAMPION, restored)
    else:
        restored = None
        mlflow_adapter.delete_alias(config, CHAMPION)
    mlflow_adapter.tag_version(config, version.version, promotion.refused(reason))
    emit_model_event(ROLLOUT_REFUSED, config.tracking.registered_model, version.version,
                     {"reason": reason, "champion": restored or ""})
    return reason, restored


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def announce_review(config: LWDConfig, version: ModelVersion) -> None:
    """Event ``lwd.model.awaiting-review`` once per version (a resumed review does not repeat it)."""
    if version.review_requested_us:
        return
    mlflow_adapter.tag_version(config, version.version, promotion.review_requested(now_us()))
    emit_model_event(AWAITING_REVIEW, config.tracking.registered_model, version.version, {
        "gate_mean_success": "" if version.gate_mean_success is None else f"{version.gate_mean_success:.3f}",
        "champion": version.previous_champion or "", "run_id": version.run_id,
        "url": config.tracking.public_link(config.tracking.version_route(version.version))})


@task
def wait_for_decision(config: LWDConfig, version: str, seconds: float, poll_s: float = 2.0) -> ReviewDecision | None:
    """Poll the registry: alias ``champion`` moved onto the version (MLflow UI, ``lwd approve``) or a
    recorded rejection (``lwd reject``). None when neither happened in time."""
    deadline = time.monotonic() + seconds
    while True:
        current = mlflow_adapter.model_version(config, version)
        if current.approval is promotion.Approval.REJECTED:
            return ReviewDecision(approve=False, reviewer=current.rejected_by or "unknown",
                                  comment=current.rejection_reason)
        if mlflow_adapter.alias_version(config, CHAMPION) == version:
            return ReviewDecision(approve=True, reviewer=current.approved_by or "mlflow-ui",
                                  comment=current.approval_comment or "alias champion moved in MLflow")
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


def _review_runs(version: str, states: list[str]):
    """Review flow runs for a version in the given state types (via the Prefect API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[REVIEW_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in states]))), limit=50)
    return [run for run in runs if str(run.parameters.get("model_version")) == str(version)]


def active_review_run(version: str):
    runs = _review_runs(version, ["SCHEDULED", "PENDING", "RUNNING", "PAUSED"])
    return runs[0] if runs else None


def answer_waiting_review(version: str, decision: ReviewDecision) -> str | None:
    """Resume a review run suspended on this version with the decision; its id, or None if none waits."""
    from prefect.flow_runs import resume_flow_run

    for run in _review_runs(version, ["PAUSED"]):
        resume_flow_run(run.id, run_input=decision.model_dump())
        return str(run.id)
    return None

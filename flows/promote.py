"""Promotion: from a gated candidate to the fleet, with a reviewer in between.

1. ``promote``: a candidate that passed its gate becomes alias ``challenger`` (approval pending).
2. ``review``: announces it (event ``lwd.model.awaiting-review``) and waits for the reviewer.
   A deployment run suspends with a form (:class:`ReviewDecision`) in the Prefect UI; ``lwd approve``
   and ``lwd reject`` answer the same form. A run without a deployment (``lwd flywheel`` on embedded
   Prefect) polls the registry for ``promotion.approval_timeout_seconds``. Approval ships: the staged
   rollout follows with no manual step.
3. ``watch-champion`` (scheduled): moving alias ``champion`` in the MLflow UI is an approval too. The
   watcher records it and ships, or refuses a version whose gate did not pass and puts the alias back.

``promotion.auto_approve`` lets a passing gate stand in for the reviewer (unattended runs only).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.input import RunInput
from pydantic import Field

from flows.rollout import rollout
from lwd_core.config import LWDConfig, load_config
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.store import now_us, open_store
from tasks import tracking
from tasks.events import (
    AWAITING_REVIEW,
    ROLLOUT_REFUSED,
    emit_model_event,
    flush_events,
)

REVIEW_FLOW = "review"
# Approval states after which a version is never reviewed again, and every decided state.
TURN_PASSED = ("rolled-back", "superseded", "refused")
DECIDED = ("approved", "rejected", *TURN_PASSED)


class ReviewDecision(RunInput):
    """The form a waiting review shows in the Prefect UI."""

    approve: bool = Field(description="Ship this version to the fleet (canary robots first, then all)?")
    reviewer: str = Field(default="prefect-ui", min_length=1, max_length=100,
                          description="Who decides; recorded on the model version")
    comment: str = Field(default="", max_length=500, description="Why; recorded on the model version")


@flow(name="promote")
def promote(model_version: str = "", wait_seconds: float = -1.0, config: LWDConfig | None = None) -> dict:
    """``wait_seconds`` < 0: the config's approval timeout."""
    config = config or load_config()
    logger = get_run_logger()
    if not model_version:
        raise ValueError("name the model version to promote")
    tags = tracking.version_tags(config, model_version)
    if tags.get("gate") != "pass":
        logger.warning("v%s did not pass the gate (gate=%s): not promoted", model_version, tags.get("gate"))
        return {"version": model_version, "promoted": False, "approved": False, "reason": f"gate={tags.get('gate')}"}
    if tags.get("approval") in DECIDED:  # a rerun (a resumed review): keep the decision and its history
        return {"version": model_version, "promoted": True, "approved": tags["approval"] == "approved",
                "approval": tags["approval"]}
    tracking.set_alias(config, tracking.CHALLENGER, model_version)
    tracking.set_version_tags(config, model_version, {
        "approval": "pending", "previous_champion": tracking.alias_version(config, tracking.CHAMPION) or ""})
    if config.promotion.auto_approve:
        approve(model_version, reviewer="auto-approve (promotion.auto_approve=true)", config=config)
        return {"version": model_version, "promoted": True, "approved": True, "approval": "approved",
                "approved_by": "auto-approve"}
    wait = config.promotion.approval_timeout_seconds if wait_seconds < 0 else wait_seconds
    logger.info("v%s is the challenger; approve it in the MLflow UI (set alias 'champion') or run "
                "`lwd approve %s`", model_version, model_version)
    decision = wait_for_decision(config, model_version, wait)
    if decision is not None and decision.approve:
        approve(model_version, reviewer=decision.reviewer, comment=decision.comment, config=config)
    approved = bool(decision and decision.approve)
    return {"version": model_version, "promoted": True, "approved": approved,
            "approval": "approved" if approved else "pending"}


def wait_for_decision(config, version: str, seconds: float, poll_s: float = 2.0) -> ReviewDecision | None:
    """Poll the registry: alias ``champion`` moved onto the version (MLflow UI, ``lwd approve``) or a
    recorded rejection (``lwd reject``). None when neither happened in time."""
    deadline = time.monotonic() + seconds
    while True:
        tags = tracking.version_tags(config, version)
        if tags.get("approval") == "rejected":
            return ReviewDecision(approve=False, reviewer=tags.get("rejected_by") or "unknown",
                                  comment=tags.get("rejection_reason", ""))
        if tracking.alias_version(config, tracking.CHAMPION) == version:
            return ReviewDecision(approve=True, reviewer=tags.get("approved_by") or "mlflow-ui",
                                  comment=tags.get("approval_comment") or "alias champion moved in MLflow")
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


@flow(name="approve")
def approve(model_version: str, reviewer: str = "cli", comment: str = "", config: LWDConfig | None = None) -> dict:
    """Record a reviewer's approval: alias ``champion`` and who/when/why as version tags. A review run
    waiting for this version is answered, and ships it."""
    config = config or load_config()
    tags = tracking.version_tags(config, model_version)
    if tags.get("gate") != "pass":
        raise ValueError(f"v{model_version} has gate={tags.get('gate')!r}: only versions that passed the gate can be approved")
    previous = tracking.alias_version(config, tracking.CHAMPION)
    if previous == model_version:  # the alias was already moved in the MLflow UI
        previous = tags.get("previous_champion") or None
    tracking.set_alias(config, tracking.CHAMPION, model_version)
    tracking.set_version_tags(config, model_version, {"approval": "approved", "approved_by": reviewer,
                                                      "approval_comment": comment[:500], "approved_us": now_us(),
                                                      "previous_champion": previous or ""})
    if tracking.alias_version(config, tracking.CHALLENGER) == model_version:
        tracking.delete_alias(config, tracking.CHALLENGER)
    if previous and previous != model_version:
        tracking.set_version_tags(config, previous, {"approval": "superseded"})
    resumed = answer_waiting_review(model_version, ReviewDecision(approve=True, reviewer=reviewer, comment=comment))
    return {"champion": model_version, "previous": previous, "approved_by": reviewer, "resumed_review": resumed}


@flow(name="reject")
def reject(model_version: str, reason: str, reviewer: str = "cli", config: LWDConfig | None = None) -> dict:
    """A reviewer turns a candidate down: it leaves ``challenger`` and carries who and why as tags."""
    config = config or load_config()
    if not reason.strip():
        raise ValueError("say why: a rejection needs a reason")
    if tracking.alias_version(config, tracking.CHAMPION) == model_version:
        raise ValueError(f"v{model_version} is the champion: approve another version to replace it")
    tracking.set_version_tags(config, model_version, {"approval": "rejected", "rejected_by": reviewer,
                                                      "rejection_reason": reason[:500], "rejected_us": now_us()})
    if tracking.alias_version(config, tracking.CHALLENGER) == model_version:
        tracking.delete_alias(config, tracking.CHALLENGER)
    resumed = answer_waiting_review(model_version, ReviewDecision(approve=False, reviewer=reviewer, comment=reason))
    return {"version": model_version, "approval": "rejected", "rejected_by": reviewer, "reason": reason[:500],
            "resumed_review": resumed}


@flow(name=REVIEW_FLOW)
def review(model_version: str, config: LWDConfig | None = None) -> dict:
    """Gate passed -> challenger -> the reviewer decides -> approved versions roll out."""
    from prefect.flow_runs import suspend_flow_run
    from prefect.runtime import deployment

    config = config or load_config()
    logger = get_run_logger()
    promoted = promote(model_version, wait_seconds=0, config=config)
    if not promoted["promoted"]:
        return {"version": model_version, "status": "refused", "reason": promoted["reason"]}
    if promoted["approval"] in TURN_PASSED:
        return {"version": model_version, "status": promoted["approval"]}
    if promoted["approved"]:  # auto-approve, or approved while this run was starting
        return {"version": model_version, "status": "approved", "rollout": rollout(model_version, config=config)}
    announce_review(config, model_version)
    if deployment.id:
        flush_events()  # the suspension ends this process: the announcement goes out first
        # Exits this process until the form is answered; the rerun returns the answer here.
        decision = suspend_flow_run(wait_for_input=ReviewDecision, key=f"review-v{model_version}",
                                    timeout=config.promotion.review_timeout_seconds)
    else:
        decision = wait_for_decision(config, model_version, config.promotion.approval_timeout_seconds)
        if decision is None:
            logger.info("v%s awaits a reviewer: the fleet keeps the current champion", model_version)
            return {"version": model_version, "status": "awaiting review"}
    if not decision.approve:
        reject(model_version, reason=decision.comment or "rejected in review", reviewer=decision.reviewer, config=config)
        return {"version": model_version, "status": "rejected", "reviewer": decision.reviewer}
    approve(model_version, reviewer=decision.reviewer, comment=decision.comment, config=config)
    return {"version": model_version, "status": "approved", "reviewer": decision.reviewer,
            "rollout": rollout(model_version, config=config)}


def announce_review(config, version: str) -> None:
    """Event ``lwd.model.awaiting-review`` once per version (a resumed review does not repeat it)."""
    tags = tracking.version_tags(config, version)
    if tags.get("review_requested_us"):
        return
    tracking.set_version_tags(config, version, {"review_requested_us": now_us()})
    emit_model_event(AWAITING_REVIEW, config.tracking.registered_model, version, {
        "gate_mean_success": tags.get("gate_mean_success", ""), "champion": tags.get("previous_champion", ""),
        "run_id": tags.get("run_id", ""), "url": config.tracking.version_page(version)})


@flow(name="watch-champion")
def watch_champion(config: LWDConfig | None = None) -> dict:
    """Ship what a reviewer approved by moving alias ``champion`` in the MLflow UI (scheduled, every
    30 s in prefect.yaml). Refuses a version whose gate did not pass and moves the alias back."""
    config = config or load_config()
    logger = get_run_logger()
    version = tracking.alias_version(config, tracking.CHAMPION)
    if version is None:
        return {"status": "no champion"}
    tags = tracking.version_tags(config, version)
    stable = (Coordinator(open_store(config)).desired().get("stable") or {}).get("version")
    if stable == tracking.release_name(version) or tags.get("rollout"):
        return {"version": version, "status": "nothing to ship"}
    if tags.get("gate") != "pass":
        return refuse(config, version, tags, deployed=tracking.version_of_release(stable), logger=logger)
    if active_review_run(version) is not None:
        return {"version": version, "status": "left to its review run"}
    if tags.get("approval") != "approved":
        approved = approve(version, reviewer="mlflow-ui", comment="alias champion moved in MLflow", config=config)
        if approved["resumed_review"]:
            return {"version": version, "status": "review resumed", "flow_run": approved["resumed_review"]}
    return {"version": version, "status": "shipped", "rollout": rollout(version, config=config)}


def refuse(config, version: str, tags: dict, deployed: str | None, logger) -> dict:
    reason = f"gate={tags.get('gate')!r}: alias champion was moved onto a version that did not pass its gate"
    restored = tags.get("previous_champion") or deployed
    if restored and restored != version:
        tracking.set_alias(config, tracking.CHAMPION, restored)
    else:
        tracking.delete_alias(config, tracking.CHAMPION)
    tracking.set_version_tags(config, version, {"approval": "refused", "refusal_reason": reason})
    emit_model_event(ROLLOUT_REFUSED, config.tracking.registered_model, version,
                     {"reason": reason, "champion": restored or ""})
    logger.error("refused v%s (%s); champion is back on %s", version, reason, restored or "nothing")
    return {"version": version, "status": "refused", "reason": reason, "champion": restored}


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

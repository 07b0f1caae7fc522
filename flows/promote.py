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

from prefect import flow, get_run_logger

from flows.rollout import rollout
from lwd_core.config import LWDConfig, load_config
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.promotion import (
    Approval,
    ApprovalResult,
    PromotionResult,
    RejectionResult,
    ReviewResult,
    ReviewStatus,
    WatchResult,
    WatchStatus,
    version_of_release,
)
from lwd_core.store import open_store
from tasks.events import flush_events
from tasks.promotion import (
    REVIEW_FLOW,
    ReviewDecision,
    active_review_run,
    announce_review,
    answer_waiting_review,
    champion_version,
    make_challenger,
    read_version,
    record_approval,
    record_rejection,
    refuse_champion,
    wait_for_decision,
)


@flow(name="promote")
def promote(model_version: str = "", wait_seconds: float = -1.0, config: LWDConfig | None = None) -> PromotionResult:
    """``wait_seconds`` < 0: the config's approval timeout."""
    config = config or load_config()
    logger = get_run_logger()
    if not model_version:
        raise ValueError("name the model version to promote")
    version = read_version(config, model_version)
    if not version.passed_gate:
        logger.warning("v%s did not pass the gate (gate=%s): not promoted", model_version, version.gate_label)
        return PromotionResult(version=model_version, promoted=False, reason=f"gate={version.gate_label}")
    if version.approval is not None and version.approval.decided:  # a resumed review: keep its decision
        return PromotionResult(version=model_version, promoted=True, approval=version.approval,
                               approved_by=version.approved_by)
    make_challenger(config, version)
    if config.promotion.auto_approve:
        reviewer = "auto-approve (promotion.auto_approve=true)"
        approve(model_version, reviewer=reviewer, config=config)
        return PromotionResult(version=model_version, promoted=True, approval=Approval.APPROVED, approved_by=reviewer)
    wait = config.promotion.approval_timeout_seconds if wait_seconds < 0 else wait_seconds
    logger.info("v%s is the challenger; approve it in the MLflow UI (set alias 'champion') or run "
                "`lwd approve %s`", model_version, model_version)
    decision = wait_for_decision(config, model_version, wait)
    if decision is not None and decision.approve:
        approve(model_version, reviewer=decision.reviewer, comment=decision.comment, config=config)
        return PromotionResult(version=model_version, promoted=True, approval=Approval.APPROVED,
                               approved_by=decision.reviewer)
    return PromotionResult(version=model_version, promoted=True, approval=Approval.PENDING)


@flow(name="approve")
def approve(model_version: str, reviewer: str = "cli", comment: str = "",
            config: LWDConfig | None = None) -> ApprovalResult:
    """Record a reviewer's approval: alias ``champion`` and who/when/why as version tags. A review run
    waiting for this version is answered, and ships it."""
    config = config or load_config()
    version = read_version(config, model_version)
    version.require_passed_gate("be approved")
    previous = record_approval(config, version, reviewer, comment)
    resumed = answer_waiting_review(model_version, ReviewDecision(approve=True, reviewer=reviewer, comment=comment))
    return ApprovalResult(champion=model_version, previous=previous, approved_by=reviewer, resumed_review=resumed)


@flow(name="reject")
def reject(model_version: str, reason: str, reviewer: str = "cli",
           config: LWDConfig | None = None) -> RejectionResult:
    """A reviewer turns a candidate down: it leaves ``challenger`` and carries who and why as tags."""
    config = config or load_config()
    if not reason.strip():
        raise ValueError("say why: a rejection needs a reason")
    if champion_version(config) == model_version:
        raise ValueError(f"v{model_version} is the champion: approve another version to replace it")
    record_rejection(config, model_version, reviewer, reason)
    resumed = answer_waiting_review(model_version, ReviewDecision(approve=False, reviewer=reviewer, comment=reason))
    return RejectionResult(version=model_version, rejected_by=reviewer, reason=reason[:500], resumed_review=resumed)


@flow(name=REVIEW_FLOW)
def review(model_version: str, config: LWDConfig | None = None) -> ReviewResult:
    """Gate passed -> challenger -> the reviewer decides -> approved versions roll out."""
    from prefect.flow_runs import suspend_flow_run
    from prefect.runtime import deployment

    config = config or load_config()
    logger = get_run_logger()
    promoted = promote(model_version, wait_seconds=0, config=config)
    if not promoted.promoted:
        return ReviewResult(version=model_version, status=ReviewStatus.REFUSED, reason=promoted.reason)
    if promoted.approval is not None and promoted.approval.review_over:
        return ReviewResult(version=model_version, status=ReviewStatus(promoted.approval.value))
    if promoted.approval is Approval.REJECTED:
        return ReviewResult(version=model_version, status=ReviewStatus.REJECTED)
    if promoted.approved:  # auto-approve, or approved while this run was starting
        return ReviewResult(version=model_version, status=ReviewStatus.APPROVED, reviewer=promoted.approved_by,
                            rollout=rollout(model_version, config=config))
    announce_review(config, read_version(config, model_version))
    if deployment.id:
        flush_events()  # the suspension ends this process: the announcement goes out first
        # Exits this process until the form is answered; the rerun returns the answer here.
        decision = suspend_flow_run(wait_for_input=ReviewDecision, key=f"review-v{model_version}",
                                    timeout=config.promotion.review_timeout_seconds)
    else:
        decision = wait_for_decision(config, model_version, config.promotion.approval_timeout_seconds)
        if decision is None:
            logger.info("v%s awaits a reviewer: the fleet keeps the current champion", model_version)
            return ReviewResult(version=model_version, status=ReviewStatus.AWAITING)
    if not decision.approve:
        reject(model_version, reason=decision.comment or "rejected in review", reviewer=decision.reviewer, config=config)
        return ReviewResult(version=model_version, status=ReviewStatus.REJECTED, reviewer=decision.reviewer)
    approve(model_version, reviewer=decision.reviewer, comment=decision.comment, config=config)
    return ReviewResult(version=model_version, status=ReviewStatus.APPROVED, reviewer=decision.reviewer,
                        rollout=rollout(model_version, config=config))


@flow(name="watch-champion")
def watch_champion(config: LWDConfig | None = None) -> WatchResult:
    """Ship what a reviewer approved by moving alias ``champion`` in the MLflow UI (scheduled, every
    30 s in prefect.yaml). Refuses a version whose gate did not pass and moves the alias back."""
    config = config or load_config()
    champion = champion_version(config)
    if champion is None:
        return WatchResult(status=WatchStatus.NO_CHAMPION)
    version = read_version(config, champion)
    stable = (Coordinator(open_store(config)).desired().get("stable") or {}).get("version")
    if stable == version.release or version.rollout:
        return WatchResult(status=WatchStatus.NOTHING_TO_SHIP, version=champion)
    if not version.passed_gate:
        reason, restored = refuse_champion(config, version, deployed=version_of_release(stable))
        get_run_logger().error("refused v%s (%s); champion is back on %s", champion, reason, restored or "nothing")
        return WatchResult(status=WatchStatus.REFUSED, version=champion, reason=reason, champion=restored)
    if active_review_run(champion) is not None:
        return WatchResult(status=WatchStatus.LEFT_TO_REVIEW, version=champion)
    if version.approval is not Approval.APPROVED:
        approved = approve(champion, reviewer="mlflow-ui", comment="alias champion moved in MLflow", config=config)
        if approved.resumed_review:
            return WatchResult(status=WatchStatus.REVIEW_RESUMED, version=champion, flow_run=approved.resumed_review)
    return WatchResult(status=WatchStatus.SHIPPED, version=champion, rollout=rollout(champion, config=config))

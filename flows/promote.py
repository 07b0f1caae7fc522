"""Promotion: a passing candidate gets alias ``challenger``; a reviewer makes it ``champion``.

Reviewers approve in the MLflow UI by moving alias ``champion`` onto the version (or run
``lwd approve VERSION``). Nothing becomes champion without that unless ``promotion.auto_approve`` is
explicitly on.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from lwd_core.config import LWDConfig, load_config
from lwd_core.store import now_us
from tasks import tracking


@flow(name="approve")
def approve(model_version: str, reviewer: str = "cli", config: LWDConfig | None = None) -> dict:
    config = config or load_config()
    tags = tracking.version_tags(config, model_version)
    if tags.get("gate") != "pass":
        raise ValueError(f"v{model_version} has gate={tags.get('gate')!r}: only versions that passed the gate can be approved")
    previous = tracking.alias_version(config, tracking.CHAMPION)
    if previous == model_version:  # the alias was already moved in the MLflow UI
        previous = tags.get("previous_champion") or None
    tracking.set_alias(config, tracking.CHAMPION, model_version)
    tracking.set_version_tags(config, model_version, {"approval": "approved", "approved_by": reviewer,
                                                      "approved_us": now_us(),
                                                      "previous_champion": previous or ""})
    if tracking.alias_version(config, tracking.CHALLENGER) == model_version:
        tracking.delete_alias(config, tracking.CHALLENGER)
    if previous and previous != model_version:
        tracking.set_version_tags(config, previous, {"approval": "superseded"})
    return {"champion": model_version, "previous": previous, "approved_by": reviewer}


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
    return {"version": model_version, "approval": "rejected", "rejected_by": reviewer, "reason": reason[:500]}


def is_approved(config, version: str) -> bool:
    return tracking.alias_version(config, tracking.CHAMPION) == version


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
    tracking.set_alias(config, tracking.CHALLENGER, model_version)
    tracking.set_version_tags(config, model_version, {
        "approval": "pending", "previous_champion": tracking.alias_version(config, tracking.CHAMPION) or ""})
    if config.promotion.auto_approve:
        approve(model_version, reviewer="auto-approve (promotion.auto_approve=true)", config=config)
        return {"version": model_version, "promoted": True, "approved": True, "approved_by": "auto-approve"}
    wait = config.promotion.approval_timeout_seconds if wait_seconds < 0 else wait_seconds
    logger.info("v%s is the challenger; approve it in the MLflow UI (set alias 'champion') or run "
                "`lwd approve %s`", model_version, model_version)
    deadline = time.monotonic() + wait
    while not is_approved(config, model_version) and time.monotonic() < deadline:
        time.sleep(2.0)
    approved = is_approved(config, model_version)
    if approved and tracking.version_tags(config, model_version).get("approval") != "approved":
        # Approved in the MLflow UI by moving the alias: record it like a CLI approval.
        approve(model_version, reviewer="mlflow-ui", config=config)
    return {"version": model_version, "promoted": True, "approved": approved}

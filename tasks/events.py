"""Prefect custom events: the fleet's uploads (deployment triggers match on them) and the review and
rollout milestones that automations turn into notifications (deployments/notifications.py)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

EPISODE_UPLOADED = "lwd.episode.uploaded"
AWAITING_REVIEW = "lwd.model.awaiting-review"
ROLLOUT_COMPLETED = "lwd.rollout.completed"
ROLLOUT_ROLLED_BACK = "lwd.rollout.rolled-back"
ROLLOUT_REFUSED = "lwd.rollout.refused"
MODEL_EVENTS = (AWAITING_REVIEW, ROLLOUT_COMPLETED, ROLLOUT_ROLLED_BACK, ROLLOUT_REFUSED)


def robot_resource(robot_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"lwd.robot.{robot_id}", "prefect.resource.name": robot_id}


def model_resource(registered_model: str, version: str) -> dict[str, str]:
    return {"prefect.resource.id": f"lwd.model.{registered_model}.v{version}",
            "prefect.resource.name": f"{registered_model} v{version}"}


def emit_model_event(event: str, registered_model: str, version: str, payload: dict[str, Any]) -> None:
    """From inside a flow run (which always has an API to send to): the version is the resource, the
    payload carries what a notification shows (links, rates, reasons)."""
    from prefect.events import emit_event

    emit_event(event=event, resource=model_resource(registered_model, version),
               payload={"version": version, **payload})


def emit_episode_uploaded(upload: dict[str, Any]) -> None:
    """Edge-client notifier: one event per uploaded episode.

    Only sent to a running Prefect server (PREFECT_API_URL set): without one, an actor process would
    start its own temporary server, and nothing could trigger on its events anyway. The scheduled
    ingest still lists ``raw/``, so no episode depends on its event.
    """
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return

    emit_event(
        event=EPISODE_UPLOADED,
        resource=robot_resource(upload["robot_id"]),
        related=[{"prefect.resource.id": f"lwd.episode.{upload['episode_id']}", "prefect.resource.role": "episode"}],
        payload=upload,
    )


def flush_events(timeout_s: float = 10.0) -> bool:
    """Deliver queued events before the process exits; whether all went out within ``timeout_s``."""
    from prefect.events.worker import EventsWorker

    _, undelivered = EventsWorker.drain_all(timeout=timeout_s)
    return not undelivered


def exit_after_events(code: int, timeout_s: float = 10.0) -> NoReturn:
    """End the process with ``code`` once its queued events went out, or after ``timeout_s`` without
    the rest: with the Prefect API gone, Prefect's exit hook would try each queued event for seconds,
    hours for an actor's backlog. For events nothing depends on (ingest lists ``raw/`` itself)."""
    if flush_events(timeout_s):
        sys.exit(code)
    logging.getLogger("lwd.events").warning(
        "the Prefect API did not take this process's last events within %.0f s: exiting without them", timeout_s)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

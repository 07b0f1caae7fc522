"""Prefect custom events emitted by the fleet. Deployment triggers match on these names."""

from __future__ import annotations

from typing import Any

EPISODE_UPLOADED = "lwd.episode.uploaded"


def robot_resource(robot_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"lwd.robot.{robot_id}", "prefect.resource.name": robot_id}


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


def flush_events(timeout_s: float = 10.0) -> None:
    """Deliver queued events before the process exits."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout_s)

"""Progress of long steps where each user looks: a rich bar in the terminal (``lwd`` commands) and a
Prefect progress artifact on the flow run's page (the dashboard)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress(description: str, total: int, key: str | None = None,
             min_interval_s: float = 2.0) -> Iterator[Callable[[int], None]]:
    """Yields ``update(done)``. The bar redraws on every call; the artifact (inside a Prefect run only)
    at most every ``min_interval_s``, and once at the end."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    artifact = _progress_artifact(description, key)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=_stderr_console(), transient=False)
    task = bar.add_task(description, total=max(total, 1))
    last = {"sent": 0.0, "done": 0}

    def percent(done: int) -> float:
        return 100.0 * done / total if total else 100.0

    def update(done: int) -> None:
        last["done"] = done
        bar.update(task, completed=done)
        if artifact and time.monotonic() - last["sent"] >= min_interval_s:
            artifact(percent(done))
            last["sent"] = time.monotonic()

    with bar:
        yield update
    if artifact:
        artifact(percent(last["done"]))


def _stderr_console():
    from rich.console import Console

    # A bar only on a terminal; logs and captured output stay free of redraws.
    return Console(file=sys.stderr, quiet=not sys.stderr.isatty())


def _progress_artifact(description: str, key: str | None) -> Callable[[float], None] | None:
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)

    def send(percent: float) -> None:
        update_progress_artifact(artifact_id=artifact_id, progress=round(min(percent, 100.0), 1))

    return send

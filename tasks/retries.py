"""How the flywheel's tasks retry: the object store or the registry briefly unreachable passes within
these delays; a refusal never does."""

from __future__ import annotations

RETRY_DELAYS_S = [1, 5, 20]


def unless_refused(task, task_run, state) -> bool:
    """Retry what may pass next time (the registry or store briefly unreachable), never a refusal."""
    return not isinstance(state.result(raise_on_failure=False), PermissionError | ValueError)

"""What `lwd` sets for the services it starts, unless the user already set it: one home for these, so a
command behaves the same whether `make`, a test, a bench script or a user's shell runs it.

These are the services' own environment variables (Prefect, MLflow read them when imported), so they are
set before either is imported; LWD's settings stay in the config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

SERVICE_DEFAULTS = {
    # Prefect's ephemeral API server gets 20 s to start by default: on a busy 2-core machine (CI, a
    # training run beside it) its first start with migrations takes longer and the command failed.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # No telemetry: these machines are offline, and the embedded server's analytics heartbeat met its
    # fresh SQLite database still locked by migrations and logged a traceback.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # MLflow checks a logged model's pip requirements against the network index; there is none here.
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
    # A PostgreSQL restart or a Redis outage behind a Prefect server answers 500 for a few seconds: retried
    # like the 502/503 the client always retries, a round rides it out instead of failing (bench/chaos.py).
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
}


def apply_service_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Fill in each default the environment does not set; returns the ones applied."""
    applied = {name: value for name, value in SERVICE_DEFAULTS.items() if name not in environ}
    environ.update(applied)
    return applied


_RETRY_MESSAGES = ("Encountered retryable exception during request", "Received response with retryable status code")


class _ApiRetriesAsWarnings(logging.Filter):
    """Prefect's client logs its retries at DEBUG, so a round waiting on a failing server looked hung."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_RETRY_MESSAGES):  # the client's other records, as Prefect's level has them
            return record.levelno >= logging.getLogger("prefect").getEffectiveLevel()
        record.msg, record.args = f"the Prefect API is failing, retrying: {message}", ()
        record.levelno, record.levelname, record.exc_info, record.exc_text = logging.WARNING, "WARNING", None, None
        return True


def log_api_retries() -> None:
    """Show the Prefect client's retries as warnings (each once per process; call after importing Prefect)."""
    client = logging.getLogger("prefect.client")
    if not any(isinstance(existing, _ApiRetriesAsWarnings) for existing in client.filters):
        client.addFilter(_ApiRetriesAsWarnings())
        client.setLevel(logging.DEBUG)  # the filter keeps only the retries of its debug records

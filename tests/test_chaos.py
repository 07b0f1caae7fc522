"""Faults on the production stack during a flywheel round (bench/chaos.py, one test per fault): the
round finishes or resumes on retry, no episode is lost or duplicated, no half-registered version is
served, and the run's output names the failing service. Slow: a fresh stack and a round each."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from chaos import FAULTS, can_mount_tmpfs, run_fault  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_the_round_survives(name, tmp_path):
    missing = [binary for binary in ("initdb", "postgres", "redis-server") if shutil.which(binary) is None]
    if missing:
        pytest.skip(f"private PostgreSQL and Redis instances need {', '.join(missing)} on PATH")
    if name == "store-full-during-ingest" and not can_mount_tmpfs():
        pytest.skip("a full object store needs a small tmpfs, and mounting one is not permitted here")
    result = run_fault(FAULTS[name], tmp_path)
    assert result["survived"], result

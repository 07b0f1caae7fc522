"""The layer order and the "config is passed, not smuggled" rule, checked on the source."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    beside_python = Path(sys.executable).with_name("lint-imports")
    exe = str(beside_python) if beside_python.exists() else shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: `uv sync` installs lint-imports"
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_no_stage_steers_another_through_the_environment():
    assignment = re.compile(r"os\.environ(\[[^\]]+\]\s*=|\.update\(|\.setdefault\(\s*['\"]LWD_)")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for folder in ("flows", "tasks", "lwd_core")
                 for path in (ROOT / folder).rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1) if assignment.search(line)]
    assert not offenders, offenders

"""Project layout and the rule that lwd_core is a pure library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "mlflow")


def test_top_level_layout():
    for name in ("flows", "tasks", "lwd_core", "deployments", "infra", "tests", "bench"):
        assert (ROOT / name).is_dir(), name
    assert (ROOT / "prefect.yaml").is_file()


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value.split(".")[0])
    return found


def test_lwd_core_source_never_imports_prefect_or_mlflow():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_modules(path) & set(FORBIDDEN))
        for path in (ROOT / "lwd_core").rglob("*.py")
    }
    offenders = {path: mods for path, mods in offenders.items() if mods}
    assert not offenders, f"lwd_core must stay pure: {offenders}"


def test_importing_all_of_lwd_core_loads_neither():
    """Transitively too: import every lwd_core module in a fresh interpreter and inspect sys.modules."""
    code = (
        "import importlib, pkgutil, sys, lwd_core\n"
        "for m in pkgutil.walk_packages(lwd_core.__path__, 'lwd_core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(len(list(pkgutil.walk_packages(lwd_core.__path__, 'lwd_core.'))))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 4


def test_the_purity_check_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom prefect import flow\nimportlib.import_module('mlflow.pyfunc')\n")
    assert _imported_modules(bad) >= {"prefect", "mlflow"}

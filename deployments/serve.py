"""Serve every deployment in prefect.yaml from one local process, with the same parameters,
schedules and event triggers, without a work pool: ``python -m deployments.serve [NAME ...]``.

prefect.yaml stays the single source of truth; this reads it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"


def load_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["deployments"]


def load_flow(entrypoint: str):
    """The flow object an entrypoint ``path/to/file.py:function`` names."""
    file, _, name = entrypoint.partition(":")
    module_name = file.removesuffix(".py").replace("/", ".")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(module_name)
    return getattr(module, name)


def to_deployments(specs: list[dict[str, Any]]):
    from prefect.events import DeploymentEventTrigger

    deployments = []
    for spec in specs:
        flow = load_flow(spec["entrypoint"])
        intervals = [s["interval"] for s in spec.get("schedules", []) if "interval" in s]
        triggers = [DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
                    for t in spec.get("triggers", [])]
        deployments.append(flow.to_deployment(name=spec["name"], parameters=spec.get("parameters") or {},
                                              interval=intervals or None, triggers=triggers or None,
                                              description=spec.get("description")))
    return deployments


def main(argv: list[str] | None = None) -> None:
    """``python -m deployments.serve [NAME ...]``: every deployment, or only those named."""
    from flows.service_defaults import apply_service_defaults, log_api_retries

    apply_service_defaults()  # before Prefect is imported
    from prefect import serve

    log_api_retries()

    names = set(sys.argv[1:] if argv is None else argv)
    specs = [spec for spec in load_specs() if not names or spec["name"] in names]
    unknown = names - {spec["name"] for spec in specs}
    if unknown:
        raise SystemExit(f"no such deployment in prefect.yaml: {', '.join(sorted(unknown))}")
    serve(*to_deployments(specs))


if __name__ == "__main__":
    main()

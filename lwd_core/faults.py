"""Named fail points for fault-injection tests: ``LWD_FAILPOINTS="edge.after_put=3"`` makes the 3rd
pass through ``failpoint("edge.after_put")`` kill the process as ``kill -9`` would (no cleanup, no
flush). Unset in production; a fail point costs one dict lookup.
"""

from __future__ import annotations

import os

_counts: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get("LWD_FAILPOINTS", "")
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition("=")
        armed[name] = int(nth or 1)
    return armed


def failpoint(name: str) -> None:
    armed = _armed()
    if name not in armed:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == armed[name]:
        os._exit(137)

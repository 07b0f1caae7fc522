"""What a trained value model learned, for the DIVL vs expectile ablation: DIVL's adaptive bootstrap
quantile tau and the value distribution's entropy over training, and the learned values on replay states
grouped by who acted (demonstrations, human takeovers, the rest: autonomous rollouts and play), beside
those states' Monte Carlo returns."""

from __future__ import annotations

from typing import Any

import numpy as np

from lwd_core.algo.trainer import TrainResult
from lwd_core.algo.transition_cache import Transitions

# Replay rows per group (evenly spaced through the buffers, so the same rows for the same data).
ROWS_PER_GROUP = 512


def row_groups(data: Transitions) -> dict[str, np.ndarray]:
    """Row indices of each group: demonstrations, human takeovers (intervention rows of rollouts), the rest."""
    demo = np.asarray(data["demo"], bool)
    takeover = np.asarray(data["intervention"], bool) & ~demo
    return {"demonstrations": np.flatnonzero(demo), "human takeovers": np.flatnonzero(takeover),
            "autonomous and play": np.flatnonzero(~demo & ~takeover)}


def value_diagnostics(result: TrainResult, histories: list[list[dict[str, float]]],
                      rows: int = ROWS_PER_GROUP) -> dict[str, Any] | None:
    """``histories``: the logged metric windows of each training run in order (offline stage, then each
    online round), for tau over training. None for an agent without a value model."""
    buffers = result.buffers
    parts = [data for data in (buffers.offline, buffers.online) if data is not None] if buffers else []
    if not parts:
        return None
    data = {key: np.concatenate([part[key] for part in parts]) for key in ("obs", "tokens", "mc_return", "demo",
                                                                           "intervention")}
    windows = [window for history in histories for window in history]
    report: dict[str, Any] = {
        "training": {
            "tau": [round(w["divl_tau"], 4) for w in windows if "divl_tau" in w],
            "entropy": [round(w["divl_entropy"], 4) for w in windows if "divl_entropy" in w],
            # Window count at the end of each run (offline stage, round 1, ...), to mark the stages.
            "run_ends": np.cumsum([len(h) for h in histories]).tolist(),
        },
        "groups": {},
    }
    atoms = getattr(result.learner.agent, "atoms", None)
    if atoms is not None:
        report["atoms"] = np.asarray(atoms).round(4).tolist()
    for group, index in row_groups(data).items():
        if len(index) == 0:
            continue
        index = index[np.linspace(0, len(index) - 1, min(rows, len(index))).astype(int)]
        stats = result.learner.value_statistics(result.state, data["obs"][index], data["tokens"][index])
        if not stats:
            return None
        value = stats.get("mean", stats.get("value"))
        entry = {"rows": int(len(index)), "mc_return": float(data["mc_return"][index].mean()),
                 "value": float(value.mean())}
        if "probs" in stats:  # DIVL: the mean learned return distribution, and what it bootstraps from
            entry.update(distribution=stats["probs"].mean(0).round(5).tolist(), bootstrap=float(stats["bootstrap"].mean()),
                         tau=float(stats["tau"].mean()), entropy=float(stats["entropy"].mean()))
        report["groups"][group] = entry
    return report

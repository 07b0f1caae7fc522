"""The two release decisions, as pure functions of what was measured (flows do the measuring).

- Evaluation gate (non-inferiority): the candidate passes when its mean success on the sim suite is at
  least the champion's minus ``tolerance``, on the same evaluation episodes; with no champion yet it
  must reach ``min_success``.
- Canary: the canary robots' success on the new release must not fall more than ``tolerance`` below the
  previous release's success on the fleet; a canary that did not finish its episodes in time fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    rule: str
    candidate_mean: float
    champion_mean: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_decision(candidate_eval: dict, champion_eval: dict | None, tolerance: float, min_success: float,
                  champion: str | None = None) -> GateDecision:
    """``*_eval``: :func:`lwd_core.sim.evaluate.summarize` outputs on the same seeds."""
    candidate_mean = candidate_eval["all"]["success_rate"]
    if champion_eval is None:
        return GateDecision(candidate_mean >= min_success, f"no champion: mean >= {min_success}", candidate_mean, None)
    champion_mean = champion_eval["all"]["success_rate"]
    return GateDecision(candidate_mean >= champion_mean - tolerance,
                        f"mean >= champion{f' v{champion}' if champion else ''} - {tolerance}",
                        candidate_mean, champion_mean)


@dataclass(frozen=True)
class CanaryDecision:
    promote: bool
    reason: str
    canary_rate: float
    baseline_rate: float


def canary_decision(canary_episodes: int, canary_successes: int, baseline_episodes: int, baseline_successes: int,
                    finished_in_time: bool, tolerance: float) -> CanaryDecision:
    canary_rate = canary_successes / canary_episodes if canary_episodes else 0.0
    baseline_rate = baseline_successes / baseline_episodes if baseline_episodes else 0.0
    if not finished_in_time:
        return CanaryDecision(False, "canary timeout", canary_rate, baseline_rate)
    if canary_rate < baseline_rate - tolerance:
        return CanaryDecision(False, f"canary {canary_rate:.2f} < baseline {baseline_rate:.2f}", canary_rate,
                              baseline_rate)
    return CanaryDecision(True, f"canary {canary_rate:.2f} >= baseline {baseline_rate:.2f} - {tolerance}",
                          canary_rate, baseline_rate)

"""The two release decisions, as pure functions of what was measured (flows do the measuring).

- Evaluation gate (non-inferiority): the candidate passes when its mean success on the sim suite is at
  least the champion's minus ``tolerance``, on the same evaluation episodes; with no champion yet it
  must reach ``min_success``.
- Canary: the canary robots' success on the new release must not fall more than ``tolerance`` below the
  previous release's success on the fleet; a canary that did not finish its episodes in time fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


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


class GateResult(BaseModel):
    """What the evaluation gate flow returns and records: the verdict and both evaluations
    (:func:`lwd_core.sim.evaluate.summarize` outputs on the same seeds)."""

    model_config = ConfigDict(frozen=True)

    candidate: str
    champion: str | None
    passed: bool
    rule: str
    candidate_mean: float
    champion_mean: float | None
    candidate_eval: dict[str, Any]
    champion_eval: dict[str, Any] | None

    @classmethod
    def of(cls, candidate: str, champion: str | None, decision: GateDecision, candidate_eval: dict,
           champion_eval: dict | None) -> GateResult:
        return cls(candidate=candidate, champion=champion, **decision.as_dict(), candidate_eval=candidate_eval,
                   champion_eval=champion_eval)

    @property
    def versus(self) -> str:
        """Whom the candidate was judged against, for a reader (a version gated against itself had none)."""
        return f"champion v{self.champion}" if self.champion_eval is not None else "no champion"


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sensible at 0 or n successes and for small n."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> tuple[float, float]:
    """95% interval of rate a minus rate b (Newcombe's hybrid score interval, from the two Wilson
    intervals): sound for small samples and rates near 0 or 1."""
    rate_a = successes_a / trials_a if trials_a else 0.0
    rate_b = successes_b / trials_b if trials_b else 0.0
    (low_a, high_a), (low_b, high_b) = wilson_interval(successes_a, trials_a), wilson_interval(successes_b, trials_b)
    difference = rate_a - rate_b
    return (difference - math.sqrt((rate_a - low_a) ** 2 + (high_b - rate_b) ** 2),
            difference + math.sqrt((high_a - rate_a) ** 2 + (rate_b - low_b) ** 2))


@dataclass(frozen=True)
class CanaryDecision:
    promote: bool
    reason: str
    canary_rate: float
    baseline_rate: float
    difference_low: float  # 95% interval of canary minus baseline autonomous success
    difference_high: float


def canary_decision(canary_episodes: int, canary_successes: int, baseline_episodes: int, baseline_successes: int,
                    enough_evidence: bool, tolerance: float) -> CanaryDecision:
    """Non-inferiority on autonomous success: the canary reaches every robot only when it has the
    configured evidence and the 95% interval of (canary - baseline) lies above ``-tolerance``; without
    the evidence in time, or with an interval reaching below, it rolls back."""
    canary_rate = canary_successes / canary_episodes if canary_episodes else 0.0
    baseline_rate = baseline_successes / baseline_episodes if baseline_episodes else 0.0
    low, high = difference_interval(canary_successes, canary_episodes, baseline_successes, baseline_episodes)
    shown = (f"canary {canary_rate:.2f} (n={canary_episodes}) vs baseline {baseline_rate:.2f} "
             f"(n={baseline_episodes}): difference 95% CI [{low:+.2f}, {high:+.2f}]")
    if not enough_evidence:
        return CanaryDecision(False, f"canary timeout before enough evidence; {shown}", canary_rate, baseline_rate,
                              low, high)
    if not baseline_episodes:  # the previous release never ran on the fleet: nothing to be worse than
        return CanaryDecision(True, f"no baseline record; canary {canary_rate:.2f} (n={canary_episodes})",
                              canary_rate, baseline_rate, low, high)
    if low < -tolerance:
        return CanaryDecision(False, f"{shown} reaches below -{tolerance}", canary_rate, baseline_rate, low, high)
    return CanaryDecision(True, f"{shown} lies above -{tolerance}", canary_rate, baseline_rate, low, high)


def gate_metrics(candidate_eval: dict, champion_eval: dict | None) -> dict[str, float]:
    """What a gate run logs: mean and per-task success of the candidate (short and long groups where
    the evaluation has them), and the champion's mean."""
    metrics = {"candidate_mean_success": candidate_eval["all"]["success_rate"],
               **{f"success/{t}": r["success_rate"] for t, r in candidate_eval["tasks"].items()},
               **{f"success_{g}": candidate_eval[g]["success_rate"] for g in ("short", "long") if g in candidate_eval}}
    if champion_eval:
        metrics["champion_mean_success"] = champion_eval["all"]["success_rate"]
    return metrics


def gate_table(candidate_eval: dict, champion_eval: dict | None) -> list[dict[str, Any]]:
    """Per task: the candidate's success with its 95% interval and n beside the champion's (same
    seeds), and the change in points."""
    def interval(row: dict) -> str:
        return f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"

    rows = []
    for task, row in candidate_eval["tasks"].items():
        other = champion_eval["tasks"][task] if champion_eval else None
        rows.append({"task": task, "n": row.get("episodes"), "candidate": round(row["success_rate"], 3),
                     "candidate_ci": interval(row),
                     "champion": None if other is None else round(other["success_rate"], 3),
                     "champion_ci": None if other is None else interval(other),
                     "change_pts": None if other is None else round(100 * (row["success_rate"] - other["success_rate"]))})
    return rows


def gate_report_markdown(gate: GateResult, gate_run_url: str = "") -> str:
    """What a reviewer reads on the model version page: per-task success of the candidate against the
    champion on the same episodes, with 95% Wilson intervals, and the decision."""
    candidate, champion, candidate_eval, champion_eval = gate.candidate, gate.champion, gate.candidate_eval, gate.champion_eval

    def cell(row: dict | None) -> str:
        if row is None:
            return "-"
        return f"{row['success_rate']:.0%} ({row['ci_low']:.0%} to {row['ci_high']:.0%}, n={row['episodes']})"

    lines = [f"### Evaluation gate: {'PASS' if gate.passed else 'FAIL'} (v{candidate} vs {gate.versus})", "",
             f"Rule: {gate.rule}. Success rate, 95% Wilson interval, episodes; same seeds for both.", "",
             f"| task | v{candidate} | {'v' + champion if champion_eval is not None else 'champion'} | change |",
             "|---|---|---|---|"]
    for group, title in (("tasks", None), ("short", "**short tasks**"), ("long", "**long tasks**"), ("all", "**mean**")):
        rows = candidate_eval[group].items() if group == "tasks" else (
            [(title, candidate_eval[group])] if group in candidate_eval else [])
        for name, row in rows:
            other = (champion_eval or {}).get("tasks", {}).get(name) if group == "tasks" else (
                (champion_eval or {}).get(group))
            change = f"{100 * (row['success_rate'] - other['success_rate']):+.0f} pts" if other else "-"
            lines.append(f"| {name} | {cell(row)} | {cell(other)} | {change} |")
    if gate_run_url:
        lines += ["", f"[Gate run]({gate_run_url}): parameters, plot, per-episode outcomes."]
    return "\n".join(lines)

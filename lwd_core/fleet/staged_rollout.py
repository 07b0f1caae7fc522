"""The fleet side of a staged rollout, without Prefect or MLflow: which robots are live, a canary
watched and judged against the stable release, and a release distributed to every robot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lwd_core.data.outcomes import OutcomeCounts
from lwd_core.fleet.coordinator import Coordinator, Release, now_us, tally
from lwd_core.gating import CanaryDecision, canary_decision


def live_robots(coordinator: Coordinator, heartbeat_timeout_s: float) -> list[str]:
    now = now_us()
    return sorted(r for r, s in coordinator.actors().items() if (now - s["heartbeat_us"]) / 1e6 <= heartbeat_timeout_s)


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def judge_canary(coordinator: Coordinator, release: Release, canary: list[str], baseline_version: str,
                 min_episodes: int, min_robots: int, timeout_s: float, tolerance: float
                 ) -> tuple[CanaryDecision, dict[str, Any]]:
    """Waits until the canary robots finished ``min_episodes`` episodes on ``release``, from at least
    ``min_robots`` of them (or the timeout), then :func:`lwd_core.gating.canary_decision` against the
    baseline release's fleet record; with the report a rollout shows and records."""

    min_robots = min(min_robots, len(canary))  # a fleet smaller than the minimum: every robot is the canary

    def evidence(actors: dict[str, dict[str, Any]]) -> tuple[OutcomeCounts, list[str]]:
        """The canary's outcomes on the release and the robots they came from, from one read of the reports."""
        counts = {robot: tally(actors, release.version, [robot]) for robot in canary}
        return sum(counts.values(), OutcomeCounts()), [robot for robot, seen in counts.items() if seen.episodes]

    def enough() -> bool:
        outcomes, robots = evidence(coordinator.actors())
        return outcomes.episodes >= min_episodes and len(robots) >= min_robots

    enough_evidence = wait_until(enough, timeout_s)
    # Autonomous success on both sides (a rescue by the teleoperator is not the release's success), the
    # baseline from the robots working the canary's tasks: robots work different tasks, and the canary's
    # are not the fleet's average.
    actors = coordinator.actors()
    canary_tasks = {actors.get(robot, {}).get("task_id") for robot in canary}
    same_tasks = [robot for robot, state in actors.items() if state.get("task_id") in canary_tasks]
    (seen, robots_seen), baseline = evidence(actors), tally(actors, baseline_version, same_tasks)
    verdict = canary_decision(seen.episodes, seen.autonomous_successes, baseline.episodes,
                              baseline.autonomous_successes, enough_evidence, tolerance)
    report = {"robots": canary, "robots_seen": len(robots_seen), "episodes": seen.episodes,
              "autonomous_success": verdict.canary_rate, "baseline_version": baseline_version,
              "baseline_autonomous_success": verdict.baseline_rate, "baseline_episodes": baseline.episodes,
              "difference_ci": [round(verdict.difference_low, 3), round(verdict.difference_high, 3)],
              "rule": f"needs >= {min_episodes} episodes from >= {min_robots} robots; promote when the 95% "
                      f"interval of canary - baseline autonomous success lies above -{tolerance}",
              "watched": enough_evidence, "reason": verdict.reason}
    return verdict, report


def distribute(coordinator: Coordinator, release: Release, robots: list[str], timeout_s: float) -> dict[str, Any]:
    """Every robot gets ``release``; waits until the live ``robots`` run it (or the timeout)."""
    coordinator.publish_all(release)
    everyone = wait_until(lambda: coordinator.running(release.version, robots), timeout_s) if robots else True
    return distribution_summary(everyone, coordinator.distribution_latencies_s(release.version))


def distribution_summary(everyone: bool, latencies: list[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": "deployed" if everyone else "deployed-partially",
                               "distribution_latency_s": latencies}
    if latencies:
        summary["distribution_latency_p50_s"] = float(np.percentile(latencies, 50))
        summary["distribution_latency_p99_s"] = float(np.percentile(latencies, 99))
    return summary

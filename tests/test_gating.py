"""The gate and canary decisions as pure functions: no Prefect, MLflow or simulator."""

from __future__ import annotations

from lwd_core.gating import (
    canary_decision,
    gate_decision,
    gate_metrics,
    gate_table,
)


def _eval(rate: float) -> dict:
    return {"all": {"success_rate": rate}}


def test_gate_is_non_inferiority_against_the_champion():
    assert gate_decision(_eval(0.70), _eval(0.74), tolerance=0.05, min_success=0.0).passed
    failed = gate_decision(_eval(0.68), _eval(0.74), tolerance=0.05, min_success=0.0, champion="3")
    assert not failed.passed and "v3" in failed.rule and failed.champion_mean == 0.74


def test_gate_without_a_champion_needs_the_minimum():
    assert gate_decision(_eval(0.2), None, tolerance=0.05, min_success=0.2).passed
    assert not gate_decision(_eval(0.1), None, tolerance=0.05, min_success=0.2).passed


def test_canary_rolls_back_on_regression_or_timeout():
    assert canary_decision(40, 31, 200, 160, enough_evidence=True, tolerance=0.25).promote  # 0.78 vs 0.80
    regressed = canary_decision(40, 10, 200, 160, enough_evidence=True, tolerance=0.25)  # 0.25 vs 0.80
    assert not regressed.promote and "reaches below -0.25" in regressed.reason and "(n=40)" in regressed.reason
    # The same rates on 4 episodes: the interval is too wide to show the canary is not worse.
    assert not canary_decision(4, 3, 20, 16, enough_evidence=True, tolerance=0.25).promote
    late = canary_decision(40, 40, 200, 160, enough_evidence=False, tolerance=0.25)
    assert not late.promote and late.reason.startswith("canary timeout before enough evidence")
    # No baseline episodes yet: nothing to be worse than.
    assert canary_decision(2, 0, 0, 0, enough_evidence=True, tolerance=0.25).promote


def _task_eval(rates: dict[str, float]) -> dict:
    rows = {t: {"success_rate": r, "ci_low": r - 0.1, "ci_high": r + 0.1} for t, r in rates.items()}
    return {"tasks": rows, "all": {"success_rate": sum(rates.values()) / len(rates)}}


def test_gate_records_what_the_reviewer_compares():
    candidate, champion = _task_eval({"a": 0.5, "b": 1.0}), _task_eval({"a": 0.25, "b": 0.75})
    assert gate_metrics(candidate, champion) == {"candidate_mean_success": 0.75, "success/a": 0.5, "success/b": 1.0,
                                                 "champion_mean_success": 0.5}
    assert "champion_mean_success" not in gate_metrics(candidate, None)
    assert gate_table(candidate, champion)[0] == {"task": "a", "n": None, "candidate": 0.5, "candidate_ci": "[0.40, 0.60]",
                                                  "champion": 0.25, "champion_ci": "[0.15, 0.35]", "change_pts": 25}
    assert gate_table(candidate, None)[1]["champion"] is None


def test_a_canary_is_judged_against_the_stable_release_on_the_fleet(local_store, keyring):
    from conftest import publisher
    from test_fleet import tiny_policy_checkpoint

    from lwd_core.fleet.staged_rollout import (
        distribute,
        distribution_summary,
        judge_canary,
        live_robots,
    )

    coordinator = publisher(local_store, keyring)
    stable, candidate = (tiny_policy_checkpoint(local_store, f"checkpoints/v{i}", i) for i in (1, 2))
    # The candidate's two episodes both ended in success, but the teleoperator rescued both: they are
    # assisted, so its autonomous success is 0 and the canary regresses.
    record = {stable.version: {"episodes": 10, "autonomous_successes": 9},
              candidate.version: {"episodes": 2, "assisted_episodes": 2, "assisted_successes": 2}}
    coordinator.report("robot-00", {"running_version": candidate.version, "per_version": record})
    assert live_robots(coordinator, heartbeat_timeout_s=60) == ["robot-00"]
    verdict, report = judge_canary(coordinator, candidate, ["robot-00"], stable.version, min_episodes=2,
                                   min_robots=1, timeout_s=5, tolerance=0.25)
    assert not verdict.promote and report["watched"] and report["baseline_autonomous_success"] == 0.9
    assert report["autonomous_success"] == 0.0
    late, _ = judge_canary(coordinator, candidate, ["robot-00"], stable.version, 3, 1, timeout_s=0.0, tolerance=1.0)
    assert late.reason.startswith("canary timeout before enough evidence")
    deployed = distribute(coordinator, candidate, ["robot-00"], timeout_s=5)
    assert deployed == {"status": "deployed", "distribution_latency_s": []}
    assert coordinator.desired()["stable"]["version"] == candidate.version
    partial = distribution_summary(False, [1.0, 3.0])
    assert partial["status"] == "deployed-partially" and partial["distribution_latency_p50_s"] == 2.0


def test_checkpoint_evaluation_is_cached_and_paired_without_prefect(local_store):
    from test_fleet import tiny_policy_checkpoint

    from lwd_core.sim.evaluate import evaluate_checkpoint, paired_comparison
    from lwd_core.suite import get_task

    release = tiny_policy_checkpoint(local_store, "checkpoints/v1", 0)
    suite = [get_task("restock-horizontal")]
    first = evaluate_checkpoint(local_store, release.checkpoint, release.policy_sha256, suite, 2, seed=3, max_steps=5)
    assert first["tasks"]["restock-horizontal"]["episodes"] == 2
    assert len(first["tasks"]["restock-horizontal"]["outcomes"]) == 2
    assert local_store.list("evals", ".json"), "the summary is cached in the store"
    again = evaluate_checkpoint(local_store, release.checkpoint, release.policy_sha256, suite, 2, seed=3, max_steps=5)
    assert again == first
    assert paired_comparison(first, again)["change"] == 0.0
    assert gate_decision(first, again, tolerance=0.05, min_success=0.0).passed


def test_the_gate_report_shows_each_task_against_the_champion_with_intervals():
    from lwd_core.gating import GateResult, gate_report_markdown

    def evaluation(rates: dict[str, float]) -> dict:
        tasks = {t: {"success_rate": r, "ci_low": r / 2, "ci_high": (1 + r) / 2, "episodes": 20} for t, r in rates.items()}
        mean = sum(rates.values()) / len(rates)
        return {"tasks": tasks, "all": {"success_rate": mean, "ci_low": mean / 2, "ci_high": (1 + mean) / 2,
                                        "episodes": 20 * len(rates)}}

    candidate, champion = evaluation({"swap-pair": 0.8, "restock-back": 0.5}), evaluation({"swap-pair": 0.6, "restock-back": 0.5})
    decision = gate_decision(candidate, champion, tolerance=0.05, min_success=0.0, champion="3")
    report = gate_report_markdown(GateResult.of("4", "3", decision, candidate, champion), "http://mlflow/#/runs/abc")
    assert "PASS (v4 vs champion v3)" in report and "| task | v4 | v3 | change |" in report
    assert "| swap-pair | 80% (40% to 90%, n=20) | 60% (30% to 80%, n=20) | +20 pts |" in report
    assert "| **mean** |" in report and "[Gate run](http://mlflow/#/runs/abc)" in report
    first = gate_report_markdown(GateResult.of("1", None, gate_decision(candidate, None, 0.05, 0.2), candidate, None))
    assert "vs no champion" in first and "| swap-pair | 80% (40% to 90%, n=20) | - | - |" in first


def test_fleet_success_is_autonomous_and_a_rescue_is_assisted():
    import numpy as np

    from lwd_core.data.outcomes import OutcomeCounts, takeovers

    assert takeovers(np.array([0, 1, 1, 0, 0, 1, 0, 1], bool)) == 3 and takeovers(np.array([1, 1], bool)) == 1
    counts = OutcomeCounts()
    counts.add(True, np.zeros(100, bool))  # the policy alone
    counts.add(True, np.array([0] * 50 + [1] * 50, bool))  # rescued
    counts.add(False, np.zeros(100, bool))
    counts.add(False, np.array([1, 0] * 50, bool))  # 50 takeovers, still failed
    assert (counts.autonomous_success, counts.assisted_success) == (0.25, 0.25)
    assert counts.takeovers == 51 and counts.takeovers_per_robot_hour == 51 / (400 * 0.05 / 3600)
    assert OutcomeCounts.from_dict(counts.to_dict()) + OutcomeCounts() == counts
    assert OutcomeCounts.from_dict({"episodes": 3, "successes": 3}) == OutcomeCounts()  # an older actor's: unknown


def test_a_canary_cannot_promote_on_less_evidence_than_configured(local_store, keyring):
    """A perfect canary on one robot and a few episodes waits for its minimum, then times out and rolls
    back; with the minimum met and a good record it promotes, with its interval in the report."""
    from conftest import publisher
    from test_fleet import tiny_policy_checkpoint

    from lwd_core.fleet.staged_rollout import judge_canary
    from lwd_core.gating import difference_interval

    coordinator = publisher(local_store, keyring)
    stable, candidate = (tiny_policy_checkpoint(local_store, f"checkpoints/v{i}", i) for i in (1, 2))
    coordinator.report("robot-05", {"running_version": stable.version,
                                    "per_version": {stable.version: {"episodes": 200, "autonomous_successes": 120}}})
    coordinator.report("robot-00", {"running_version": candidate.version,
                                    "per_version": {candidate.version: {"episodes": 5, "autonomous_successes": 5}}})
    canary = ["robot-00", "robot-01"]
    verdict, report = judge_canary(coordinator, candidate, canary, stable.version, min_episodes=20, min_robots=2,
                                   timeout_s=0.5, tolerance=0.1)
    assert not verdict.promote and not report["watched"] and report["robots_seen"] == 1
    assert "timeout before enough evidence" in verdict.reason and "n=5" in verdict.reason
    for robot, successes in (("robot-00", 18), ("robot-01", 19)):
        coordinator.report(robot, {"running_version": candidate.version,
                                   "per_version": {candidate.version: {"episodes": 20, "autonomous_successes": successes}}})
    verdict, report = judge_canary(coordinator, candidate, canary, stable.version, min_episodes=20, min_robots=2,
                                   timeout_s=60, tolerance=0.1)
    assert verdict.promote and report["episodes"] == 40 and report["robots_seen"] == 2
    low, high = report["difference_ci"]
    assert -0.1 < low < 0.925 - 0.6 < high  # canary 92.5% vs baseline 60%
    # The interval is Newcombe's: at equal rates it is centred on 0, and narrower with more episodes.
    assert difference_interval(10, 20, 100, 200)[0] < difference_interval(100, 200, 100, 200)[0] < 0
    # Enough episodes but a worse canary: rolled back, even within the old point rule.
    assert not canary_decision(40, 22, 200, 120, True, 0.1).promote

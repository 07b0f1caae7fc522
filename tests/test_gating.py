"""The gate and canary decisions as pure functions: no Prefect, MLflow or simulator."""

from __future__ import annotations

from lwd_core.gating import canary_decision, gate_decision


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
    assert canary_decision(4, 3, 20, 16, finished_in_time=True, tolerance=0.25).promote  # 0.75 vs 0.80
    regressed = canary_decision(4, 1, 20, 16, finished_in_time=True, tolerance=0.25)  # 0.25 vs 0.80
    assert not regressed.promote and "0.25 < baseline 0.80" in regressed.reason
    late = canary_decision(4, 4, 20, 16, finished_in_time=False, tolerance=0.25)
    assert not late.promote and late.reason == "canary timeout"
    # No baseline episodes yet: any canary result is accepted.
    assert canary_decision(2, 0, 0, 0, finished_in_time=True, tolerance=0.25).promote


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

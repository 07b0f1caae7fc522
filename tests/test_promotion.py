"""The promotion state machine as typed values: registry tags in, allowed moves, tag updates out.
No MLflow here; tests/test_flows.py drives the same moves through the registry."""

from __future__ import annotations

import pytest

from lwd_core import promotion
from lwd_core.promotion import (
    Approval,
    GateNotPassed,
    GateStatus,
    ModelVersion,
    PromotionResult,
    ReviewResult,
    ReviewStatus,
    RolloutResult,
    RolloutStatus,
)


def walk(version: str, *updates: dict[str, str]) -> ModelVersion:
    """The version a registry holds after applying ``updates`` in order (as the adapter writes them)."""
    tags: dict[str, str] = {}
    for update in updates:
        tags |= promotion.tag_update(tags, update)
    return ModelVersion.from_tags(version, tags)


REGISTERED = promotion.registered("snap-1", "checkpoints/run-1/step-00000010", "ab" * 32, "offline")


def test_a_registered_version_waits_for_its_gate_and_cannot_be_promoted_before():
    version = walk("4", REGISTERED)
    assert version.gate is GateStatus.PENDING and version.approval is Approval.PENDING
    assert version.checkpoint == "checkpoints/run-1/step-00000010" and version.release == "policy-v4"
    assert ModelVersion.awaits_gate({"gate": "pending"}) and not ModelVersion.awaits_gate({"gate": "pass"})
    with pytest.raises(GateNotPassed, match="v4 has gate='pending'.*can be approved"):
        version.require_passed_gate("be approved")


def test_the_happy_path_gate_challenger_approval_then_superseded():
    approved = walk("4", REGISTERED, promotion.gated(True, 0.8123), promotion.challenger("3"),
                    promotion.approved("alice", "looks good", "3", 1_000))
    approved.require_passed_gate("ship")
    assert approved.gate_mean_success == pytest.approx(0.812) and approved.approval is Approval.APPROVED
    assert (approved.approved_by, approved.previous_champion, approved.approved_us) == ("alice", "3", 1_000)
    assert promotion.approved("alice", "", "3", 1_000)["approved_at"] == "1970-01-01T00:00:00.001000Z"  # ISO, UTC
    assert approved.shipping_refusal(champion="4") is None
    later = walk("4", REGISTERED, promotion.gated(True, 0.8), promotion.approved("alice", "", "3", 1),
                 promotion.superseded())
    assert later.approval.review_over and later.approval.decided


def test_shipping_needs_a_passed_gate_the_champion_alias_and_a_recorded_approval():
    approved = walk("4", REGISTERED, promotion.gated(True, 0.8), promotion.approved("bob", "", None, 1))
    assert approved.shipping_refusal(champion="4") is None
    failed = walk("4", REGISTERED, promotion.gated(False, 0.1), promotion.approved("bob", "", None, 1))
    assert "gate='fail'" in failed.shipping_refusal(champion="4")
    assert "not the approved champion" in approved.shipping_refusal(champion="3")
    # The alias moved in the MLflow UI, but nobody recorded the approval (the watcher does that).
    moved_only = walk("4", REGISTERED, promotion.gated(True, 0.8))
    assert "no reviewer's approval" in moved_only.shipping_refusal(champion="4")
    foreign = ModelVersion.from_tags("9", {})  # registered by hand, outside the flywheel
    assert "gate=None" in foreign.shipping_refusal(champion="9")


def test_rejection_refusal_and_rollback_are_recorded_with_who_and_why():
    rejected = walk("5", REGISTERED, promotion.gated(True, 0.7), promotion.rejected("carol", "drops cubes", 7))
    assert rejected.approval is Approval.REJECTED and not rejected.approval.review_over
    assert (rejected.rejected_by, rejected.rejection_reason) == ("carol", "drops cubes")
    refused = walk("6", REGISTERED, promotion.gated(False, 0.1), promotion.refused("gate='fail'"))
    assert refused.approval is Approval.REFUSED and refused.approval.review_over
    rolled = walk("7", REGISTERED, promotion.gated(True, 0.7), promotion.approved("a", "", "6", 1),
                  promotion.rolled_back("canary 0.10 < baseline 0.60"))
    assert rolled.approval is Approval.ROLLED_BACK and rolled.rollout == "rolled-back"
    assert rolled.shipping_refusal(champion="7") is not None


def test_a_hand_edited_tag_the_flywheel_cannot_read_is_a_clear_error_and_unknown_tags_are_ignored():
    with pytest.raises(ValueError, match=r"v3 has registry tags the flywheel cannot read: tag approval='maybe'"):
        ModelVersion.from_tags("3", {"gate": "pass", "approval": "maybe"})
    assert ModelVersion.from_tags("3", {"gate": "pass", "mlflow.note": "x", "approval": ""}).approval is None


def test_the_flywheels_own_state_is_one_tag_and_versions_tagged_before_it_still_read():
    tags: dict[str, str] = {}
    for update in (REGISTERED, promotion.gated(True, 0.8), promotion.gate_evidence("run-9"), promotion.challenger("3"),
                   promotion.review_requested(5), promotion.approved("alice", "ok", "3", 6)):
        tags |= promotion.tag_update(tags, update)
    assert set(tags) == {"gate", "gate_mean_success", "approval", "approved_by", "approval_comment", "approved_at",
                         promotion.STATE_TAG}
    version = ModelVersion.from_tags("4", tags)
    assert (version.snapshot_id, version.gate_run_id, version.previous_champion) == ("snap-1", "run-9", "3")
    assert version.review_requested_us == 5
    flat = {**REGISTERED, "gate": "pass", "previous_champion": "3"}  # as versions were tagged before
    assert ModelVersion.from_tags("2", flat).checkpoint == "checkpoints/run-1/step-00000010"
    with pytest.raises(ValueError, match=r"v4 has registry tags the flywheel cannot read: tag flywheel_state is not JSON"):
        ModelVersion.from_tags("4", {**tags, promotion.STATE_TAG: "{broken"})


def test_release_names_round_trip():
    assert promotion.version_of_release(promotion.release_name("12")) == "12"
    assert promotion.version_of_release("something-else") is None and promotion.version_of_release(None) is None


def test_flow_results_serialise_as_the_cli_prints_them():
    result = ReviewResult(version="4", status=ReviewStatus.APPROVED, reviewer="alice",
                          rollout=RolloutResult(version="4", status=RolloutStatus.DEPLOYED, release="policy-v4"))
    shown = result.model_dump(mode="json")
    assert shown["status"] == "approved" and shown["rollout"]["status"] == "deployed"
    assert PromotionResult(version="4", promoted=True, approval=Approval.APPROVED).model_dump()["approved"] is True
    assert ReviewResult.model_validate_json(result.model_dump_json()) == result


def test_every_flow_returns_a_pydantic_result():
    """The Prefect UI and `lwd` show what a flow returns; a typed result, never a dict read by key."""
    import importlib
    import pkgutil
    import types
    import typing

    import flows
    from prefect import Flow
    from pydantic import BaseModel

    found = {}
    for module_info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found[value.name] = typing.get_type_hints(value.fn)["return"]
    assert {"promote", "approve", "reject", "review", "watch-champion", "rollout", "evaluate-gate", "train",
            "ingest", "label-rewards", "snapshot-buffer", "flywheel", "flywheel-round", "generate-offline",
            "experiment"} <= set(found)
    for name, returned in found.items():
        options = typing.get_args(returned) if isinstance(returned, types.UnionType) else (returned,)
        assert all(option is type(None) or issubclass(option, BaseModel) for option in options), (name, returned)

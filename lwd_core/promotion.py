"""The promotion state machine of a registered policy version, typed: what its registry tags mean,
which moves are allowed, and what the promotion flows return.

A version is registered with gate ``pending`` and approval ``pending``. The gate sets ``pass`` or
``fail``. Only a version that passed can become the challenger, be approved, or ship
(:meth:`ModelVersion.require_passed_gate` is the one place that says so). A reviewer approves
(alias ``champion``) or rejects; an approved version is later ``superseded`` by the next one, or
``rolled-back`` by its canary; alias ``champion`` moved onto a version that did not pass is ``refused``.

The registry itself (MLflow) is reached only through ``tasks/mlflow_adapter.py``; the tag names
below are the only place its tags are spelled. What a reviewer reads (gate, approval, canary, rollout)
are tags of their own; what the flywheel keeps for itself (the files it ships, the champion it replaced,
when review and rollout started) is one JSON tag, :data:`STATE_TAG`, so the registry page stays short.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, ValidationError, computed_field

CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases
RELEASE_PREFIX = "policy-v"


def release_name(version: str) -> str:
    """The name actors and episodes carry for a registry version."""
    return f"{RELEASE_PREFIX}{version}"


def version_of_release(release: str | None) -> str | None:
    """The registry version a release name stands for (the inverse of :func:`release_name`)."""
    return release.removeprefix(RELEASE_PREFIX) if release and release.startswith(RELEASE_PREFIX) else None


class GateStatus(StrEnum):
    PENDING = "pending"
    PASS = "pass"
    FAIL = "fail"


class Approval(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # was approved; a later approval replaced it
    ROLLED_BACK = "rolled-back"  # was approved; its canary regressed
    REFUSED = "refused"  # alias champion was moved onto it though its gate did not pass

    @property
    def decided(self) -> bool:
        return self is not Approval.PENDING

    @property
    def review_over(self) -> bool:
        """Its turn has passed: it is never reviewed again."""
        return self in (Approval.SUPERSEDED, Approval.ROLLED_BACK, Approval.REFUSED)


class GateNotPassed(ValueError):
    """A promotion step was asked of a version whose evaluation gate did not pass."""


class ModelVersion(BaseModel):
    """A registry version as the promotion reads it (its tags, typed). Tags the flywheel does not know
    are ignored; a known tag with a value that is not allowed is an error naming the tag."""

    model_config = ConfigDict(frozen=True)

    version: str
    snapshot_id: str = ""
    checkpoint: str = ""
    policy_sha256: str = ""
    stage: str = ""
    run_id: str = ""
    gate: GateStatus | None = None  # None: registered outside the flywheel
    gate_mean_success: float | None = None
    gate_run_id: str = ""
    approval: Approval | None = None
    previous_champion: str | None = None
    approved_by: str = ""
    approval_comment: str = ""
    approved_at: datetime | None = None
    rejected_by: str = ""
    rejection_reason: str = ""
    review_requested_at: datetime | None = None
    rollout: str = ""

    @property
    def approved_us(self) -> int | None:
        return None if self.approved_at is None else _us(self.approved_at)

    @property
    def review_requested_us(self) -> int | None:
        return None if self.review_requested_at is None else _us(self.review_requested_at)

    @classmethod
    def from_tags(cls, version: str, tags: dict[str, str]) -> ModelVersion:
        try:
            flat = read_tags(tags)
        except ValueError as exc:
            raise ValueError(f"v{version} has registry tags the flywheel cannot read: {exc}") from None
        known = {name: value for name, value in flat.items() if name in cls.model_fields and value != ""}
        try:
            return cls(version=str(version), **known)
        except ValidationError as exc:
            problems = "; ".join(f"tag {'.'.join(map(str, e['loc']))}={e['input']!r}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"v{version} has registry tags the flywheel cannot read: {problems}") from None

    @staticmethod
    def awaits_gate(tags: dict[str, str]) -> bool:
        """From raw tags (a registry search), without reading the rest: gate not run yet."""
        return tags.get("gate") == GateStatus.PENDING

    @property
    def release(self) -> str:
        return release_name(self.version)

    @property
    def passed_gate(self) -> bool:
        return self.gate is GateStatus.PASS

    def require_passed_gate(self, step: str) -> None:
        """The rule every promotion step shares: only a version that passed its gate goes further."""
        if not self.passed_gate:
            raise GateNotPassed(f"v{self.version} has gate={self.gate_label!r}: only versions that passed the "
                                f"evaluation gate can {step}")

    @property
    def gate_label(self) -> str | None:
        return None if self.gate is None else self.gate.value

    def shipping_refusal(self, champion: str | None) -> str | None:
        """Why this version must not reach the fleet, or None: it passed its gate, it is the champion, and
        a reviewer's approval is recorded. Moving the alias alone is not enough."""
        try:
            self.require_passed_gate("ship")
        except GateNotPassed as refusal:
            return str(refusal)
        if champion != self.version:
            return f"v{self.version} is not the approved champion (champion: {champion or 'none'}); approve it first"
        if self.approval is not Approval.APPROVED:
            return (f"v{self.version} has approval={None if self.approval is None else self.approval.value!r}: "
                    "no reviewer's approval is recorded")
        return None


STATE_TAG = "flywheel_state"
STATE_FIELDS = frozenset({"snapshot_id", "checkpoint", "policy_sha256", "stage", "gate_run_id", "previous_champion",
                          "review_requested_at", "rollout_started_at", "deployed_at"})


def read_tags(tags: dict[str, str]) -> dict[str, str]:
    """A version's tags as one flat mapping, :data:`STATE_TAG` unpacked (flat tags of older versions read too)."""
    flat = {name: value for name, value in tags.items() if name != STATE_TAG}
    try:
        state = json.loads(tags.get(STATE_TAG) or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"tag {STATE_TAG} is not JSON ({exc}): {tags[STATE_TAG][:200]!r}") from None
    if not isinstance(state, dict):
        raise ValueError(f"tag {STATE_TAG} is not a JSON object: {tags[STATE_TAG][:200]!r}")
    return flat | {name: str(value) for name, value in state.items()}


def tag_update(current: dict[str, str], update: dict[str, str]) -> dict[str, str]:
    """The tags to set for a transition's ``update`` on a version now tagged ``current``: the flywheel's own
    fields merged into :data:`STATE_TAG`, the reviewer's as tags of their own."""
    shown = {name: str(value) for name, value in update.items() if name not in STATE_FIELDS}
    kept = {name: str(value) for name, value in update.items() if name in STATE_FIELDS}
    if kept:
        state = {name: value for name, value in read_tags(current).items() if name in STATE_FIELDS} | kept
        shown[STATE_TAG] = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return shown


# The tag updates of each transition: the only place the registry's tags are written from. Times are
# ISO 8601 in UTC, as a reviewer reads them in the MLflow UI.

MODEL_DESCRIPTION = """\
The flow-matching robot policy the LWD flywheel trains on the fleet's data, one version per training run.

A version reaches the robots only after three steps: its **evaluation gate** (success on fixed simulator
seeds against the champion; the version's description holds the per-task table and links the gate run),
a **reviewer's approval** (alias `champion`, or `lwd approve`), and a **canary** that must show, on
enough episodes from enough robots, autonomous success not worse than the previous release's.

Tags a reviewer reads: `gate`, `gate_mean_success`, `approval`, `approved_by`, `approved_at`,
`canary_decision`, `canary_evidence`, `rollout` (and who rejected or why it was rolled back, where so).
`flywheel_state` is what the flywheel keeps for itself: the checkpoint and policy hash it ships, the
snapshot it trained on, its gate run, the champion it replaced, and when review and rollout started. Its
training run and logged model are the registry's own fields."""


def iso_utc(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1e6, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _us(moment: datetime) -> int:
    return round(moment.timestamp() * 1e6)


def registered(snapshot_id: str, checkpoint: str, policy_sha256: str, stage: str) -> dict[str, str]:
    return {"snapshot_id": snapshot_id, "checkpoint": checkpoint, "policy_sha256": policy_sha256, "stage": stage,
            "gate": GateStatus.PENDING, "approval": Approval.PENDING}


def gated(passed: bool, mean_success: float) -> dict[str, str]:
    return {"gate": GateStatus.PASS if passed else GateStatus.FAIL, "gate_mean_success": f"{mean_success:.3f}"}


def gate_evidence(gate_run_id: str) -> dict[str, str]:
    return {"gate_run_id": gate_run_id}


def challenger(previous_champion: str | None) -> dict[str, str]:
    return {"approval": Approval.PENDING, "previous_champion": previous_champion or ""}


def review_requested(at_us: int) -> dict[str, str]:
    return {"review_requested_at": iso_utc(at_us)}


def approved(reviewer: str, comment: str, previous_champion: str | None, at_us: int) -> dict[str, str]:
    return {"approval": Approval.APPROVED, "approved_by": reviewer, "approved_at": iso_utc(at_us),
            "previous_champion": previous_champion or "", **({"approval_comment": comment[:500]} if comment else {})}


def superseded() -> dict[str, str]:
    return {"approval": Approval.SUPERSEDED}


def rejected(reviewer: str, reason: str, at_us: int) -> dict[str, str]:
    return {"approval": Approval.REJECTED, "rejected_by": reviewer, "rejection_reason": reason[:500],
            "rejected_at": iso_utc(at_us)}


def refused(reason: str) -> dict[str, str]:
    return {"approval": Approval.REFUSED, "refusal_reason": reason}


def rollout_started(at_us: int) -> dict[str, str]:
    return {"rollout": "started", "rollout_started_at": iso_utc(at_us)}


def rolled_back(reason: str) -> dict[str, str]:
    return {"approval": Approval.ROLLED_BACK, "rollout": RolloutStatus.ROLLED_BACK, "rollback_reason": reason}


def canary_decided(promote: bool, reason: str) -> dict[str, str]:
    """The canary's decision with its evidence (n, rates and the 95% interval, in ``reason``)."""
    return {"canary_decision": "promote" if promote else "roll back", "canary_evidence": reason}


def deployed(status: RolloutStatus, at_us: int) -> dict[str, str]:
    return {"rollout": status, "deployed_at": iso_utc(at_us)}


# What the promotion flows return (the Prefect UI shows them; `lwd` prints them as JSON).

class Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class TrainedVersion(Result):
    """A training run's registered candidate."""

    model_version: str
    checkpoint: str
    run_id: str
    stage: str
    snapshot_id: str
    steps: int
    seconds: float
    final_metrics: dict[str, float] = {}


class CanaryReport(Result):
    """The canary's evidence: autonomous success (no teleoperator rescue) of the canary robots on the new
    release against the fleet's on the previous one."""

    robots: list[str]
    robots_seen: int  # canary robots that finished an episode on the new release
    episodes: int
    autonomous_success: float
    baseline_version: str
    baseline_autonomous_success: float
    difference_ci: list[float]  # 95% interval of canary minus baseline autonomous success
    rule: str
    baseline_episodes: int
    watched: bool
    reason: str


class RolloutStatus(StrEnum):
    ALREADY_DEPLOYED = "already-deployed"
    DEPLOYED = "deployed"
    DEPLOYED_PARTIALLY = "deployed-partially"  # some live robots did not confirm in time
    ROLLED_BACK = "rolled-back"


class RolloutResult(Result):
    version: str
    status: RolloutStatus
    release: str = ""
    live_robots: list[str] = []
    canary: CanaryReport | None = None
    champion: str | None = None  # after a rollback: the version alias champion is back on
    distribution_latency_s: list[float] = []
    distribution_latency_p50_s: float | None = None
    distribution_latency_p99_s: float | None = None

    def describe(self) -> str:
        """The rollout as a log line a person reads."""
        text = f"v{self.version} {self.status}"
        if self.release:
            text += f" ({self.release}, {len(self.live_robots)} live robots)"
        if self.canary is not None:
            canary, (low, high) = self.canary, self.canary.difference_ci
            text += (f"; canary {', '.join(canary.robots)}: {canary.episodes} episodes from {canary.robots_seen} "
                     f"robots, autonomous success {canary.autonomous_success:.0%} vs {canary.baseline_autonomous_success:.0%}"
                     f" on {canary.baseline_version} (difference {low:+.2f} to {high:+.2f}): {canary.reason}")
        if self.champion:
            text += f"; champion back on v{self.champion}"
        if self.distribution_latency_p50_s is not None:
            text += f"; median time to reach a robot {self.distribution_latency_p50_s:.1f} s"
        return text


class PromotionResult(Result):
    version: str
    promoted: bool  # it is (or was) the challenger
    approval: Approval | None = None
    approved_by: str = ""
    reason: str = ""  # why it was not promoted

    @computed_field
    @property
    def approved(self) -> bool:
        return self.approval is Approval.APPROVED


class ApprovalResult(Result):
    champion: str
    previous: str | None
    approved_by: str
    resumed_review: str | None = None  # the review flow run this approval answered


class RejectionResult(Result):
    version: str
    rejected_by: str
    reason: str
    resumed_review: str | None = None
    approval: Approval = Approval.REJECTED


class ReviewStatus(StrEnum):
    REFUSED = "refused"  # did not pass its gate
    AWAITING = "awaiting review"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled-back"


class ReviewResult(Result):
    version: str
    status: ReviewStatus
    reviewer: str = ""
    reason: str = ""
    rollout: RolloutResult | None = None


class WatchStatus(StrEnum):
    NO_CHAMPION = "no champion"
    NOTHING_TO_SHIP = "nothing to ship"
    REFUSED = "refused"
    LEFT_TO_REVIEW = "left to its review run"
    REVIEW_RESUMED = "review resumed"
    SHIPPED = "shipped"


class WatchResult(Result):
    status: WatchStatus
    version: str | None = None
    reason: str = ""
    champion: str | None = None  # after a refusal: where alias champion was put back
    flow_run: str = ""
    rollout: RolloutResult | None = None


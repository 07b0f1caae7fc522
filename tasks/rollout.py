"""Prefect tasks of the staged rollout (flows/rollout.py), thin wrappers over
:mod:`lwd_core.fleet.staged_rollout` and the registry. Reads and idempotent writes retry; waiting on
the fleet does not (a retry would wait the whole timeout again)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from lwd_core import promotion
from lwd_core.config import LWDConfig
from lwd_core.fleet.coordinator import (
    Coordinator,
    Release,
    choose_canary,
    now_us,
    release_for_checkpoint,
)
from lwd_core.fleet.staged_rollout import distribute, judge_canary, live_robots
from lwd_core.promotion import CHAMPION, CanaryReport, ModelVersion, RolloutResult
from lwd_core.security import keyring_for, release_signer, report_verifier
from lwd_core.store import ObjectStore, open_store
from tasks import mlflow_adapter
from tasks.events import ROLLOUT_COMPLETED, ROLLOUT_ROLLED_BACK, emit_model_event
from tasks.retries import RETRY_DELAYS_S, unless_refused


def publisher(config: LWDConfig) -> Coordinator:
    """The rollout side's coordinator: it publishes with the release key and believes only the reports
    their robots signed (which robots are live, the canary's evidence)."""
    keyring = keyring_for(config)
    return Coordinator(open_store(config), sign_release=release_signer(keyring), verify_report=report_verifier(keyring))


def release_of(store: ObjectStore, version: ModelVersion) -> Release:
    """The release for a registry version, pinned to its checkpoint's manifest (the coordinator signs it
    when it publishes; actors verify the signature, then every hash)."""
    release = release_for_checkpoint(store, version.checkpoint, version.release,
                                     approved_us=version.approved_us or now_us())
    if release.policy_sha256 != version.policy_sha256:
        raise PermissionError(f"v{version.version}: the checkpoint's policy hash differs from the registered one")
    return release


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=unless_refused)
def approved_release(config: LWDConfig, model_version: str) -> tuple[str, Release]:
    """The version to ship (default: the champion) and its release; raises when it must not ship
    (:meth:`lwd_core.promotion.ModelVersion.shipping_refusal`)."""
    champion = mlflow_adapter.alias_version(config, CHAMPION)
    if not (model_version or champion):
        raise ValueError("no champion to roll out: approve a model version first")
    version = mlflow_adapter.model_version(config, model_version or champion)
    refusal = version.shipping_refusal(champion)
    if refusal:
        raise PermissionError(refusal)
    publisher(config)  # the release key is at hand before anything is tagged as started
    return version.version, release_of(open_store(config), version)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def fleet_now(config: LWDConfig) -> tuple[str | None, list[str]]:
    """The stable release's version (None before the first release, or one signed before signatures
    named whom a release is for: robots refuse it, so it is published again) and the live robots."""
    coordinator = publisher(config)
    stable = coordinator.desired().get("stable") or {}
    return (stable.get("version") if "stage" in stable else None,
            live_robots(coordinator, config.rollout.heartbeat_timeout_seconds))


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def mark_rollout_started(config: LWDConfig, version: str) -> None:
    mlflow_adapter.tag_version(config, version, promotion.rollout_started(now_us()))


@task
def watch_canary(config: LWDConfig, release: Release, robots: list[str],
                 baseline_version: str) -> tuple[bool, CanaryReport]:
    """The canary subset gets the release; whether it may reach every robot, and the canary's report."""
    coordinator = publisher(config)
    canary = choose_canary(robots, config.fleet.canary_fraction, config.rollout.canary_min_robots)
    coordinator.publish_canary(release, canary)
    get_run_logger().info("canary: %s -> %s", ",".join(canary), release.version)
    verdict, report = judge_canary(coordinator, release, canary, baseline_version, config.rollout.canary_min_episodes,
                                   config.rollout.canary_min_robots, config.rollout.timeout_seconds,
                                   config.rollout.regression_tolerance)
    return verdict.promote, CanaryReport(**report)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_canary(config: LWDConfig, version: str, promote: bool, canary: CanaryReport) -> None:
    """The decision, its n and its interval: on the version (tags) and on the Prefect run (artifact)."""
    mlflow_adapter.tag_version(config, version, promotion.canary_decided(promote, canary.reason))
    low, high = canary.difference_ci
    create_markdown_artifact(key="canary", description=f"v{version}: canary decision", markdown="\n".join([
        f"### Canary for v{version}: {'promote to every robot' if promote else 'roll back'}", "",
        "| | robots | episodes | autonomous success |", "|---|---|---|---|",
        f"| canary (v{version}) | {canary.robots_seen} of {len(canary.robots)} | {canary.episodes} | "
        f"{canary.autonomous_success:.0%} |",
        f"| baseline ({canary.baseline_version}) | fleet | {canary.baseline_episodes} | "
        f"{canary.baseline_autonomous_success:.0%} |", "",
        f"Difference, 95% interval: [{100 * low:+.0f}, {100 * high:+.0f}] points. Rule: {canary.rule}.",
        f"Decision: {canary.reason}."]))


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def roll_back(config: LWDConfig, version: str, canary: CanaryReport) -> str | None:
    """Canary robots back on the stable release, alias ``champion`` back on the previous version; every
    step is idempotent, the event goes last. Returns the champion now."""
    publisher(config).end_canary()
    previous = mlflow_adapter.model_version(config, version).previous_champion
    if previous:
        mlflow_adapter.set_alias(config, CHAMPION, previous)
    mlflow_adapter.tag_version(config, version, promotion.rolled_back(canary.reason))
    emit_model_event(ROLLOUT_ROLLED_BACK, config.tracking.registered_model, version,
                     {"champion": previous or "", **canary.model_dump()})
    get_run_logger().warning("rolled back v%s: %s", version, canary)
    return previous


@task
def deploy_to_fleet(config: LWDConfig, release: Release, robots: list[str]) -> dict:
    """Every robot gets the release; the live ``robots`` are waited for. Returns the distribution
    summary (status and latencies)."""
    return distribute(publisher(config), release, robots, config.rollout.timeout_seconds)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_deployed(config: LWDConfig, result: RolloutResult) -> None:
    mlflow_adapter.tag_version(config, result.version, promotion.deployed(result.status, now_us()))
    shown = result.model_dump(mode="json", exclude={"distribution_latency_s"}, exclude_none=True)
    emit_model_event(ROLLOUT_COMPLETED, config.tracking.registered_model, result.version, shown)
    get_run_logger().info("rollout %s", result.describe())

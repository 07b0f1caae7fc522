"""Prefect tasks of the staged rollout (flows/rollout.py), thin wrappers over
:mod:`lwd_core.fleet.staged_rollout` and the registry. Reads and idempotent writes retry; waiting on
the fleet does not (a retry would wait the whole timeout again)."""

from __future__ import annotations

from prefect import get_run_logger, task

from lwd_core.config import LWDConfig
from lwd_core.fleet.coordinator import (
    Coordinator,
    Release,
    choose_canary,
    now_us,
    release_for_checkpoint,
)
from lwd_core.fleet.staged_rollout import distribute, judge_canary, live_robots
from lwd_core.gating import rollout_refusal
from lwd_core.security import keyring_for, release_signer
from lwd_core.store import ObjectStore, open_store
from tasks import tracking
from tasks.events import ROLLOUT_COMPLETED, ROLLOUT_ROLLED_BACK, emit_model_event

RETRY_DELAYS_S = [1, 5, 20]


def unless_refused(task, task_run, state) -> bool:
    """Retry what may pass next time (the registry or store briefly unreachable), never a refusal."""
    return not isinstance(state.result(raise_on_failure=False), PermissionError | ValueError)


def publisher(config: LWDConfig) -> Coordinator:
    """A coordinator that can publish: it holds the release key."""
    return Coordinator(open_store(config), sign_release=release_signer(keyring_for(config)))


def release_of(store: ObjectStore, version: str, tags: dict[str, str]) -> Release:
    """The release for a registry version, pinned to its checkpoint's manifest (the coordinator signs it
    when it publishes; actors verify the signature, then every hash)."""
    release = release_for_checkpoint(store, tags["checkpoint"], tracking.release_name(version),
                                     approved_us=int(tags.get("approved_us") or now_us()))
    if release.policy_sha256 != tags["policy_sha256"]:
        raise PermissionError(f"v{version}: the checkpoint's policy hash differs from the registered one")
    return release


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=unless_refused)
def approved_release(config: LWDConfig, model_version: str) -> tuple[str, Release]:
    """The version to ship (default: the champion) and its release; raises when it must not ship
    (:func:`lwd_core.gating.rollout_refusal`)."""
    champion = tracking.alias_version(config, tracking.CHAMPION)
    version = model_version or champion
    if not version:
        raise ValueError("no champion to roll out: approve a model version first")
    tags = tracking.version_tags(config, version)
    refusal = rollout_refusal(version, tags, champion)
    if refusal:
        raise PermissionError(refusal)
    publisher(config)  # the release key is at hand before anything is tagged as started
    return version, release_of(open_store(config), version, tags)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def fleet_now(config: LWDConfig) -> tuple[str | None, list[str]]:
    """The stable release's version (None before the first release) and the live robots."""
    coordinator = Coordinator(open_store(config))
    stable = (coordinator.desired().get("stable") or {}).get("version")
    return stable, live_robots(coordinator, config.rollout.heartbeat_timeout_seconds)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def mark_rollout_started(config: LWDConfig, version: str) -> None:
    tracking.set_version_tags(config, version, {"rollout": "started", "rollout_started_us": now_us()})


@task
def watch_canary(config: LWDConfig, release: Release, robots: list[str], baseline_version: str) -> tuple[bool, dict]:
    """The canary subset gets the release; whether it may reach every robot, and the canary's report."""
    coordinator = publisher(config)
    canary = choose_canary(robots, config.fleet.canary_fraction)
    coordinator.publish_canary(release, canary)
    get_run_logger().info("canary: %s -> %s", ",".join(canary), release.version)
    verdict, report = judge_canary(coordinator, release, canary, baseline_version, config.rollout.canary_episodes,
                                   config.rollout.timeout_seconds, config.rollout.regression_tolerance)
    return verdict.promote, report


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def roll_back(config: LWDConfig, version: str, canary: dict) -> dict:
    """Canary robots back on the stable release, alias ``champion`` back on the previous version; every
    step is idempotent, the event goes last."""
    publisher(config).end_canary()
    previous = tracking.version_tags(config, version).get("previous_champion")
    if previous:
        tracking.set_alias(config, tracking.CHAMPION, previous)
    tracking.set_version_tags(config, version, {"approval": "rolled-back", "rollout": "rolled-back",
                                                "rollback_reason": canary["reason"]})
    emit_model_event(ROLLOUT_ROLLED_BACK, config.tracking.registered_model, version,
                     {"reason": canary["reason"], "champion": previous or "", **canary})
    get_run_logger().warning("rolled back v%s: %s", version, canary)
    return {"status": "rolled-back", "champion": previous}


@task
def deploy_to_fleet(config: LWDConfig, release: Release, robots: list[str]) -> dict:
    """Every robot gets the release; the live ``robots`` are waited for."""
    return distribute(publisher(config), release, robots, config.rollout.timeout_seconds)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def record_deployed(config: LWDConfig, version: str, result: dict) -> None:
    tracking.set_version_tags(config, version, {"deployed_us": now_us(), "rollout": result["status"]})
    shown = {k: v for k, v in result.items() if k != "distribution_latency_s"}
    emit_model_event(ROLLOUT_COMPLETED, config.tracking.registered_model, version, shown)
    get_run_logger().info("rollout v%s: %s", version, shown)

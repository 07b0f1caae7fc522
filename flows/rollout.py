"""Staged rollout of the champion through the coordinator.

1. First release ever: every robot gets it.
2. Otherwise the canary subset (``fleet.canary_fraction`` of live robots) gets it first; once each
   canary robot finished ``rollout.canary_episodes`` episodes on it, :func:`lwd_core.gating.canary_decision`
   compares its success with the previous release's. A regression beyond ``rollout.regression_tolerance``
   (or a timeout) rolls the canaries back and returns alias ``champion`` to the previous version;
   otherwise every robot gets it.
3. Wait until every live robot runs it; record distribution latencies (approval -> running).

Only the champion with a passed gate and a recorded approval ships (:func:`lwd_core.gating.rollout_refusal`).
Events ``lwd.rollout.completed`` and ``lwd.rollout.rolled-back`` tell whoever subscribed.
"""

from __future__ import annotations

import time

import numpy as np
from prefect import flow, get_run_logger

from lwd_core.config import LWDConfig, load_config
from lwd_core.fleet.coordinator import (
    Coordinator,
    Release,
    choose_canary,
    now_us,
    release_for_checkpoint,
)
from lwd_core.gating import canary_decision, rollout_refusal
from lwd_core.security import keyring_for, release_signer
from lwd_core.store import open_store
from tasks import tracking
from tasks.events import ROLLOUT_COMPLETED, ROLLOUT_ROLLED_BACK, emit_model_event


def live_robots(coordinator: Coordinator, heartbeat_timeout_s: float) -> list[str]:
    now = now_us()
    return sorted(r for r, s in coordinator.actors().items() if (now - s["heartbeat_us"]) / 1e6 <= heartbeat_timeout_s)


def wait_until(predicate, timeout_s: float, poll_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def release_of(config, store, version: str) -> Release:
    """The release for a registry version, pinned to its checkpoint's manifest (the coordinator signs it
    when it publishes; actors verify the signature, then every hash)."""
    tags = tracking.version_tags(config, version)
    release = release_for_checkpoint(store, tags["checkpoint"], tracking.release_name(version),
                                     approved_us=int(tags.get("approved_us") or now_us()))
    if release.policy_sha256 != tags["policy_sha256"]:
        raise PermissionError(f"v{version}: the checkpoint's policy hash differs from the registered one")
    return release


@flow(name="rollout")
def rollout(model_version: str = "", config: LWDConfig | None = None) -> dict:
    config = config or load_config()
    logger = get_run_logger()
    version = model_version or tracking.alias_version(config, tracking.CHAMPION)
    if not version:
        raise ValueError("no champion to roll out: approve a model version first")
    refusal = rollout_refusal(version, tracking.version_tags(config, version),
                              tracking.alias_version(config, tracking.CHAMPION))
    if refusal:
        raise PermissionError(refusal)
    store = open_store(config)
    coordinator = Coordinator(store, sign_release=release_signer(keyring_for(config)))
    release = release_of(config, store, version)
    stable = coordinator.desired().get("stable")
    if stable and stable["version"] == release.version:
        return {"version": version, "status": "already-deployed"}
    tracking.set_version_tags(config, version, {"rollout": "started", "rollout_started_us": now_us()})
    robots = live_robots(coordinator, config.rollout.heartbeat_timeout_seconds)
    timeout = config.rollout.timeout_seconds
    result: dict = {"version": version, "release": release.version, "live_robots": robots}

    if stable and robots:
        canary = choose_canary(robots, config.fleet.canary_fraction)
        coordinator.publish_canary(release, canary)
        logger.info("canary: %s -> %s", ",".join(canary), release.version)
        needed = config.rollout.canary_episodes * len(canary)
        watched = wait_until(lambda: coordinator.outcomes(release.version, canary)[0] >= needed, timeout)
        episodes, successes = coordinator.outcomes(release.version, canary)
        base_episodes, base_successes = coordinator.outcomes(stable["version"])
        verdict = canary_decision(episodes, successes, base_episodes, base_successes, watched,
                                  config.rollout.regression_tolerance)
        result["canary"] = {"robots": canary, "episodes": episodes, "success_rate": verdict.canary_rate,
                            "baseline_version": stable["version"], "baseline_success_rate": verdict.baseline_rate,
                            "baseline_episodes": base_episodes, "watched": watched, "reason": verdict.reason}
        if not verdict.promote:
            coordinator.end_canary()
            previous = tracking.version_tags(config, version).get("previous_champion")
            if previous:
                tracking.set_alias(config, tracking.CHAMPION, previous)
            tracking.set_version_tags(config, version, {"approval": "rolled-back", "rollout": "rolled-back",
                                                        "rollback_reason": verdict.reason})
            emit_model_event(ROLLOUT_ROLLED_BACK, config.tracking.registered_model, version,
                             {"reason": verdict.reason, "champion": previous or "", **result["canary"]})
            logger.warning("rolled back v%s: %s", version, result["canary"])
            return result | {"status": "rolled-back", "champion": previous}
    coordinator.publish_all(release)
    everyone = wait_until(lambda: coordinator.running(release.version, robots), timeout) if robots else True
    latencies = coordinator.distribution_latencies_s(release.version)
    result |= {"status": "deployed" if everyone else "deployed-partially", "distribution_latency_s": latencies}
    if latencies:
        result["distribution_latency_p50_s"] = float(np.percentile(latencies, 50))
        result["distribution_latency_p99_s"] = float(np.percentile(latencies, 99))
    tracking.set_version_tags(config, version, {"deployed_us": now_us(), "rollout": result["status"]})
    emit_model_event(ROLLOUT_COMPLETED, config.tracking.registered_model, version,
                     {k: v for k, v in result.items() if k != "distribution_latency_s"})
    logger.info("rollout v%s: %s", version, {k: v for k, v in result.items() if k != "distribution_latency_s"})
    return result

"""Staged rollout of the champion through the coordinator.

1. First release ever: every robot gets it.
2. Otherwise the canary subset (``fleet.canary_fraction`` of live robots) gets it first; once each
   canary robot finished ``rollout.canary_episodes`` episodes on it, :func:`lwd_core.gating.canary_decision`
   compares its success with the previous release's. A regression beyond ``rollout.regression_tolerance``
   (or a timeout) rolls the canaries back and returns alias ``champion`` to the previous version;
   otherwise every robot gets it.
3. Wait until every live robot runs it; record distribution latencies (approval -> running).

Only the champion with a passed gate and a recorded approval ships
(:meth:`lwd_core.promotion.ModelVersion.shipping_refusal`).
Events ``lwd.rollout.completed`` and ``lwd.rollout.rolled-back`` tell whoever subscribed.
"""

from __future__ import annotations

from prefect import flow

from lwd_core.config import LWDConfig, load_config
from lwd_core.promotion import RolloutResult, RolloutStatus
from tasks.rollout import (
    approved_release,
    deploy_to_fleet,
    fleet_now,
    mark_rollout_started,
    record_deployed,
    roll_back,
    watch_canary,
)


@flow(name="rollout")
def rollout(model_version: str = "", config: LWDConfig | None = None) -> RolloutResult:
    config = config or load_config()
    version, release = approved_release(config, model_version)
    stable, robots = fleet_now(config)
    if stable == release.version:
        return RolloutResult(version=version, status=RolloutStatus.ALREADY_DEPLOYED, release=release.version)
    mark_rollout_started(config, version)
    canary = None
    if stable and robots:
        promote, canary = watch_canary(config, release, robots, stable)
        if not promote:
            champion = roll_back(config, version, canary)
            return RolloutResult(version=version, status=RolloutStatus.ROLLED_BACK, release=release.version,
                                 live_robots=robots, canary=canary, champion=champion)
    result = RolloutResult(version=version, release=release.version, live_robots=robots, canary=canary,
                           **deploy_to_fleet(config, release, robots))
    record_deployed(config, result)
    return result

"""Staged rollout of the champion through the coordinator.

1. First release ever: every robot gets it.
2. Otherwise the canary subset (``fleet.canary_fraction`` of live robots, at least
   ``rollout.canary_min_robots``) gets it first. Once it has the evidence (``rollout.canary_min_episodes``
   episodes from at least ``rollout.canary_min_robots`` robots), :func:`lwd_core.gating.canary_decision`
   compares its autonomous success with the previous release's: every robot gets it only when the 95%
   interval of the difference lies above ``-rollout.regression_tolerance``. Otherwise, or without the
   evidence by ``rollout.timeout_seconds``, the canaries roll back and alias ``champion`` returns to the
   previous version. The decision, its n and interval are tagged on the version and shown on the run.
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
    record_canary,
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
        record_canary(config, version, promote, canary)
        if not promote:
            champion = roll_back(config, version, canary)
            return RolloutResult(version=version, status=RolloutStatus.ROLLED_BACK, release=release.version,
                                 live_robots=robots, canary=canary, champion=champion)
    result = RolloutResult(version=version, release=release.version, live_robots=robots, canary=canary,
                           **deploy_to_fleet(config, release, robots))
    record_deployed(config, result)
    return result

"""Latency table like the paper's, on a simulated fleet (default 16 robots at real-time 20 Hz):

- episode ingestion: episode finished on the actor -> rows in the buffer the learner samples from
  (edge spool + upload, then event-style micro-batch ingestion every --ingest-every seconds);
- model distribution: release approved -> running on each actor (swaps happen between episodes) and
  on every actor (the slowest robot), over --releases releases.

Also reports fleet env steps/s. Prints one JSON object, then a table on stderr.

    uv run python bench/latency.py [--robots 16] [--seconds 120] [--releases 3] [--realtime 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def main() -> None:
    from flows.service_defaults import apply_service_defaults

    apply_service_defaults()
    parser = argparse.ArgumentParser()
    parser.add_argument("--robots", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--releases", type=int, default=3)
    parser.add_argument("--realtime", type=float, default=1.0, help="pace robots at this multiple of 20 Hz")
    parser.add_argument("--ingest-every", type=float, default=5.0)
    parser.add_argument("--max-episode-steps", type=int, default=200)
    args = parser.parse_args()

    from flows.fleet import fleet_supervisor
    from lwd_core.algo.checkpoint import save_checkpoint
    from lwd_core.algo.learner import Learner, LearnerSpec
    from lwd_core.config import AlgoConfig, load_config
    from lwd_core.data.ingest import ingest_next
    from lwd_core.fleet.coordinator import Coordinator, release_for_checkpoint
    from lwd_core.security import episode_signature_check, keyring_for, release_signer
    from lwd_core.store import open_store
    from lwd_core.suite import ACTION_DIM, OBS_DIM, fleet_robot_ids
    from tasks.pipeline import expectations

    config = load_config(data_dir=tempfile.mkdtemp(prefix="lwd-latency-"))
    config.fleet.robots, config.fleet.realtime_factor = args.robots, args.realtime
    config.fleet.max_episode_steps, config.fleet.poll_seconds = args.max_episode_steps, 1.0
    store = open_store(config)
    keyring = keyring_for(config, fleet_robot_ids(config.fleet.robots))  # S3: keys from `lwd keys generate`
    coordinator = Coordinator(store, sign_release=release_signer(keyring))
    spec = LearnerSpec.from_config(AlgoConfig(hidden_dims=[64, 64], flow_steps=2).with_agent(
        "lwd", critic_heads=2, value_size=11), OBS_DIM, ACTION_DIM, "lwd")
    learner = Learner(spec)
    releases = []
    for index in range(args.releases + 1):
        save_checkpoint(store, f"checkpoints/bench-{index}", learner, learner.init(index))
    first = release_for_checkpoint(store, "checkpoints/bench-0", "bench-0")
    coordinator.publish_all(first)
    robots, supervisor = fleet_supervisor(config)
    stop = supervisor.run_in_background()
    check = episode_signature_check(keyring)
    ingest_latencies: list[float] = []
    queued: list[float] = []  # the part of each latency spent in raw/
    distribution: dict[str, dict] = {}
    started = time.monotonic()
    next_release = started + args.seconds / (args.releases + 1)
    released = 0
    try:
        while time.monotonic() - started < args.seconds:
            time.sleep(args.ingest_every)
            expected = expectations(config)  # once per pass: it reads the published releases
            while (report := ingest_next(store, "bench-latency", expected, check_signature=check)) is not None:
                ingest_latencies += report.summary().latency_s
                queued += report.summary().queued_s
            if released < args.releases and time.monotonic() >= next_release \
                    and coordinator.running(f"bench-{released}", robots):
                released += 1
                release = release_for_checkpoint(store, f"checkpoints/bench-{released}", f"bench-{released}")
                coordinator.publish_all(release)  # approval -> publication is immediate here
                releases.append(release.version)
                next_release = time.monotonic() + args.seconds / (args.releases + 1)
        deadline = time.monotonic() + 120
        while releases and not coordinator.running(releases[-1], robots) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        supervisor.stop()
    for version in releases:
        per_robot = coordinator.distribution_latencies_s(version)
        distribution[version] = {"robots": len(per_robot), "p50": pct(per_robot, 50),
                                 "all_robots": round(max(per_robot), 2) if per_robot else None}
    per_robot_all = [x for v in releases for x in coordinator.distribution_latencies_s(v)]
    fleet_wide = [d["all_robots"] for d in distribution.values() if d["all_robots"] is not None]
    steps = sum(v.get("steps", 0) for s in coordinator.actors().values() for v in s.get("per_version", {}).values())
    result = {
        "robots": args.robots, "realtime_factor": args.realtime, "seconds": round(elapsed, 1),
        "episodes_ingested": len(ingest_latencies), "ingest_every_s": args.ingest_every,
        "episode_to_buffer_p50_s": pct(ingest_latencies, 50), "episode_to_buffer_p99_s": pct(ingest_latencies, 99),
        "upload_to_buffer_p50_s": pct(queued, 50), "upload_to_buffer_p99_s": pct(queued, 99),
        "release_to_robot_p50_s": pct(per_robot_all, 50), "release_to_robot_p99_s": pct(per_robot_all, 99),
        "release_to_whole_fleet_p50_s": pct(fleet_wide, 50), "release_to_whole_fleet_max_s": max(fleet_wide, default=None),
        "releases": distribution, "fleet_env_steps_per_s": round(steps / elapsed, 1),
    }
    print(json.dumps(result))
    print(f"{'latency':<34}{'p50 (s)':>10}{'p99 (s)':>10}\n"
          f"{'episode finished -> in buffer':<34}{result['episode_to_buffer_p50_s']!s:>10}{result['episode_to_buffer_p99_s']!s:>10}\n"
          f"{'release approved -> on a robot':<34}{result['release_to_robot_p50_s']!s:>10}{result['release_to_robot_p99_s']!s:>10}",
          file=sys.stderr)


if __name__ == "__main__":
    main()

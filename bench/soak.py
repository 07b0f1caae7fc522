"""Soak the fleet: N robots for T seconds with ingestion running alongside; prints one JSON object.

    uv run python bench/soak.py --robots 8 --seconds 300 [--kill-every 20]

Uses the configured stack (object store, signing secret; `LWD_*` / lwd.yaml) under a fresh data dir
unless --data-dir is given. A tiny signed policy is published so actors run at simulator speed.
With --kill-every S, a random actor process is killed (SIGKILL) every S seconds.

Reports: finished (episodes in the actors' spool ledgers), buffered, lost (finished but not buffered
after the drain), duplicated (ids in the buffer more than once), quarantined, backlog at the end of
the run (spooled + uploaded but not yet ingested), ingest passes, env steps/s, episode-to-buffer
latency p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from flows.service_defaults import apply_service_defaults

    apply_service_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-episode-steps", type=int, default=100)
    parser.add_argument("--kill-every", type=float, default=0.0)
    parser.add_argument("--data-dir", default="")
    args = parser.parse_args()

    from flows.fleet import fleet_supervisor
    from lwd_core.algo.checkpoint import save_checkpoint
    from lwd_core.algo.learner import Learner, LearnerSpec
    from lwd_core.config import AlgoConfig, load_config
    from lwd_core.data.ingest import ingest_batch, pending_raw
    from lwd_core.data.layout import buffer_prefix
    from lwd_core.fleet.coordinator import Coordinator, release_for_checkpoint
    from lwd_core.fleet.edge import EdgeClient
    from lwd_core.security import episode_signature_check, keyring_for, release_signer
    from lwd_core.store import open_store
    from lwd_core.suite import ACTION_DIM, OBS_DIM, fleet_robot_ids
    from tasks.pipeline import expectations

    config = load_config(data_dir=args.data_dir or tempfile.mkdtemp(prefix="lwd-soak-"))
    config.fleet.robots, config.fleet.max_episode_steps = args.robots, args.max_episode_steps
    store = open_store(config)
    if store.protocol == "s3":
        store.ensure_bucket()
    learner = Learner(LearnerSpec.from_config(AlgoConfig(hidden_dims=[64, 64], flow_steps=2).with_agent(
        "lwd", critic_heads=2, value_size=11), OBS_DIM, ACTION_DIM, "lwd"))
    save_checkpoint(store, "checkpoints/soak", learner, learner.init(0))
    keyring = keyring_for(config, fleet_robot_ids(config.fleet.robots))  # S3: keys from `lwd keys generate`
    Coordinator(store, sign_release=release_signer(keyring)).publish_all(
        release_for_checkpoint(store, "checkpoints/soak", "soak"))
    robots, supervisor = fleet_supervisor(config)
    supervisor.backoff_s, supervisor.max_restarts = 0.5, 10_000
    check = episode_signature_check(keyring)
    counts: Counter = Counter()
    latencies: list[float] = []
    rng = random.Random(0)
    stop = supervisor.run_in_background()
    started = time.monotonic()
    next_kill = started + args.kill_every if args.kill_every else float("inf")

    def ingest_pass() -> None:
        keys = pending_raw(store, 256)
        if keys:
            report = ingest_batch(store, keys, expectations(config), check_signature=check)
            summary = report.summary()
            for name in ("accepted", "quarantined", "duplicates"):
                counts[name] += getattr(summary, name)
            latencies.extend(summary.latency_s)
            counts["ingest_passes"] += 1

    try:
        while time.monotonic() - started < args.seconds:
            ingest_pass()
            if time.monotonic() >= next_kill:
                live = [c for c in supervisor.children if c.process is not None and c.process.poll() is None]
                if live:
                    os.kill(rng.choice(live).process.pid, signal.SIGKILL)
                    counts["kills"] += 1
                next_kill += args.kill_every
            time.sleep(1.0)
    finally:
        elapsed = time.monotonic() - started
        spools = list((Path(config.data_dir) / "spool").iterdir())
        backlog = len(pending_raw(store)) + sum(len(EdgeClient(s, store).pending()) for s in spools)
        stop.set()
        supervisor.stop()
    for spool in spools:
        EdgeClient(spool, store).flush()
    while pending_raw(store):
        ingest_pass()
    finished = {r["episode_id"] for s in spools for r in EdgeClient(s, store).finished()}
    ids = [k.rsplit("/", 1)[1] for k in store.list(buffer_prefix("online"), ".parquet")]
    duplicated = sum(n - 1 for n in Counter(ids).values() if n > 1)
    states = Coordinator(store).actors().values()
    steps = sum(v.get("steps", 0) for s in states for v in s.get("per_version", {}).values())
    print(json.dumps({
        "robots": len(robots), "seconds": round(elapsed, 1), "finished": len(finished), "buffered": len(ids),
        "lost": len(finished - {i.removesuffix(".parquet") for i in ids}), "duplicated": duplicated,
        "duplicate_uploads_dropped": counts["duplicates"], "quarantined": counts["quarantined"],
        "backlog_at_end": backlog, "ingest_passes": counts["ingest_passes"], "actor_kills": counts["kills"],
        "actor_restarts": sum(c.restarts for c in supervisor.children),
        "env_steps_per_s": round(steps / elapsed, 1),
        "latency_p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "data_dir": config.data_dir,
    }))


if __name__ == "__main__":
    main()

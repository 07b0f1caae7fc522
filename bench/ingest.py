"""Ingestion throughput: episodes and transitions per second through validation (GX suite, signature,
content hash) + deduplication + buffer append + labelling, against a plain Parquet copy of the same
bytes (GET + atomic PUT) in the same run. Prints one JSON object.

    uv run python bench/ingest.py [--episodes 200] [--steps 200] [--batch 64] [--store file:///tmp/x]
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

from lwd_core.config import LWDConfig  # noqa: E402
from lwd_core.data.episode import Episode  # noqa: E402
from lwd_core.data.ingest import ingest_batch, pending_raw  # noqa: E402
from lwd_core.data.labels import label_episode, unlabelled_keys, write_labels  # noqa: E402
from lwd_core.data.layout import get_episode, raw_key  # noqa: E402
from lwd_core.data.nstep import NStepSchedule  # noqa: E402
from lwd_core.data.validation import Expectations, validate_episodes  # noqa: E402
from lwd_core.security import episode_signature_check, episode_signer, keyring_for  # noqa: E402
from lwd_core.store import ObjectStore, now_us  # noqa: E402
from lwd_core.suite import (  # noqa: E402
    ACTION_DIM,
    OBS_DIM,
    SCENE_OBS_DIMS,
    TASK_SUITE,
    pad_observation,
    sparse_rewards,
)


def fleet_episode(rng: np.random.Generator, index: int, steps: int) -> Episode:
    task = TASK_SUITE[index % len(TASK_SUITE)]
    obs = np.stack([pad_observation(row, task) for row in rng.normal(size=(steps + 1, SCENE_OBS_DIMS[task.scene]))])
    success = np.zeros(steps, bool)
    success[-1] = index % 3 == 0
    return Episode(robot_id=f"robot-{index % 16:02d}", task_id=task.task_id, instruction=task.instruction,
                   policy_version="policy-v1", source="rollout", outcome="success" if success[-1] else "failure",
                   observations=obs[:-1], actions=rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32),
                   rewards=sparse_rewards(success), successes=success,
                   interventions=np.zeros(steps, bool), terminals=success, chunk_pos=np.arange(steps) % 5,
                   timestamps_us=now_us() - 3_600_000_000 + index * 10**7 + np.arange(steps) * 50_000,
                   next_observations=obs[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--store", default="")
    args = parser.parse_args()
    store = ObjectStore(args.store or Path(tempfile.mkdtemp(prefix="lwd-bench-ingest-")).as_uri())
    config = LWDConfig(data_dir=tempfile.mkdtemp(prefix="lwd-bench-"))
    keyring = keyring_for(config, [f"robot-{i:02d}" for i in range(16)])
    sign = episode_signer(keyring)
    rng = np.random.default_rng(0)
    blobs = {}
    for index in range(args.episodes):
        episode = fleet_episode(rng, index, args.steps)
        blobs[raw_key(episode.robot_id, episode.episode_id)] = episode.to_parquet_bytes(sign(episode))
    transitions = args.episodes * args.steps
    expectations = Expectations(obs_dim=OBS_DIM, action_dim=ACTION_DIM, tasks=frozenset(t.task_id for t in TASK_SUITE),
                                robots=frozenset(f"robot-{i:02d}" for i in range(16)),
                                policy_versions=frozenset({"policy-v1"}), max_steps=1000)
    validate_episodes([fleet_episode(rng, 0, 5)], expectations)  # GX import + context build outside the timing

    # Baseline: copy the same bytes raw -> buffer with no checks.
    for key, data in blobs.items():
        store.put_atomic(key, data)
    start = time.perf_counter()
    for key in pending_raw(store):
        store.put_atomic(key.replace("raw/", "copy/", 1), store.get(key))
        store.delete(key)
    copy_s = time.perf_counter() - start

    for key, data in blobs.items():
        store.put_atomic(key, data)
    check = episode_signature_check(keyring)
    start = time.perf_counter()
    keys = pending_raw(store)
    accepted = 0
    for i in range(0, len(keys), args.batch):
        accepted += ingest_batch(store, keys[i : i + args.batch], expectations, check_signature=check).count("accepted")
    ingest_s = time.perf_counter() - start
    schedule = NStepSchedule.from_config(config.algo)
    start = time.perf_counter()
    rows = [label_episode(get_episode(store, k), config.algo.discount, schedule) for k in unlabelled_keys(store, "online")]
    write_labels(store, "online", rows)
    label_s = time.perf_counter() - start
    total = ingest_s + label_s
    print(json.dumps({
        "store": store.protocol, "episodes": args.episodes, "steps_per_episode": args.steps,
        "bytes_per_episode": int(np.mean([len(b) for b in blobs.values()])), "accepted": accepted,
        "ingest_episodes_per_s": round(args.episodes / ingest_s, 1),
        "ingest_plus_label_episodes_per_s": round(args.episodes / total, 1),
        "ingest_plus_label_transitions_per_s": round(transitions / total),
        "plain_copy_episodes_per_s": round(args.episodes / copy_s, 1),
        "plain_copy_transitions_per_s": round(transitions / copy_s),
        "slowdown_vs_plain_copy": round(total / copy_s, 2),
    }))


if __name__ == "__main__":
    main()

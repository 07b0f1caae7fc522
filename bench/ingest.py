"""Ingestion throughput: episodes and transitions per second through validation (GX suite, signature,
content hash) + deduplication + buffer append + labelling, against a plain Parquet copy of the same
bytes (GET + atomic PUT) in the same run. Prints one JSON object.

    uv run python bench/ingest.py [--episodes 200] [--steps 200] [--batch 64] [--store file:///tmp/x]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lwd_core.config import LWDConfig  # noqa: E402
from lwd_core.data.episode import Episode  # noqa: E402
from lwd_core.data.ingest import ingest_next, pending_raw  # noqa: E402
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
                   timestamps_us=now_us() - 3_600_000_000 + index * 10**6 + np.arange(steps) * 50_000,
                   next_observations=obs[1:])


ROBOTS = [f"robot-{i:02d}" for i in range(16)]


def bench_expectations() -> Expectations:
    return Expectations(obs_dim=OBS_DIM, action_dim=ACTION_DIM, tasks=frozenset(t.task_id for t in TASK_SUITE),
                        robots=frozenset(ROBOTS), policy_versions=frozenset({"policy-v1"}), max_steps=1000)


def ingest_worker(store_url: str, data_dir: str, index: int, batch: int, threads: int, ready, results) -> None:
    """One ingest worker (a process): micro-batches from the shards of raw/ it leases, labelling as it
    goes. Reports (start, end, accepted); imports and set-up happen before the shared start."""
    store = ObjectStore(store_url)
    config = LWDConfig(data_dir=data_dir)
    check = episode_signature_check(keyring_for(config, ROBOTS))
    schedule = NStepSchedule.from_config(config.algo)
    expectations = bench_expectations()

    def label(episode: Episode) -> dict:
        return label_episode(episode, config.algo.discount, schedule)

    sample = fleet_episode(np.random.default_rng(index), 0, 5)  # first-call costs outside the timing
    validate_episodes([Episode.from_parquet_bytes(sample.to_parquet_bytes())], expectations)
    pl.DataFrame([label(sample)]).write_parquet(io.BytesIO())
    ready.wait()
    start = time.monotonic()
    accepted = 0
    while (report := ingest_next(store, f"bench-worker-{index}", expectations, batch_size=batch,
                                 check_signature=check, label=label, workers=threads)) is not None:
        accepted += report.count("accepted")
    results.put((start, time.monotonic(), accepted))


def timed_ingest(store: ObjectStore, data_dir: str, processes: int, batch: int, threads: int) -> tuple[float, int]:
    """Wall seconds from the shared start to the last worker's end, and episodes accepted."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(processes + 1), context.Queue()
    workers = [context.Process(target=ingest_worker, args=(store.url, data_dir, index, batch, threads, ready, results))
               for index in range(processes)]
    for worker in workers:
        worker.start()

    def check_alive() -> None:  # a worker that dies ends the run with its exit code, not a hang
        crashed = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
        if crashed:
            ready.abort()
            raise SystemExit(f"an ingest worker exited with code {crashed[0]} (its traceback is above)")

    while ready.n_waiting < processes:  # set-up (imports, first calls) before the shared start
        check_alive()
        time.sleep(0.01)
    ready.wait()
    reports: list[tuple[float, float, int]] = []
    while len(reports) < processes:
        check_alive()
        try:
            reports.append(results.get(timeout=0.5))
        except queue.Empty:
            pass
    for worker in workers:
        worker.join()
    return max(end for _, end, _ in reports) - min(start for start, _, _ in reports), sum(n for _, _, n in reports)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--store", default="")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ingest threads per micro-batch")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                        help="ingest workers sharing raw/ through leased shards (a second run uses one)")
    args = parser.parse_args()
    store = ObjectStore(args.store or Path(tempfile.mkdtemp(prefix="lwd-bench-ingest-")).as_uri())
    data_dir = tempfile.mkdtemp(prefix="lwd-bench-")
    config = LWDConfig(data_dir=data_dir)
    sign = episode_signer(keyring_for(config, ROBOTS))
    rng = np.random.default_rng(0)
    blobs = {}
    for index in range(args.episodes):
        episode = fleet_episode(rng, index, args.steps)
        blobs[raw_key(episode.robot_id, episode.episode_id)] = episode.to_parquet_bytes(sign(episode))
    transitions = args.episodes * args.steps

    def reset() -> None:
        for key in store.list("copy") + store.list("buffer") + store.list("labels") + store.list("raw"):
            store.delete(key)
        for key, data in blobs.items():
            store.put_atomic(key, data)

    def plain_copy() -> float:
        """The floor: the same bytes raw -> buffer with no checks (GET + atomic PUT + delete)."""
        reset()
        start = time.perf_counter()
        for key in pending_raw(store):
            store.put_atomic(key.replace("raw/", "copy/", 1), store.get(key))
            store.delete(key)
        return time.perf_counter() - start

    def ingest_and_label(processes: int) -> tuple[float, int, int]:
        reset()
        ingest_s, accepted = timed_ingest(store, data_dir, processes, args.batch, args.threads)
        # The label stage's catch-up pass (what ingest did not label): listed and read, normally nothing.
        schedule = NStepSchedule.from_config(config.algo)
        start = time.perf_counter()
        rows = [label_episode(get_episode(store, k), config.algo.discount, schedule)
                for k in unlabelled_keys(store, "online")]
        write_labels(store, "online", rows)
        return ingest_s + time.perf_counter() - start, accepted, len(rows)

    # Alternating repeats, medians: one slow moment of a shared machine does not decide the ratio.
    runs: dict[str, list] = {"copy": [], "ingest": [], "ingest_one_process": []}
    for _ in range(args.repeats):
        runs["copy"].append(plain_copy())
        runs["ingest"].append(ingest_and_label(args.processes))
        if args.processes != 1:
            runs["ingest_one_process"].append(ingest_and_label(1))
    copy_s = float(np.median(runs["copy"]))

    def figures(results: list[tuple[float, int, int]]) -> dict:
        total = float(np.median([seconds for seconds, _, _ in results]))
        return {"accepted": min(n for _, n, _ in results), "labelled_after_ingest": max(n for _, _, n in results),
                "ingest_plus_label_episodes_per_s": round(args.episodes / total, 1),
                "ingest_plus_label_transitions_per_s": round(transitions / total),
                "slowdown_vs_plain_copy": round(total / copy_s, 2),
                # Each repeat against the copy run just before it: the spread a shared machine adds.
                "slowdown_per_repeat": [round(seconds / copy, 2) for (seconds, _, _), copy
                                        in zip(results, runs["copy"], strict=True)]}

    print(json.dumps({
        "store": store.protocol, "episodes": args.episodes, "steps_per_episode": args.steps, "repeats": args.repeats,
        "bytes_per_episode": int(np.mean([len(b) for b in blobs.values()])),
        "ingest_processes": args.processes, "threads_per_process": args.threads, **figures(runs["ingest"]),
        "plain_copy_episodes_per_s": round(args.episodes / copy_s, 1),
        "plain_copy_transitions_per_s": round(transitions / copy_s),
        "one_process": figures(runs["ingest_one_process"] or runs["ingest"]),
    }))


if __name__ == "__main__":
    main()

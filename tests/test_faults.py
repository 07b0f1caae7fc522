"""Fault injection on loopback: kill -9 actors (and their uploaders), ingestion and the learner at
random points, 20+ times, over a real S3 server; then reconcile.

- every episode an actor finished (its spool ledger) is in the buffer exactly once;
- training resumes from the last committed checkpoint and reaches its target step;
- the fleet ends on one approved (signed) release.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_keyring, publisher
from test_fleet import tiny_policy_checkpoint

from lwd_core.algo.trainer import latest_committed_checkpoint
from lwd_core.config import LWDConfig
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.data.labels import label_buffer
from lwd_core.data.layout import buffer_prefix
from lwd_core.data.nstep import NStepSchedule
from lwd_core.data.snapshot import build_snapshot
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.fleet.edge import EdgeClient
from lwd_core.security import episode_signature_check, keyring_for

ROOT = Path(__file__).resolve().parent.parent
FAULTS = 21
LEARNER_STEPS, LEARNER_EVERY = 600, 20
RUN_ROOT = "checkpoints/run-faults"

INGEST = """
import sys, time
from lwd_core.config import load_config
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.security import episode_signature_check, keyring_for
from lwd_core.store import open_store
from tasks.pipeline import expectations
config = load_config(); store = open_store(config); check = episode_signature_check(keyring_for(config))
print("ready", flush=True)  # imports done: the test kills it from here on
while True:
    keys = pending_raw(store, 256)
    if keys:
        ingest_batch(store, keys, expectations(config), check_signature=check)
    elif sys.argv[1:] == ["--once"]:
        break
    else:
        time.sleep(0.1)
"""

LEARNER = f"""
from lwd_core.algo.compilation import use_compilation_cache
from lwd_core.algo.trainer import TrainingPlan, run_training
from lwd_core.algo.agents.base import Stage
from lwd_core.algo.transition_cache import TransitionCache
from lwd_core.config import load_config
from lwd_core.data.snapshot import load_snapshot
from lwd_core.store import open_store
config = load_config(); store = open_store(config); use_compilation_cache(config.compilation_cache_dir)
snapshot = load_snapshot(store)
algo = config.algo.model_copy(update={{"checkpoint_every": {LEARNER_EVERY}}})
plan = TrainingPlan(snapshot_id=snapshot.snapshot_id, kind="offline", method="lwd", parent=None,
                    pointer_generation=None, start_step=0, stages=(Stage("train", {LEARNER_STEPS}),),
                    run_root="{RUN_ROOT}", transitions={{}}, seed=0)
run_training(store, plan, algo, TransitionCache().load(store, snapshot, algo, "online"), move_latest=False)
"""


@pytest.fixture
def fleet_env(s3_store, tmp_path, monkeypatch):
    options = s3_store.storage_options
    env = {
        "LWD_DATA_DIR": str(tmp_path / "data"), "LWD_STORAGE__URL": s3_store.url,
        "LWD_STORAGE__ENDPOINT_URL": options["client_kwargs"]["endpoint_url"], "LWD_STORAGE__KEY": options["key"],
        "LWD_STORAGE__SECRET": options["secret"], "LWD_FLEET__ROBOTS": "2", "LWD_FLEET__MAX_EPISODE_STEPS": "40",
        "LWD_FLEET__REALTIME_FACTOR": "4",
        "LWD_FLEET__POLL_SECONDS": "0.2", "LWD_FLEET__ROBOTS_PER_PROCESS": "1",
        "LWD_FLEET__TASKS": '["restock-horizontal", "swap-pair"]', "LWD_ALGO__HIDDEN_DIMS": "[32, 32]",
        "LWD_ALGO__BATCH_SIZE": "32", "LWD_ALGO__FLOW_STEPS": "2",
        "LWD_ALGO__AGENTS": '{"lwd": {"critic_heads": 2, "value_size": 11}}',
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LWD_CONFIG", raising=False)
    return LWDConfig()


def _script(code: str, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=dict(os.environ),
                            stdout=stdout, stderr=subprocess.DEVNULL, text=True)


def _wait_until_ready(process: subprocess.Popen, timeout: float) -> None:
    """Until the script prints its ready line: imports take minutes on a loaded machine."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 1.0)[0] and process.stdout.readline().strip() == "ready":
            return
    code = process.poll()
    _kill(process)
    raise AssertionError(f"the script exited ({code}) before it was ready" if code is not None
                         else "timed out waiting for the script's imports")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    if process.stdout is not None:
        process.stdout.close()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _buffer_ids(store) -> list[str]:
    return [k.rsplit("/", 1)[1].removesuffix(".parquet") for k in store.list(buffer_prefix("online"), ".parquet")]


def test_random_kills_lose_nothing_duplicate_nothing_and_end_on_one_approved_release(s3_store, fleet_env):
    from flows.fleet import fleet_supervisor
    from tasks.pipeline import expectations

    config, store, rng = fleet_env, s3_store, random.Random(20261124)
    # An S3 deployment's keys come from `lwd keys generate`; the actors read them from <data_dir>/keys.
    coordinator = publisher(store, make_keyring(Path(config.data_dir) / "keys", robots=config.fleet.robots))
    coordinator.publish_all(tiny_policy_checkpoint(store, "checkpoints/v1", 0))
    robots, supervisor = fleet_supervisor(config)
    supervisor.backoff_s, supervisor.max_restarts = 0.2, 100
    stop_fleet = supervisor.run_in_background()
    faults: dict[str, int] = {"actor": 0, "ingest": 0, "learner": 0}
    try:
        # Some data first, so the learner has a snapshot to train on.
        _wait(lambda: len(pending_raw(store)) >= 4, 600, "first uploads")
        ingest_batch(store, pending_raw(store), expectations(config),
                     check_signature=episode_signature_check(keyring_for(config)))
        label_buffer(store, "online", config.algo.discount, NStepSchedule.from_config(config.algo))
        build_snapshot(store)

        ingester = learner = None

        def live_actors() -> list[subprocess.Popen]:
            return [c.process for c in supervisor.children if c.process is not None and c.process.poll() is None]

        # The learner is killed least often: each kill waits for a fresh process to import, compile and commit.
        kinds = ["actor"] * 9 + ["ingest"] * 8 + ["learner"] * 4
        rng.shuffle(kinds)
        for kind in kinds:
            if kind == "actor":
                time.sleep(rng.uniform(0.2, 2.0))
                # Only a running actor counts as a kill (one killed earlier may not be restarted yet).
                _wait(lambda: bool(live_actors()), 60, "a live actor")
                rng.choice(live_actors()).send_signal(signal.SIGKILL)
            elif kind == "ingest":
                ingester = _script(INGEST, stdout=subprocess.PIPE)
                _wait_until_ready(ingester, 600)
                time.sleep(rng.uniform(0.0, 3.0))  # somewhere in its batches
                _kill(ingester)
            else:
                before = latest_committed_checkpoint(store, RUN_ROOT)
                learner = _script(LEARNER)
                # Kill only after it committed something new (its progress, not a fixed wait: a loaded
                # machine may need minutes for imports and compilation), at a random point after.
                _wait(lambda: latest_committed_checkpoint(store, RUN_ROOT) != before or learner.poll() is not None,
                      900, "the learner's next committed checkpoint")
                time.sleep(rng.uniform(0.0, 1.0))
                _kill(learner)
            faults[kind] += 1
        assert sum(faults.values()) >= 20

        # The fleet ends on one approved release.
        v2 = tiny_policy_checkpoint(store, "checkpoints/v2", 1)
        coordinator.publish_all(v2)
        _wait(lambda: coordinator.running("v2", robots), 600, "every robot on v2")
    finally:
        stop_fleet.set()
        supervisor.stop()

    # Reconcile: drain every spool, ingest everything, compare with what actors finished.
    finished: set[str] = set()
    for spool in (Path(config.data_dir) / "spool").iterdir():
        edge = EdgeClient(spool, store)
        assert not edge.flush().failed
        finished |= {record["episode_id"] for record in edge.finished()}
    final = _script(INGEST, "--once")
    assert final.wait(timeout=1800) == 0  # imports (minutes when loaded), then the whole backlog
    ids = _buffer_ids(store)
    assert len(ids) == len(set(ids)), "an episode is in the buffer twice"
    assert finished and finished <= set(ids), f"lost {len(finished - set(ids))} finished episodes"
    assert pending_raw(store) == [] and store.list("quarantine") == []
    states = Coordinator(store).actors()
    assert {s["running_version"] for s in states.values()} == {"v2"}
    assert sum(c.restarts for c in supervisor.children) >= faults["actor"] - 1

    # Training resumes from its last checkpoint and reaches the target step.
    resumed_from = latest_committed_checkpoint(store, RUN_ROOT)
    assert resumed_from is not None, "no learner kill landed after a checkpoint"
    finisher = _script(LEARNER)
    assert finisher.wait(timeout=1800) == 0  # imports and compilation, then training to the target step
    last = latest_committed_checkpoint(store, RUN_ROOT)
    manifest = store.get_json(f"{last}/_MANIFEST.json")
    assert manifest["step"] == LEARNER_STEPS and manifest["resumed_from"] is not None
    print(json.dumps({"faults": faults, "finished": len(finished), "buffered": len(ids)}))

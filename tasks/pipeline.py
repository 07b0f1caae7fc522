"""Prefect tasks of the online flywheel, each a thin wrapper over lwd_core. Tasks pass keys and ids,
never arrays, so retries and the UI stay cheap."""

from __future__ import annotations

import json
import time

from prefect import get_run_logger, task

from lwd_core.algo.checkpoint import load_checkpoint
from lwd_core.config import LWDConfig
from lwd_core.data.ingest import ingest_batch, pending_raw, write_ingest_log
from lwd_core.data.labels import label_episode, unlabelled_keys, write_labels
from lwd_core.data.layout import get_episode
from lwd_core.data.snapshot import build_snapshot, load_snapshot
from lwd_core.data.validation import Expectations
from lwd_core.fleet.actor import fleet_robot_ids
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.security import episode_signature_check
from lwd_core.sim.tasks import ACTION_DIM, OBS_DIM, select_tasks
from lwd_core.store import COMMIT_MANIFEST, open_store, sha256_hex
from tasks import tracking

LATEST_CHECKPOINT = "checkpoints/_latest.json"


def expectations(config: LWDConfig) -> Expectations:
    """The suite's parameters now: known tasks, robots, and every version the coordinator published."""
    coordinator = Coordinator(open_store(config))
    desired = coordinator.desired()
    releases = [desired.get("stable")] + list(desired.get("history", []))
    if desired.get("canary"):
        releases.append(desired["canary"]["release"])
    suite = select_tasks(config.fleet.tasks)
    return Expectations(
        obs_dim=OBS_DIM, action_dim=ACTION_DIM, tasks=frozenset(t.task_id for t in suite),
        robots=frozenset(fleet_robot_ids(config.fleet.robots)),
        policy_versions=frozenset(r["version"] for r in releases if r),
        max_steps=max(t.horizon for t in suite),
    )


@task(retries=3, retry_delay_seconds=[1, 5, 20])
def list_uploaded(config: LWDConfig, limit: int = 0) -> list[str]:
    """Keys waiting in raw/ (retried: the object store may be briefly unreachable)."""
    return pending_raw(open_store(config), limit)


@task(retries=3, retry_delay_seconds=[1, 5, 20], task_run_name="ingest-batch-{index}")
def ingest_micro_batch(config: LWDConfig, keys: list[str], index: int) -> dict:
    store = open_store(config)
    check = episode_signature_check(config.fleet) if config.fleet.require_signatures else None
    report = ingest_batch(store, keys, expectations(config), check_signature=check)
    log_key = write_ingest_log(store, report, f"batch{index}")
    return {"summary": report.summary(), "log": log_key,
            "quarantined": [{"raw_key": o.raw_key, "reasons": o.reasons} for o in report.outcomes
                            if o.status == "quarantined"]}


@task(retries=2, retry_delay_seconds=2, task_run_name="label-{kind}")
def label_buffer(config: LWDConfig, kind: str) -> dict:
    from lwd_core.algo.nstep import NStepSchedule

    store = open_store(config)
    schedule = NStepSchedule.from_config(config.algo)
    rows = [label_episode(get_episode(store, key), config.algo.discount, schedule) for key in unlabelled_keys(store, kind)]
    key = write_labels(store, kind, rows)
    return {"kind": kind, "labelled": len(rows), "table": key,
            "successes": sum(r["outcome"] == "success" for r in rows),
            "intervention_steps": sum(r["intervention_steps"] for r in rows)}


@task(retries=2, retry_delay_seconds=2)
def take_snapshot(config: LWDConfig) -> dict:
    manifest = build_snapshot(open_store(config))
    return {k: manifest[k] for k in ("snapshot_id", "parent", "stats", "unlabelled")} | {
        "episodes": len(manifest["episodes"])}


def latest_checkpoint(config: LWDConfig) -> str | None:
    store = open_store(config)
    return store.get_json(LATEST_CHECKPOINT)["checkpoint"] if store.exists(LATEST_CHECKPOINT) else None


@task(retries=1, retry_delay_seconds=5, timeout_seconds=6 * 3600)
def train_on_snapshot(config: LWDConfig, snapshot_id: str, steps: int, method: str, resume: bool,
                      register: bool = True, registered_model: str = "", label: str = "") -> dict:
    """Train on a snapshot from the last checkpoint; MLflow run, checkpoint, registered model version.

    Multi-host: every learner process runs this; all train, process 0 alone logs and checkpoints.
    """
    import jax

    from lwd_core.algo import distributed
    from lwd_core.algo.training import (
        build_replay,
        load_snapshot_episodes,
        refresh_recap_conditions,
        new_learner,
        online_update_budget,
        per_task_value,
        pretrain_and_warm_up,
        run_updates,
        staging_steps,
        train_resumable,
    )

    logger = get_run_logger()
    distributed.initialize_from_env()  # no-op unless LWD_JAX_COORDINATOR is set
    mesh = distributed.data_mesh() if jax.device_count() > 1 else None
    store = open_store(config)
    manifest = load_snapshot(store, snapshot_id)
    parent = latest_checkpoint(config) if resume else None
    stage = "online" if parent else "offline"
    episodes = load_snapshot_episodes(store, manifest)
    seed = config.algo.seed + 1_000_003 * jax.process_index()
    if parent:
        learner, state, _ = load_checkpoint(store, parent)
        start_step = int(state.step)
        seed += start_step  # fresh batches each round (the step moves on), distinct ones on each host
        replay = build_replay(episodes, config.algo, stage, seed=seed, method=method)
        steps = steps or online_update_budget(config.algo, replay.sizes["online"])
    else:
        learner, state, start_step = new_learner(config.algo, method), None, 0
        replay = build_replay(episodes, config.algo, stage, seed=seed, method=method)
        # ``steps`` counts extraction updates; pretraining and warm-up come on top.
        steps = staging_steps(config.algo, method) + (steps or config.algo.offline_steps)

    def initial_state():
        """Offline: the pretrained policy and critic warm-up come first (skipped when a crashed run resumes).
        Every host stages with the same seed, so all start from identical parameters."""
        if state is not None:
            return learner, state
        return learner, pretrain_and_warm_up(learner, episodes, config.algo, config.algo.seed, method)

    before_chunk = None
    if method == "recap":
        def before_chunk(learner, state):
            refresh_recap_conditions(learner, state, replay, config.algo.recap_positive_fraction)
    if jax.process_index() != 0:
        _, begin = initial_state()
        run_updates(learner, begin, replay, max(0, start_step + steps - int(begin.step)), config.algo.batch_size,
                    mesh=mesh)
        return {"stage": stage, "snapshot_id": manifest["snapshot_id"], "process": jax.process_index()}
    # Same snapshot, parent and method -> same run directory, so a retry resumes instead of restarting.
    run_root = f"checkpoints/run-{manifest['snapshot_id']}-{label or method}-from{start_step}"

    mlflow = tracking.mlflow_setup(config)
    with mlflow.start_run(run_name=f"train-{label or stage}-{manifest['snapshot_id']}") as run:
        mlflow.set_tags({"stage": stage, "snapshot_id": manifest["snapshot_id"], "parent_checkpoint": parent or "",
                         "method": learner.spec.method, "devices": jax.device_count(), "run_root": run_root})
        mlflow.log_params({"snapshot_id": manifest["snapshot_id"], "stage": stage, "steps": steps,
                           "offline_transitions": replay.sizes["offline"], "online_transitions": replay.sizes["online"],
                           **{f"algo.{k}": v for k, v in config.algo.model_dump().items()}})
        start = time.monotonic()
        result = train_resumable(store, run_root, initial_state, replay, start_step + steps,
                                 config.algo.batch_size, config.algo.checkpoint_every, mesh=mesh,
                                 on_log=lambda step, metrics: mlflow.log_metrics(metrics, step=step),
                                 extra={"snapshot_id": manifest["snapshot_id"], "parent": parent, "stage": stage},
                                 before_chunk=before_chunk)
        elapsed = time.monotonic() - start
        per_task = per_task_value(result.learner, result.state, replay)
        mlflow.log_metrics({f"value_mean/{t}": v for t, v in per_task.items()}, step=int(result.state.step))
        mlflow.log_metric("updates_per_second", steps / max(elapsed, 1e-9))
        if result.resumed_from:
            mlflow.set_tag("resumed_from", result.resumed_from)
        checkpoint = result.checkpoint
        manifest_doc = store.get_json(f"{checkpoint}/{COMMIT_MANIFEST}")
        if not label:  # experiment arms do not move the flywheel's "last checkpoint"
            store.put_json(LATEST_CHECKPOINT, {"checkpoint": checkpoint})
        mlflow.log_dict(manifest_doc, "checkpoint/_MANIFEST.json")
        mlflow.set_tag("checkpoint", store.uri(checkpoint))
        version = None
        if register:
            version = tracking.register_policy(config, store, checkpoint, registered_model=registered_model, tags={
                "snapshot_id": manifest["snapshot_id"], "checkpoint": checkpoint,
                "policy_sha256": manifest_doc["files"]["policy.msgpack"]["sha256"], "stage": stage,
                "run_id": run.info.run_id})
        logger.info("trained %d steps (%s) on %s in %.0fs -> %s (model version %s)", steps, stage,
                    manifest["snapshot_id"], elapsed, checkpoint, version)
        return {"checkpoint": checkpoint, "model_version": version, "run_id": run.info.run_id, "stage": stage,
                "snapshot_id": manifest["snapshot_id"], "steps": steps, "seconds": elapsed,
                "final_metrics": result.history[-1] if result.history else {}}


def evaluate_checkpoint(config: LWDConfig, checkpoint: str, policy_sha256: str | None, episodes_per_task: int,
                        seed: int, name: str) -> dict:
    """Sim-suite success of a checkpoint's policy; cached per (checkpoint, episodes, seed, limits, tasks)."""
    from lwd_core.algo.checkpoint import load_policy
    from lwd_core.sim.evaluate import evaluate_policy, learner_policy, summarize
    from lwd_core.sim.pool import SimPool

    store = open_store(config)
    suite = select_tasks(config.fleet.tasks)
    digest = sha256_hex(json.dumps([checkpoint, episodes_per_task, seed, config.gate.max_steps,
                                    [t.task_id for t in suite]]).encode())[:16]
    cache = f"evals/{digest}.json"
    if store.exists(cache):
        return store.get_json(cache)
    learner, params = load_policy(store, checkpoint, policy_sha256)
    with SimPool(1) as pool:
        batch = min(len(suite) * episodes_per_task, pool.max_batch)  # pad to one compiled shape
        results = evaluate_policy(learner_policy(learner, params, seed, batch_size=batch), suite, episodes_per_task,
                                  seed=seed, max_steps=config.gate.max_steps or None, policy_version=name, pool=pool)
    summary = summarize(results) | {"checkpoint": checkpoint, "episodes_per_task": episodes_per_task, "seed": seed}
    store.put_json(cache, summary)
    return summary


@task(retries=1, timeout_seconds=3 * 3600, task_run_name="evaluate-{version}")
def evaluate_version(config: LWDConfig, version: str, episodes_per_task: int, seed: int) -> dict:
    """Sim-suite success of a registered version (same seeds for every version)."""
    tags = tracking.version_tags(config, version)
    return evaluate_checkpoint(config, tags["checkpoint"], tags["policy_sha256"], episodes_per_task, seed,
                               tracking.release_name(version)) | {"version": version}

"""Prefect tasks of the online flywheel, each a thin wrapper over lwd_core. Tasks pass keys and ids,
never arrays, so retries and the UI stay cheap."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from prefect import get_run_logger, task

from lwd_core.algo.compilation import use_compilation_cache
from lwd_core.config import LWDConfig
from lwd_core.data import labels
from lwd_core.data.ingest import IngestBatch, ingest_next, pending_raw, write_ingest_log
from lwd_core.data.labels import LabelReport, label_episode
from lwd_core.data.layout import BufferKind, snapshot_key
from lwd_core.data.snapshot import SnapshotSummary, build_snapshot
from lwd_core.data.validation import Expectations
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.promotion import TrainedVersion
from lwd_core.security import episode_signature_check, keyring_for
from lwd_core.sim.evaluate import evaluate_checkpoint
from lwd_core.store import open_store
from lwd_core.suite import fleet_robot_ids, select_tasks
from tasks import mlflow_adapter
from tasks.progress import progress
from tasks.retries import RETRY_DELAYS_S


def fleet_ids(config: LWDConfig) -> list[str]:
    """Every robot of the configured fleet, on every fleet host."""
    return fleet_robot_ids(config.fleet.robots, config.fleet.hosts)


def uploader_ids(config: LWDConfig) -> list[str]:
    """Every identity that signs uploads: the fleet's robots and the teleoperators."""
    return [*fleet_ids(config), *config.fleet.teleoperators]


def expectations(config: LWDConfig) -> Expectations:
    """The suite's parameters now: known tasks, robots, teleoperators, and every version the coordinator
    published."""
    return Expectations.for_suite(select_tasks(config.fleet.tasks), fleet_ids(config),
                                  Coordinator(open_store(config)).published_versions(),
                                  teleoperators=config.fleet.teleoperators)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S)
def count_uploaded(config: LWDConfig) -> int:
    """Uploads waiting in raw/ (retried: the object store may be briefly unreachable)."""
    return len(pending_raw(open_store(config)))


@task(retries=3, retry_delay_seconds=RETRY_DELAYS_S, task_run_name="ingest-batch-{index}")
def ingest_next_batch(config: LWDConfig, owner: str, index: int, batch_size: int = 64,
                      lease_s: float = 120.0) -> IngestBatch | None:
    """One micro-batch from the shards of raw/ this worker leases (retried: the object store may be
    briefly unreachable); None when nothing is waiting that another worker does not hold."""
    from lwd_core.data.nstep import NStepSchedule

    store = open_store(config)
    keyring = keyring_for(config, uploader_ids(config))
    check = episode_signature_check(keyring) if config.fleet.require_signatures else None
    schedule = NStepSchedule.from_config(config.algo)
    report = ingest_next(store, owner, expectations(config), batch_size=batch_size, lease_s=lease_s,
                         check_signature=check, workers=config.storage.io_workers,
                         label=lambda episode: label_episode(episode, config.algo.discount, schedule))
    if report is None:
        return None
    return report.batch(write_ingest_log(store, report, f"batch{index}"))


@task(retries=2, retry_delay_seconds=2, task_run_name="label-{kind}")
def label_buffer(config: LWDConfig, kind: BufferKind) -> LabelReport:
    from lwd_core.data.nstep import NStepSchedule

    return labels.label_buffer(open_store(config), kind, config.algo.discount, NStepSchedule.from_config(config.algo))


@task(retries=2, retry_delay_seconds=2)
def take_snapshot(config: LWDConfig) -> SnapshotSummary:
    return build_snapshot(open_store(config)).summary()


# A Prefect global concurrency limit of 1: one learner at a time, whichever flow or deployment starts it.
LEARNER_LIMIT = "lwd-learner"


@contextmanager
def learner_slot() -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(LEARNER_LIMIT, 1)
        except ObjectAlreadyExists:
            pass  # created at the same moment by another run
    with concurrency(LEARNER_LIMIT, occupy=1, strict=True):
        yield


@cache
def transition_cache(store_url: str):
    """This process's transitions of one store: the rounds of a flywheel run in one process, and each
    reads only what is new since the last (lwd_core.algo.transition_cache)."""
    from lwd_core.algo.transition_cache import TransitionCache

    return TransitionCache()


@task(retries=1, retry_delay_seconds=5, timeout_seconds=6 * 3600)
def train_on_snapshot(config: LWDConfig, snapshot_id: str, steps: int, method: str,
                      resume: bool) -> TrainedVersion | None:
    """Train on a snapshot from the last checkpoint (:class:`lwd_core.algo.learner_process.LearnerProcess`);
    an MLflow run with the metrics as they come, the checkpoint, and a registered model version.

    One learner at a time (:func:`learner_slot`). Multi-host: every learner process runs this; all
    train, process 0 alone holds the slot, logs, checkpoints and registers (None on the others).
    """
    # Imported here: flax and optax load only where a learner runs.
    from lwd_core.algo.learner_process import LearnerProcess

    use_compilation_cache(config.compilation_cache_dir)
    store = open_store(config)
    learner = LearnerProcess.join(store, snapshot_id, config.algo, method, resume, steps,
                                  transition_cache(config.storage.url))
    if not learner.leads:
        learner.follow()
        return None
    with learner_slot():  # planned inside the slot: it resumes from whatever the previous learner left
        plan = learner.plan()
        with (mlflow_adapter.training_run(config, plan, store.uri(snapshot_key(plan.snapshot_id))) as log_metrics,
              progress(f"training {plan.kind} on {plan.snapshot_id}", plan.steps, key="training-progress") as advance):
            result = learner.lead(plan, on_log=log_metrics, on_progress=advance,
                                  on_checkpoint=mlflow_adapter.checkpoint_logger(store, plan))
            trained = mlflow_adapter.finish_training_run(config, store, plan, result, result.seconds)
    get_run_logger().info("trained %d steps (%s) on %s in %.0fs -> %s (model version %s)", plan.steps, plan.kind,
                          plan.snapshot_id, trained.seconds, trained.checkpoint, trained.model_version)
    return trained


@task(retries=1, timeout_seconds=3 * 3600, task_run_name="evaluate-{version}")
def evaluate_version(config: LWDConfig, version: str, episodes_per_task: int, seed: int) -> dict:
    """Sim-suite success of a registered version (same seeds for every version)."""
    use_compilation_cache(config.compilation_cache_dir)
    registered = mlflow_adapter.model_version(config, version)
    suite = select_tasks(config.fleet.tasks)
    total = len(suite) * episodes_per_task
    with progress(f"evaluating v{version}", total, key="evaluation-progress") as advance:
        summary = evaluate_checkpoint(open_store(config), registered.checkpoint, registered.policy_sha256, suite,
                                      episodes_per_task, seed, config.gate.max_steps, registered.release,
                                      on_progress=lambda done, _total: advance(done))
        advance(total)  # also when the evaluation came from the cache
    return summary | {"version": version}

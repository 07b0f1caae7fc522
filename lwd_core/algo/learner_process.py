"""One process of a training run on a snapshot, on one host or many.

Every learner process trains (data-parallel over a mesh of all devices); process 0 alone plans inside
whatever lock its caller holds, commits checkpoints and moves the latest-checkpoint pointer. The others
follow: the same updates on their share of each batch, nothing written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax

from lwd_core.algo import distributed
from lwd_core.algo.trainer import TrainingPlan, TrainResult, follow_training, plan_training, run_training
from lwd_core.algo.transition_cache import TransitionCache
from lwd_core.config import AlgoConfig
from lwd_core.data.snapshot import load_snapshot
from lwd_core.store import ObjectStore


@dataclass
class LearnerProcess:
    store: ObjectStore
    snapshot_id: str  # empty: the latest snapshot when the plan is made
    algo: AlgoConfig
    method: str
    resume: bool
    steps: int
    process_index: int = 0
    mesh: Any = None  # None: one device
    # The transitions this process built for earlier runs (a flywheel's rounds share one process).
    cache: TransitionCache = field(default_factory=TransitionCache)

    @classmethod
    def join(cls, store: ObjectStore, snapshot_id: str, algo: AlgoConfig, method: str, resume: bool, steps: int,
             cache: TransitionCache | None = None) -> LearnerProcess:
        """This process's place in the run: joins a multi-host learner when a launcher set one up (a
        no-op on one host) and splits batches over every device when there are several."""
        distributed.initialize_from_env()
        mesh = distributed.data_mesh() if jax.device_count() > 1 else None
        return cls(store, snapshot_id, algo, method, resume, steps, jax.process_index(), mesh,
                   cache if cache is not None else TransitionCache())

    @property
    def leads(self) -> bool:
        return self.process_index == 0

    def plan(self) -> TrainingPlan:
        """Decided now, from the checkpoint pointer as it stands (the leader plans inside its lock)."""
        return plan_training(self.store, load_snapshot(self.store, self.snapshot_id), self.algo, self.method,
                             self.resume, self.steps, process_index=self.process_index)

    def _buffers(self, plan: TrainingPlan):
        return self.cache.load(self.store, load_snapshot(self.store, plan.snapshot_id), self.algo, plan.kind,
                               write_segments=self.leads)

    def follow(self) -> None:
        """A non-zero process: train alongside the leader, commit nothing."""
        plan = self.plan()
        follow_training(self.store, plan, self.algo, self._buffers(plan), self.mesh)

    def lead(self, plan: TrainingPlan, on_log: Callable[[int, dict[str, float]], None] | None = None,
             on_progress: Callable[[int], None] | None = None,
             on_checkpoint: Callable[[str, int], None] | None = None) -> TrainResult:
        """Process 0: train to the plan's target with committed checkpoints and move the latest pointer.
        ``on_progress(done)`` counts this run's updates; the result carries the wall time."""
        if not self.leads:
            raise RuntimeError(f"process {self.process_index} follows; only process 0 commits")

        def log(step: int, metrics: dict[str, float]) -> None:
            if on_log is not None:
                on_log(step, metrics)
            if on_progress is not None:
                on_progress(step - plan.start_step)

        started = time.monotonic()
        result = run_training(self.store, plan, self.algo, self._buffers(plan), on_log=log, mesh=self.mesh,
                              on_checkpoint=on_checkpoint)
        if on_progress is not None:
            on_progress(plan.steps)  # also when a rerun found the work already committed
        result.seconds = time.monotonic() - started
        return result

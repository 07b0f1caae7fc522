"""The update loop: ``steps`` learner updates on batches a replay samples, window-mean metrics out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from lwd_core.algo import distributed
from lwd_core.algo.agents.base import Phase
from lwd_core.algo.learner import BATCH_KEYS, Learner, TrainState
from lwd_core.algo.replay import MixedReplay

# Runs this long fuse each logging window into one call (lax.scan); shorter ones do not pay for a
# second compilation of the update.
FUSE_FROM_STEPS = 500
# Updates per logging window, and so per fused call in a long run.
LOG_EVERY = 50
MetricsLogger = Callable[[int, dict[str, float]], None]


@dataclass
class UpdateResult:
    state: TrainState
    history: list[dict[str, float]]  # the window means, in order


def run_updates(
    learner: Learner,
    state: TrainState,
    replay: MixedReplay,
    steps: int,
    batch_size: int,
    log_every: int = LOG_EVERY,
    on_log: MetricsLogger | None = None,
    mesh: Any = None,
    phase: Phase = "train",
) -> UpdateResult:
    """``steps`` updates; every ``log_every`` the window-mean metrics go to ``on_log(step, metrics)``.

    With a ``mesh`` (see :mod:`lwd_core.algo.distributed`) the batch is split over its devices and
    this process samples only its share of the global ``batch_size``.
    """
    history: list[dict[str, float]] = []
    window: list[dict[str, Any]] = []
    if mesh is not None:
        state = distributed.replicate(state, mesh)
        batch_size = distributed.local_batch_size(batch_size, mesh)
    done = 0
    while done < steps:
        fused = min(log_every - len(window), steps - done)
        if mesh is None and fused == log_every and steps >= FUSE_FROM_STEPS:
            # A whole logging window in one call (lax.scan), batches sampled up front.
            samples = [replay.sample(batch_size) for _ in range(fused)]
            state, stacked = learner.update_many(state, {key: np.stack([b[key] for b in samples]) for key in BATCH_KEYS},
                                                 phase)
            stacked = jax.device_get(stacked)  # one transfer for the window's metrics
            window.extend({key: value[i] for key, value in stacked.items()} for i in range(fused))
        else:
            fused = 1
            batch = replay.sample(batch_size)
            if mesh is not None:
                batch = distributed.shard_batch({key: batch[key] for key in BATCH_KEYS}, mesh)
            state, metrics = learner.update(state, batch, phase)
            window.append(metrics)
        done += fused
        if len(window) == log_every or done == steps:
            means = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
            history.append(means)
            window.clear()
            if on_log:
                on_log(int(state.step), means)
    return UpdateResult(state, history)

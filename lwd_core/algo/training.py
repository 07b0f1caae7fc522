"""One training run on a snapshot: episodes -> n-step transitions -> mixed replay -> learner updates.

Stage "offline" (no previous checkpoint) uses the long/short offline n; stage "online" (resuming a
checkpoint while the fleet is deployed) uses the online n and mixes online data in by ``online_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lwd_core.algo import distributed
from lwd_core.algo.baselines import hgdagger_subset, recap_conditions
from lwd_core.algo.checkpoint import load_checkpoint, save_checkpoint
from lwd_core.algo.learner import BATCH_KEYS, Learner, LearnerSpec, TrainState
from lwd_core.algo.nstep import NStepSchedule, Stage, build_transitions
from lwd_core.algo.replay import MixedReplay
from lwd_core.algo.text import tokenize
from lwd_core.data.episode import Episode
from lwd_core.data.layout import get_episode
from lwd_core.sim.tasks import ACTION_DIM, OBS_DIM, TASK_INDEX, TASK_SUITE
from lwd_core.store import COMMIT_MANIFEST, ObjectStore


def load_snapshot_episodes(store: ObjectStore, manifest: dict) -> dict[str, list[Episode]]:
    episodes: dict[str, list[Episode]] = {"offline": [], "online": []}
    for entry in manifest["episodes"]:
        episodes[entry["kind"]].append(get_episode(store, entry["key"]))
    return episodes


def transitions_for(episodes: list[Episode], algo: Any, stage: Stage) -> dict[str, np.ndarray] | None:
    if not episodes:
        return None
    schedule = NStepSchedule.from_config(algo)
    return build_transitions(
        episodes, chunk=algo.action_chunk, gamma=algo.discount,
        n_for_task={t.task_id: schedule.n_for(t.horizon, stage) for t in TASK_SUITE},
        task_index=TASK_INDEX, tokens_for_task={t.task_id: tokenize(t.instruction) for t in TASK_SUITE},
    )


def build_replay(episodes: dict[str, list[Episode]], algo: Any, stage: Stage, seed: int,
                 method: str = "lwd") -> MixedReplay:
    offline = transitions_for(episodes["offline"], algo, stage)
    online = transitions_for(episodes["online"], algo, stage)
    if method == "hgdagger":  # BC on demonstrations and human takeovers only
        offline = hgdagger_subset(offline) if offline is not None else None
        # A fleet round without takeovers adds nothing for HG-DAgger.
        human_online = online is not None and (online["intervention"] | online["demo"]).any()
        online = hgdagger_subset(online) if human_online else None
    if offline is None:  # no offline data: the online buffer plays that role
        offline, online = online, None
    if offline is None:
        raise ValueError("the snapshot holds no episodes")
    return MixedReplay(offline, online, online_ratio=algo.online_ratio, seed=seed)


@dataclass
class TrainResult:
    state: TrainState
    history: list[dict[str, float]]
    replay: MixedReplay


def run_updates(
    learner: Learner,
    state: TrainState,
    replay: MixedReplay,
    steps: int,
    batch_size: int,
    log_every: int = 50,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    mesh: Any = None,
    phase: str = "train",
) -> TrainResult:
    """``steps`` updates; every ``log_every`` the window-mean metrics go to ``on_log(step, metrics)``.

    With a ``mesh`` (see :mod:`lwd_core.algo.distributed`) the batch is split over its devices and
    this process samples only its share of the global ``batch_size``.
    """
    history: list[dict[str, float]] = []
    window: list[dict[str, Any]] = []
    if mesh is not None:
        state = distributed.replicate(state, mesh)
        batch_size = distributed.local_batch_size(batch_size, mesh)
    for _ in range(steps):
        batch = replay.sample(batch_size)
        if mesh is not None:
            batch = distributed.shard_batch({key: batch[key] for key in BATCH_KEYS}, mesh)
        state, metrics = learner.update(state, batch, phase)
        window.append(metrics)
        if len(window) == log_every:
            means = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
            history.append(means)
            window.clear()
            if on_log:
                on_log(int(state.step), means)
    if window:
        means = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
        history.append(means)
        if on_log:
            on_log(int(state.step), means)
    return TrainResult(state, history, replay)


def new_learner(algo: Any, method: str = "lwd") -> Learner:
    return Learner(LearnerSpec.from_config(algo, OBS_DIM, ACTION_DIM, method))


def online_update_budget(algo: Any, online_transitions: int) -> int:
    """Updates for one online round: at least ``online_steps_per_round``, and enough that each online
    transition (the newest included) is sampled ``samples_per_insert`` times in expectation. Online rows
    are drawn from the whole online buffer, so the budget grows with it, not with the round's new data."""
    online_rows = max(1, round(algo.batch_size * algo.online_ratio))
    return max(algo.online_steps_per_round, math.ceil(algo.samples_per_insert * online_transitions / online_rows))


def staging_steps(algo: Any, method: str) -> int:
    """Updates :func:`pretrain_and_warm_up` makes (only methods with a critic or value warm up)."""
    return algo.pretrain_steps + (algo.warmup_steps if method in ("lwd", "recap") else 0)


def pretrain_and_warm_up(learner: Learner, episodes: dict[str, list[Episode]], algo: Any, seed: int,
                         method: str = "lwd") -> TrainState:
    """The paper's first two stages from scratch: the pretrained policy (BC flow matching on the
    demonstrations) becomes base and policy; then critic and value warm up with the policy frozen."""
    state = learner.init(algo.seed)
    if algo.pretrain_steps:
        demos = [e for e in episodes["offline"] + episodes["online"] if e.source == "demo"]
        if not demos:
            raise ValueError("pretraining needs demonstrations and the snapshot holds none (or set pretrain_steps: 0)")
        demo_replay = MixedReplay(transitions_for(demos, algo, "offline"), seed=seed)
        state = run_updates(learner, state, demo_replay, algo.pretrain_steps, algo.batch_size, phase="pretrain").state
        state = learner.start_from_pretrained(state, state.params["base"])
    if staging_steps(algo, method) > algo.pretrain_steps:
        replay = build_replay(episodes, algo, "offline", seed=seed + 1, method=method)
        state = run_updates(learner, state, replay, algo.warmup_steps, algo.batch_size, phase="warmup").state
    return state


def per_task_value(learner: Learner, state: TrainState, replay: MixedReplay, rows: int = 256) -> dict[str, float]:
    """Mean value estimate per task on buffer states: a cheap per-task learning curve."""
    data = replay.offline
    out = {}
    for task in TASK_SUITE:
        index = np.flatnonzero(data["task"] == TASK_INDEX[task.task_id])[:rows]
        if len(index):
            stats = learner.value_statistics(state, data["obs"][index], data["tokens"][index])
            out[task.task_id] = float(np.mean(stats.get("mean", stats.get("value"))))
    return out



def refresh_recap_conditions(learner: Learner, state: TrainState, replay: MixedReplay, positive_fraction: float,
                             rows_per_call: int = 4096) -> None:
    """RECAP-style: advantage tokens from the current value model, recomputed between training chunks."""
    def value_mean(obs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(obs), rows_per_call):
            stats = learner.value_statistics(state, obs[start : start + rows_per_call],
                                             tokens[start : start + rows_per_call])
            parts.append(stats.get("mean", stats.get("value")))
        return np.concatenate(parts)

    for buffer in (replay.offline, replay.online):
        if buffer is not None:
            buffer["condition"] = recap_conditions(buffer, value_mean(buffer["obs"], buffer["tokens"]),
                                                   value_mean(buffer["next_obs"], buffer["tokens"]), positive_fraction)


def latest_committed_checkpoint(store: ObjectStore, run_root: str) -> str | None:
    """The committed checkpoint with the highest step under ``run_root`` (partial ones are ignored)."""
    best, best_step = None, -1
    for key in store.list(run_root, suffix=COMMIT_MANIFEST):
        prefix = key.rsplit("/", 1)[0]
        step = int(store.get_json(key).get("step", -1))
        if step > best_step:
            best, best_step = prefix, step
    return best


@dataclass
class ResumableRun:
    learner: Learner
    state: TrainState
    checkpoint: str
    history: list[dict[str, float]]
    resumed_from: str | None


def train_resumable(
    store: ObjectStore,
    run_root: str,
    start: Callable[[], tuple[Learner, TrainState]],
    replay: MixedReplay,
    total_steps: int,
    batch_size: int,
    checkpoint_every: int,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    mesh: Any = None,
    extra: dict[str, Any] | None = None,
    before_chunk: Callable[[Learner, TrainState], None] | None = None,
) -> ResumableRun:
    """Train until the learner's step reaches ``total_steps``, committing a checkpoint every
    ``checkpoint_every`` updates under ``run_root``. A rerun after a crash (same ``run_root``) resumes
    from the last committed checkpoint, replay sampler included, instead of starting over."""
    latest = latest_committed_checkpoint(store, run_root)
    if latest:
        learner, state, manifest = load_checkpoint(store, latest)
        replay.load_state_dict(manifest["replay"])
    else:
        learner, state = start()
    resumed_from, checkpoint, history = latest, latest, []
    while checkpoint is None or int(state.step) < total_steps:
        count = max(0, min(checkpoint_every, total_steps - int(state.step)))
        if before_chunk is not None:
            before_chunk(learner, state)
        result = run_updates(learner, state, replay, count, batch_size, on_log=on_log, mesh=mesh)
        state, history = result.state, history + result.history
        checkpoint = f"{run_root}/step-{int(state.step):09d}"
        save_checkpoint(store, checkpoint, learner, state,
                        extra={"replay": replay.state_dict(), "resumed_from": resumed_from, **(extra or {})})
    return ResumableRun(learner, state, checkpoint, history, resumed_from)

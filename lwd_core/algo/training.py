"""One training run on a snapshot: episodes -> n-step transitions -> mixed replay -> learner updates.

Stage "offline" (no previous checkpoint) uses the long/short offline n; stage "online" (resuming a
checkpoint while the fleet is deployed) uses the online n and mixes online data in by ``online_ratio``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from lwd_core.algo import distributed
from lwd_core.algo.agents import get_agent
from lwd_core.algo.checkpoint import load_checkpoint, save_checkpoint
from lwd_core.algo.learner import BATCH_KEYS, Learner, LearnerSpec, TrainState
from lwd_core.algo.replay import MixedReplay
from lwd_core.algo.text import tokenize
from lwd_core.data.episode import Episode
from lwd_core.data.layout import (
    CHECKPOINT_LATEST_KEY,
    checkpoint_key,
    get_episode,
    replay_segment_key,
    replay_segments_prefix,
    training_run_prefix,
)
from lwd_core.data.nstep import NStepSchedule, Stage, build_transitions
from lwd_core.memory import trim_heap
from lwd_core.store import COMMIT_MANIFEST, ObjectStore, StoreError, now_us
from lwd_core.suite import ACTION_DIM, OBS_DIM, TASK_INDEX, TASK_SUITE

log = logging.getLogger(__name__)


def load_snapshot_episodes(store: ObjectStore, manifest: dict) -> dict[str, list[Episode]]:
    episodes: dict[str, list[Episode]] = {"offline": [], "online": []}
    for entry in manifest["episodes"]:
        episodes[entry["kind"]].append(get_episode(store, entry["key"]))
    return episodes


def within_capacity(entries: list[dict], capacity: int) -> list[dict]:
    """All entries if their steps fit ``capacity`` (0: no cap), else the whole episodes whose ids hash
    lowest (a uniform choice that is the same in every round: an episode once chosen stays chosen
    unless newer ones outrank it), in manifest order."""
    steps = [max(1, int(entry.get("steps") or 1)) for entry in entries]
    if not capacity or sum(steps) <= capacity:
        return entries
    rank = sorted(range(len(entries)), key=lambda i: hashlib.blake2b(entries[i]["episode_id"].encode(),
                                                                      digest_size=8).digest())
    chosen, total = [], 0
    for index in rank:
        if total + steps[index] <= capacity:
            chosen.append(index)
            total += steps[index]
    return [entries[index] for index in sorted(chosen)]


@dataclass
class LoadedBuffer:
    """One buffer's transitions as last loaded in this process, with each episode's rows."""

    settings: tuple
    rows: dict[str, tuple[int, int]]  # episode key -> (start, stop)
    data: dict[str, np.ndarray]


# The last load per buffer kind: the next round reads only the episodes it does not hold.
_LOADED: dict[str, LoadedBuffer] = {}
Piece = dict[str, np.ndarray]
# Segments a buffer may have before a load writes them as one (the current choice of episodes).
COMPACT_AFTER_SEGMENTS = 8


def _transition_settings(algo: Any, stage: Stage) -> tuple:
    return (stage, algo.action_chunk, algo.discount, NStepSchedule.from_config(algo))


def load_snapshot_transitions(store: ObjectStore, manifest: dict, algo: Any, stage: Stage, write_segments: bool = True
                              ) -> dict[str, dict[str, np.ndarray] | None]:
    """The snapshot's transitions per buffer, within ``algo.replay_capacity`` transitions each: host
    memory is bounded by the cap, not by how large the buffers have grown.

    A round reads what is new since its parent: episodes this process loaded for the previous round
    come from memory; episodes an earlier process built come from the store's replay segments (the
    transitions of the episodes each load built, under the same n-step settings; keys are content
    hashes); only the rest are read and built, and they become a new segment (``write_segments``)."""
    settings = _transition_settings(algo, stage)
    digest = hashlib.blake2b(repr(settings).encode(), digest_size=8).hexdigest()
    out: dict[str, dict[str, np.ndarray] | None] = {}
    for kind in ("offline", "online"):
        entries = within_capacity([e for e in manifest["episodes"] if e["kind"] == kind], algo.replay_capacity)
        if not entries:
            out[kind] = None
            _LOADED.pop(kind, None)
            continue
        previous = _LOADED.get(kind)
        held = previous.rows if previous is not None and previous.settings == settings else {}
        pieces: dict[str, Piece] = {key: {name: values[begin:end] for name, values in previous.data.items()}
                                    for key, (begin, end) in held.items()}
        wanted = {entry["key"] for entry in entries} - set(pieces)
        segments: list[str] = []
        if wanted:
            segments = sorted(store.list(replay_segments_prefix(kind, digest), ".npz"))
            pieces.update(_segment_pieces(store, segments, wanted))
        built = {entry["key"]: transitions_for([get_episode(store, entry["key"])], algo, stage)
                 for entry in entries if entry["key"] not in pieces}
        pieces.update(built)
        rows, offset = {}, 0
        for entry in entries:
            size = len(pieces[entry["key"]]["obs"])
            rows[entry["key"]] = (offset, offset + size)
            offset += size
        out[kind] = {name: np.concatenate([pieces[entry["key"]][name] for entry in entries])
                     for name in pieces[entries[0]["key"]]}
        _LOADED[kind] = LoadedBuffer(settings, rows, out[kind])
        if write_segments and built:
            key = replay_segment_key(kind, digest, now_us())
            if len(segments) + 1 > COMPACT_AFTER_SEGMENTS:  # one segment of what this load chose instead
                _write_segment(store, key, out[kind], {k: end - begin for k, (begin, end) in rows.items()})
                for old in segments:
                    store.delete(old)
            else:
                arrays = {name: np.concatenate([piece[name] for piece in built.values()]) for name in out[kind]}
                _write_segment(store, key, arrays, {k: len(piece["obs"]) for k, piece in built.items()})
    return out


def _write_segment(store: ObjectStore, key: str, arrays: dict[str, np.ndarray], rows: dict[str, int]) -> None:
    """An ``.npz`` of plain arrays (read back without pickle): transitions of consecutive episodes, with
    each episode's key and row count (``rows``, in order)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, segment_episode_keys=np.asarray(list(rows)),
             segment_episode_rows=np.asarray(list(rows.values()), np.int64))
    store.put_atomic(key, buffer.getvalue())


def _segment_pieces(store: ObjectStore, segments: list[str], wanted: set[str]) -> dict[str, Piece]:
    """The wanted episodes' transitions found in these segments (newest first). A segment that is gone
    (compacted meanwhile) or unreadable is skipped: its episodes are built from the buffer instead."""
    found: dict[str, Piece] = {}
    for segment in reversed(segments):
        if not wanted - set(found):
            break
        try:
            with np.load(io.BytesIO(store.get(segment)), allow_pickle=False) as data:
                keys = [str(key) for key in data["segment_episode_keys"]]
                if not set(keys) & (wanted - set(found)):
                    continue
                ends = np.cumsum(data["segment_episode_rows"])
                arrays = {name: data[name] for name in data.files if not name.startswith("segment_")}
        except (StoreError, OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            log.warning("replay segment %s skipped (%s): its episodes are read from the buffer", segment, error)
            continue
        for index, key in enumerate(keys):
            if key in wanted and key not in found:
                begin = int(ends[index - 1]) if index else 0
                found[key] = {name: values[begin:int(ends[index])] for name, values in arrays.items()}
    return found


def demo_rows(transitions: dict[str, dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
    """The demonstration rows of both buffers: what pretraining learns from."""
    parts = [{key: value[data["demo"]] for key, value in data.items()} for data in transitions.values()
             if data is not None and data["demo"].any()]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else None


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
    return replay_from(transitions_for(episodes["offline"], algo, stage), transitions_for(episodes["online"], algo, stage),
                       algo, seed, method)


def replay_from(offline: dict[str, np.ndarray] | None, online: dict[str, np.ndarray] | None, algo: Any, seed: int,
                method: str = "lwd") -> MixedReplay:
    offline, online = get_agent(method).select_data(offline, online)
    if offline is None:  # no offline data: the online buffer plays that role
        offline, online = online, None
    if offline is None:
        raise ValueError("the snapshot holds no episodes")
    return MixedReplay(offline, online, online_ratio=algo.online_ratio, seed=seed)


@dataclass
class TrainResult:
    """Where a stretch of training ended: the state, the logged metric windows, and (for
    :func:`train_resumable`) the committed checkpoint and the one it resumed from."""

    learner: Learner
    state: TrainState
    history: list[dict[str, float]]
    checkpoint: str | None = None
    resumed_from: str | None = None
    seconds: float = 0.0  # wall time, where the caller measured it


# Runs this long fuse each logging window into one call (lax.scan); shorter ones do not pay for a
# second compilation of the update.
FUSE_FROM_STEPS = 500


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
    return TrainResult(learner, state, history)


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
    return algo.pretrain_steps + (algo.warmup_steps if get_agent(method).warms_up else 0)


def pretrain_and_warm_up(learner: Learner, demos: dict[str, np.ndarray] | None, replay: MixedReplay, algo: Any,
                         seed: int, method: str = "lwd") -> TrainState:
    """The paper's first two stages from scratch: the pretrained policy (BC flow matching on the
    demonstrations' transitions ``demos``) becomes base and policy; then critic and value warm up with
    the policy frozen, on ``replay``'s data (sampled with a seed of its own)."""
    state = learner.init(algo.seed)
    if algo.pretrain_steps:
        if demos is None:
            raise ValueError("pretraining needs demonstrations and the snapshot holds none (or set pretrain_steps: 0)")
        demo_replay = MixedReplay(demos, seed=seed)
        state = run_updates(learner, state, demo_replay, algo.pretrain_steps, algo.batch_size, phase="pretrain").state
        state = learner.start_from_pretrained(state, state.params["base"])
    if staging_steps(algo, method) > algo.pretrain_steps:
        warmup = MixedReplay(replay.offline, replay.online, online_ratio=replay.online_ratio,
                             balance_tasks=replay.balance_tasks, seed=seed + 1)
        state = run_updates(learner, state, warmup, algo.warmup_steps, algo.batch_size, phase="warmup").state
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



def latest_committed_checkpoint(store: ObjectStore, run_root: str) -> str | None:
    """The committed checkpoint with the highest step under ``run_root`` (partial ones are ignored)."""
    best, best_step = None, -1
    for key in store.list(run_root, suffix=COMMIT_MANIFEST):
        prefix = key.rsplit("/", 1)[0]
        step = int(store.get_json(key).get("step", -1))
        if step > best_step:
            best, best_step = prefix, step
    return best


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
    on_checkpoint: Callable[[str, int], None] | None = None,
) -> TrainResult:
    """Train until the learner's step reaches ``total_steps``, committing a checkpoint every
    ``checkpoint_every`` updates under ``run_root`` (``on_checkpoint(key, step)`` after each commit). A
    rerun after a crash (same ``run_root``) resumes from the last committed checkpoint, replay sampler
    included, instead of starting over."""
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
        checkpoint = checkpoint_key(run_root, int(state.step))
        save_checkpoint(store, checkpoint, learner, state,
                        extra={"replay": replay.state_dict(), "resumed_from": resumed_from, **(extra or {})})
        if on_checkpoint is not None:
            on_checkpoint(checkpoint, int(state.step))
        trim_heap()  # what compiling the update held while it compiled
    return TrainResult(learner, state, history, checkpoint, resumed_from)


@dataclass
class SnapshotTraining:
    """One training run on a snapshot, decided before any update (what a tracker logs as parameters)."""

    snapshot_id: str
    stage: Stage
    method: str
    parent: str | None  # the checkpoint it continues (online), None offline
    pointer_generation: str | None  # the latest-checkpoint pointer as this run found it (compare and swap)
    start_step: int
    steps: int  # updates in this run (offline: pretraining and warm-up included)
    run_root: str
    replay: MixedReplay
    learner: Learner
    state: TrainState | None  # None offline: staged from scratch by ``initial_state``
    algo: Any
    demos: dict[str, np.ndarray] | None = None  # offline: the demonstration rows pretraining learns from

    @property
    def target_step(self) -> int:
        return self.start_step + self.steps

    def initial_state(self) -> tuple[Learner, TrainState]:
        """Offline: the pretrained policy and critic warm-up come first (skipped when a crashed run resumes).
        Every host stages with the same seed, so all start from identical parameters."""
        if self.state is not None:
            return self.learner, self.state
        return self.learner, pretrain_and_warm_up(self.learner, self.demos, self.replay, self.algo, self.algo.seed,
                                                  self.method)

    def before_chunk(self, learner: Learner, state: TrainState) -> None:
        learner.agent.before_chunk(learner, state, self.replay, self.algo)


def plan_snapshot_training(store: ObjectStore, manifest: dict, algo: Any, method: str = "lwd", resume: bool = True,
                           steps: int = 0, name: str = "", process_index: int = 0) -> SnapshotTraining:
    """Offline (no checkpoint to resume): pretrain -> warm-up -> ``steps`` extraction updates (0: the
    config's ``offline_steps``). Online (``resume`` and a latest checkpoint): ``steps`` updates from it
    (0: :func:`online_update_budget`). ``name`` names the run's checkpoints (default: the method)."""
    pointer, pointer_generation = store.get_json_versioned(CHECKPOINT_LATEST_KEY)
    parent = pointer["checkpoint"] if resume and pointer else None
    seed = algo.seed + 1_000_003 * process_index
    demos = None
    if parent:
        learner, state, _ = load_checkpoint(store, parent)
        start_step = int(state.step)
        seed += start_step  # fresh batches each round (the step moves on), distinct ones on each host
        data = load_snapshot_transitions(store, manifest, algo, "online", write_segments=process_index == 0)
        replay = replay_from(data["offline"], data["online"], algo, seed, method)
        steps = steps or online_update_budget(algo, replay.sizes["online"])
    else:
        learner, state, start_step = new_learner(algo, method), None, 0
        data = load_snapshot_transitions(store, manifest, algo, "offline", write_segments=process_index == 0)
        demos = demo_rows(data) if algo.pretrain_steps else None
        replay = replay_from(data["offline"], data["online"], algo, seed, method)
        steps = staging_steps(algo, method) + (steps or algo.offline_steps)
    snapshot_id = manifest["snapshot_id"]
    return SnapshotTraining(snapshot_id=snapshot_id, stage="online" if parent else "offline", method=method,
                            parent=parent, pointer_generation=pointer_generation, start_step=start_step, steps=steps,
                            run_root=training_run_prefix(snapshot_id, name or method, start_step), replay=replay,
                            learner=learner, state=state, algo=algo, demos=demos)


def run_snapshot_training(store: ObjectStore, plan: SnapshotTraining, on_log: Callable[[int, dict[str, float]], None]
                          | None = None, mesh: Any = None, move_latest: bool = True,
                          on_checkpoint: Callable[[str, int], None] | None = None) -> TrainResult:
    """Train to the plan's target step with committed checkpoints (a rerun resumes); on success the
    flywheel's latest-checkpoint pointer moves to the result unless ``move_latest`` is off, and only if
    no other run moved it since this one was planned (else StoreError: the checkpoint stays committed,
    but the flywheel does not silently continue from one of two racing runs)."""
    result = train_resumable(store, plan.run_root, plan.initial_state, plan.replay, plan.target_step,
                             plan.algo.batch_size, plan.algo.checkpoint_every, mesh=mesh, on_log=on_log,
                             extra={"snapshot_id": plan.snapshot_id, "parent": plan.parent, "stage": plan.stage},
                             before_chunk=plan.before_chunk, on_checkpoint=on_checkpoint)
    if move_latest and not store.put_json_if(CHECKPOINT_LATEST_KEY, {"checkpoint": result.checkpoint},
                                             plan.pointer_generation):
        raise StoreError(f"another training run moved {CHECKPOINT_LATEST_KEY} while this one trained "
                         f"{result.checkpoint}; the pointer was left as that run set it")
    return result


def follow_snapshot_training(plan: SnapshotTraining, mesh: Any = None) -> TrainState:
    """A non-zero host of a multi-host run: the same updates on its share of each batch, no checkpoints
    (process 0 commits them)."""
    learner, state = plan.initial_state()
    return run_updates(learner, state, plan.replay, max(0, plan.target_step - int(state.step)), plan.algo.batch_size,
                       mesh=mesh).state

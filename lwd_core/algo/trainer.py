"""The one staged trainer: every training run, whether the flywheel's ``train`` flow or ``lwd experiment``
asks for it, is planned and run here.

A plan is made from a snapshot and the store's pointers, before any data is loaded:

- offline (no checkpoint to continue): the pretrained policy first, either the store's pretrained
  checkpoint (``checkpoints/_pretrained.json``) or a ``pretrain`` stage (flow matching of the base flow
  on the demonstrations, the same for every method, which then records itself as that checkpoint);
  then the agent's offline stages (:meth:`Agent.stages`: warm-up, training).
- online (continuing the latest checkpoint): the agent's online stages, by default as many updates as
  :func:`online_update_budget` asks for.

Running a plan goes stage by stage over the snapshot's transitions (the agent picks its rows), each stage
on a replay seeded by where it starts, so the same stages give the same parameters whether they ran in
one run or, split at the pretrained policy, in two. Checkpoints are committed every
``checkpoint_every`` updates and at each stage's end; a rerun resumes from the last one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lwd_core.algo.agents import Agent, Stage
from lwd_core.algo.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint
from lwd_core.algo.learner import Learner, LearnerSpec, TrainState
from lwd_core.algo.replay import MixedReplay
from lwd_core.algo.transition_cache import Buffers, chosen_episodes
from lwd_core.algo.update_loop import MetricsLogger, run_updates
from lwd_core.config import AlgoConfig
from lwd_core.data.layout import (
    CHECKPOINT_LATEST_KEY,
    PRETRAINED_KEY,
    checkpoint_key,
    training_run_prefix,
)
from lwd_core.data.nstep import RunKind
from lwd_core.data.snapshot import Snapshot
from lwd_core.memory import trim_heap
from lwd_core.store import COMMIT_MANIFEST, ObjectStore, StoreError, commit_manifest_key
from lwd_core.suite import ACTION_DIM, KNOWN_TASKS, OBS_DIM, TASK_INDEX

log = logging.getLogger(__name__)
# The method of a run that only pretrains (its checkpoint holds the pretrained flow as base and policy).
PRETRAIN_METHOD = "bc"
# Seeds of different learner processes of one run lie this far apart.
PROCESS_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class TrainingPlan:
    """One training run, decided before any data is loaded (what a tracker logs as parameters)."""

    snapshot_id: str
    kind: RunKind
    method: str
    # Online: the checkpoint this run continues. Offline: the pretrained checkpoint it starts from
    # (None: it pretrains first).
    parent: str | None
    pointer_generation: str | None  # the latest-checkpoint pointer as this run found it (compare and swap)
    start_step: int
    stages: tuple[Stage, ...]
    run_root: str
    transitions: dict[str, int]  # rows the run holds per buffer (before the agent picks its own)
    seed: int  # this process's replay seed base

    @property
    def steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    @property
    def target_step(self) -> int:
        return self.start_step + self.steps

    def stage_spans(self) -> list[tuple[int, int, Stage]]:
        """(first step, end step, stage) of each stage that has updates."""
        spans, step = [], self.start_step
        for stage in self.stages:
            if stage.steps > 0:
                spans.append((step, step + stage.steps, stage))
                step += stage.steps
        return spans


@dataclass
class TrainResult:
    """Where a run ended: the state, the logged metric windows, the committed checkpoint and the one it
    resumed from, the transitions it trained on (for :func:`value_by_task`), and the wall time."""

    learner: Learner
    state: TrainState
    history: list[dict[str, float]]
    checkpoint: str | None = None
    resumed_from: str | None = None
    buffers: Buffers | None = None
    seconds: float = 0.0


def new_learner(algo: AlgoConfig, method: str) -> Learner:
    """A learner of ``method`` for the suite's observations and actions (networks built, none initialised)."""
    return Learner(LearnerSpec.from_config(algo, OBS_DIM, ACTION_DIM, method))


def online_update_budget(algo: AlgoConfig, online_transitions: int) -> int:
    """Updates for one online round: at least ``online_steps_per_round``, and enough that each online
    transition (the newest included) is sampled ``samples_per_insert`` times in expectation. Online rows
    are drawn from the whole online buffer, so the budget grows with it, not with the round's new data."""
    online_rows = max(1, round(algo.batch_size * algo.online_ratio))
    return max(algo.online_steps_per_round, math.ceil(algo.samples_per_insert * online_transitions / online_rows))


def _held_transitions(snapshot: Snapshot, algo: AlgoConfig) -> dict[str, int]:
    return {kind: sum(e.steps for e in chosen_episodes(snapshot, kind, algo.replay_capacity))
            for kind in ("offline", "online")}


def plan_pretraining(store: ObjectStore, snapshot: Snapshot, algo: AlgoConfig, process_index: int = 0) -> TrainingPlan:
    """A run that only pretrains: the pretrained policy that offline runs of this store start from."""
    return TrainingPlan(
        snapshot_id=snapshot.snapshot_id, kind="offline", method=PRETRAIN_METHOD, parent=None,
        pointer_generation=store.get_json_versioned(CHECKPOINT_LATEST_KEY)[1], start_step=0,
        stages=(Stage("pretrain", algo.pretrain_steps),),
        run_root=training_run_prefix(snapshot.snapshot_id, "pretrain", 0),
        transitions=_held_transitions(snapshot, algo), seed=algo.seed + PROCESS_SEED_STRIDE * process_index)


def plan_training(store: ObjectStore, snapshot: Snapshot, algo: AlgoConfig, method: str = "lwd", resume: bool = True,
                  steps: int = 0, name: str = "", process_index: int = 0) -> TrainingPlan:
    """Online when ``resume`` and there is a latest checkpoint: ``steps`` updates from it (0:
    :func:`online_update_budget`). Offline otherwise: the pretrained policy (pretraining first where the
    store has none), then the agent's offline stages with ``steps`` training updates (0: the config's
    ``offline_steps``). ``name`` names the run's checkpoints (default: the method)."""
    agent = new_learner(algo, method).agent  # its config checked before anything else
    pointer, generation = store.get_json_versioned(CHECKPOINT_LATEST_KEY)
    transitions = _held_transitions(snapshot, algo)
    if resume and pointer:
        parent = pointer["checkpoint"]
        start_step = int(store.get_json(commit_manifest_key(parent))["step"])
        stages = agent.stages(algo, "online", steps or online_update_budget(algo, transitions["online"]))
        kind: RunKind = "online"
    else:
        kind, stages = "offline", agent.stages(algo, "offline", steps or algo.offline_steps)
        pretrained = store.get_json(PRETRAINED_KEY) if store.exists(PRETRAINED_KEY) else None
        if pretrained:
            parent = pretrained["checkpoint"]
            start_step = int(store.get_json(commit_manifest_key(parent))["step"])
        else:
            parent, start_step = None, 0
            stages = [*plan_pretraining(store, snapshot, algo).stages, *stages]
    return TrainingPlan(snapshot_id=snapshot.snapshot_id, kind=kind, method=method, parent=parent,
                        pointer_generation=generation, start_step=start_step, stages=tuple(stages),
                        run_root=training_run_prefix(snapshot.snapshot_id, name or method, start_step),
                        transitions=transitions, seed=algo.seed + PROCESS_SEED_STRIDE * process_index)


def use_pretrained(store: ObjectStore, source: ObjectStore, checkpoint: str) -> None:
    """Offline runs of ``store`` start from ``source``'s committed checkpoint ``checkpoint`` (its base
    flow), copied in, instead of pretraining their own."""
    copy_checkpoint(source, store, checkpoint)
    store.put_json(PRETRAINED_KEY, {"checkpoint": checkpoint})


def initial_state(store: ObjectStore, plan: TrainingPlan, algo: AlgoConfig) -> tuple[Learner, TrainState]:
    """Online: the parent checkpoint. Offline: a new learner, started from the pretrained checkpoint's base
    flow where the plan names one."""
    if plan.kind == "online":
        learner, state, _ = load_checkpoint(store, plan.parent)
        return learner, state
    learner = new_learner(algo, plan.method)
    if plan.parent:
        return learner, _start_from_pretrained(learner, algo, load_checkpoint(store, plan.parent)[1])
    return learner, learner.init(algo.seed)


def _start_from_pretrained(learner: Learner, algo: AlgoConfig, pretrained: TrainState) -> TrainState:
    """What follows a pretrain stage, whether it ran in this run or an earlier one: a new learner state
    whose base and policy are the pretrained flow, at the pretrained step."""
    fresh = learner.init(algo.seed)
    return learner.start_from_pretrained(fresh, pretrained.params["base"]).replace(step=pretrained.step)


def stage_replay(buffers: Buffers, stage: Stage, agent: Agent, algo: AlgoConfig, seed: int) -> MixedReplay:
    """The rows a stage trains on: the demonstrations to pretrain, else the agent's choice; the replay is
    seeded by the stage's first step so that a stage draws the same batches wherever it runs."""
    if stage.phase == "pretrain":
        demos = buffers.demonstrations
        if demos is None:
            raise ValueError("pretraining needs demonstrations and the snapshot holds none (or set pretrain_steps: 0)")
        return MixedReplay(dict(demos), seed=seed)
    offline, online = agent.select_data(buffers.offline, buffers.online)
    if offline is None:  # no offline data: the online buffer plays that role
        offline, online = online, None
    if offline is None:
        raise ValueError(f"the snapshot holds no transitions {agent.name} learns from")
    # Shallow copies: an agent's refresh relabels columns of its replay, not of the cached buffers.
    return MixedReplay(dict(offline), dict(online) if online is not None else None, online_ratio=algo.online_ratio,
                       seed=seed)


# (learner, state, what the checkpoint records besides, whether it is the pretrained policy) -> its key
Commit = Callable[[Learner, TrainState, dict[str, Any], bool], str]


def run_stages(learner: Learner, state: TrainState, plan: TrainingPlan, buffers: Buffers, algo: AlgoConfig, *,
               commit: Commit | None = None, resumed: dict[str, Any] | None = None, on_log: MetricsLogger | None = None,
               mesh: Any = None) -> tuple[TrainState, list[dict[str, float]], str | None]:
    """Run the plan's stages from ``state`` (a resumed run skips what its checkpoint holds, ``resumed``
    being that checkpoint's manifest). ``commit`` (the leading process only) saves a checkpoint every
    ``checkpoint_every`` updates and at each stage's end; a pretrain stage's end makes the pretrained
    policy the learner's start. Returns the final state, the metric windows and the last checkpoint."""
    agent, history, checkpoint = learner.agent, [], None
    for first, end, stage in plan.stage_spans():
        step = int(state.step)
        if step >= end:
            continue
        replay = stage_replay(buffers, stage, agent, algo, plan.seed + first)
        if resumed and resumed.get("replay_stage_start") == first and step > first:
            replay.load_state_dict(resumed["replay"])
        while step < end:
            into_run = step - plan.start_step
            stop = min(end, plan.start_step + (into_run // algo.checkpoint_every + 1) * algo.checkpoint_every)
            if stage.refresh_every:
                into_stage = step - first
                stop = min(stop, first + (into_stage // stage.refresh_every + 1) * stage.refresh_every)
                if into_stage % stage.refresh_every == 0 or resumed:
                    agent.refresh(learner, state, replay)
            result = run_updates(learner, state, replay, stop - step, algo.batch_size, on_log=on_log, mesh=mesh,
                                 phase=stage.phase)
            state, history, step, resumed = result.state, history + result.history, stop, None
            pretrained = step == end and stage.phase == "pretrain"
            if pretrained:
                state = _start_from_pretrained(learner, algo, state)
            if commit is not None and (step == end or (step - plan.start_step) % algo.checkpoint_every == 0):
                checkpoint = commit(learner, state, {"replay": replay.state_dict(), "replay_stage_start": first},
                                    pretrained)
            trim_heap()  # what compiling the update held while it compiled
    return state, history, checkpoint


def latest_committed_checkpoint(store: ObjectStore, run_root: str) -> str | None:
    """The committed checkpoint with the highest step under ``run_root`` (partial ones are ignored)."""
    best, best_step = None, -1
    for key in store.list(run_root, suffix=COMMIT_MANIFEST):
        prefix = key.rsplit("/", 1)[0]
        step = int(store.get_json(key).get("step", -1))
        if step > best_step:
            best, best_step = prefix, step
    return best


def run_training(store: ObjectStore, plan: TrainingPlan, algo: AlgoConfig, buffers: Buffers, *,
                 on_log: MetricsLogger | None = None, on_checkpoint: Callable[[str, int], None] | None = None,
                 mesh: Any = None, move_latest: bool = True) -> TrainResult:
    """Train to the plan's target step with committed checkpoints (``on_checkpoint(key, step)`` after
    each); a rerun (same run root) resumes from the last one, replay sampler included. At the end the
    latest-checkpoint pointer moves to the result unless ``move_latest`` is off, and only if no other
    run moved it since this one was planned (else StoreError: the checkpoint stays committed, but the
    flywheel does not silently continue from one of two racing runs)."""
    resumed_from = latest_committed_checkpoint(store, plan.run_root)
    resumed = None
    if resumed_from:
        learner, state, resumed = load_checkpoint(store, resumed_from)
    else:
        learner, state = initial_state(store, plan, algo)

    def commit(learner: Learner, state: TrainState, extra: dict[str, Any], pretrained: bool) -> str:
        key = checkpoint_key(plan.run_root, int(state.step))
        save_checkpoint(store, key, learner, state, extra={
            **extra, "snapshot_id": plan.snapshot_id, "parent": plan.parent, "stage": plan.kind,
            "resumed_from": resumed_from})
        if pretrained:
            store.put_json(PRETRAINED_KEY, {"checkpoint": key})
        if on_checkpoint is not None:
            on_checkpoint(key, int(state.step))
        return key

    state, history, checkpoint = run_stages(learner, state, plan, buffers, algo, commit=commit, resumed=resumed,
                                            on_log=on_log, mesh=mesh)
    checkpoint = checkpoint or resumed_from or commit(learner, state, {}, False)  # a run with no updates
    if move_latest and not store.put_json_if(CHECKPOINT_LATEST_KEY, {"checkpoint": checkpoint},
                                             plan.pointer_generation):
        raise StoreError(f"another training run moved {CHECKPOINT_LATEST_KEY} while this one trained "
                         f"{checkpoint}; the pointer was left as that run set it")
    return TrainResult(learner, state, history, checkpoint, resumed_from, buffers)


def follow_training(store: ObjectStore, plan: TrainingPlan, algo: AlgoConfig, buffers: Buffers,
                    mesh: Any = None) -> TrainState:
    """A non-zero process of a multi-host run: the same updates on its share of each batch, nothing
    committed (process 0 commits)."""
    learner, state = initial_state(store, plan, algo)
    return run_stages(learner, state, plan, buffers, algo, mesh=mesh)[0]


def value_by_task(learner: Learner, state: TrainState, buffers: Buffers, rows: int = 256) -> dict[str, float]:
    """Mean value estimate per task on buffer states: a cheap per-task learning curve."""
    data = buffers.offline if buffers.offline is not None else buffers.online
    out: dict[str, float] = {}
    if data is None:
        return out
    for task in KNOWN_TASKS:
        index = np.flatnonzero(data["task"] == TASK_INDEX[task.task_id])[:rows]
        if len(index):
            stats = learner.value_statistics(state, data["obs"][index], data["tokens"][index])
            if stats:  # a method without a value model has none
                out[task.task_id] = float(np.mean(stats.get("mean", stats.get("value"))))
    return out

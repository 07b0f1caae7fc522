"""The offline dataset: what the fleet had before deployment, generated in the simulator.

By default it reproduces the paper's mix, measured in robot time (steps x 50 ms):

- ~50% teleoperated demonstrations (clean oracle),
- ~35% failed autonomous rollouts (a degraded scripted controller standing in for the pretrained
  policy; pass a real policy to record its rollouts instead),
- ~15% play data (noisy, smoothed, partial teleoperation),

with the long-horizon tasks holding most of the volume (70% by default). Budgets are per
(task, kind); demonstrations are whole episodes (so they overshoot a little), failures and play are
cut where their budget ends.
Episodes go to ``buffer/offline/task=<task>/<episode_id>.parquet``; a report with the achieved mix is
written to ``buffer/offline/_DATASET.json``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel

from lwd_core.data.episode import Episode
from lwd_core.data.layout import buffer_key, dataset_report_key, put_episode
from lwd_core.memory import trim_heap
from lwd_core.sim.environment import make_env
from lwd_core.sim.rollout import ChunkPolicy, EpisodeRunner
from lwd_core.sim.teleop import Teleoperator, require_scripted_person
from lwd_core.store import ObjectStore
from lwd_core.suite import (
    CONTROL_PERIOD_S,
    OFFLINE_TELEOPERATOR_ID,
    TELEOP_POLICY_VERSION,
    TaskSpec,
)

Kind = Literal["demo", "failed_rollout", "play"]
KINDS: tuple[Kind, ...] = ("demo", "failed_rollout", "play")

# Operator styles per kind: (noise, smoothing, random action probability).
_DEMO_STYLE = (0.0, 0.0, 0.0)
_PLAY_STYLE = (0.25, 0.5, 0.05)
# A mildly noisy controller: it still succeeds about 2 times in 3 on a short task (measured, 12 episodes
# of restock-forward), and only its failures are kept; 40% uniform-random actions looked like no robot.
_DEGRADED_STYLE = (0.6, 0.3, 0.2)
# A "failed rollout" budget keeps failures only; a lucky success is dropped and re-drawn this many times.
_FAILURE_REDRAWS = 4
# Play is "partial": sessions stop somewhere between 40% and 100% of the task's time limit.
_PLAY_MIN_FRACTION = 0.4
_MIN_EPISODE_STEPS = 20


@dataclass(frozen=True)
class OfflineMix:
    demo: float = 0.50
    failed_rollout: float = 0.35
    play: float = 0.15
    long_share: float = 0.70

    def __post_init__(self) -> None:
        shares = (self.demo, self.failed_rollout, self.play)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"demo/failed_rollout/play shares must be >= 0 and sum to 1, got {shares}")
        if not 0.0 <= self.long_share <= 1.0:
            raise ValueError(f"long_share must be in [0, 1], got {self.long_share}")

    def share(self, kind: Kind) -> float:
        return getattr(self, kind)


@dataclass(frozen=True)
class Allocation:
    task_id: str
    kind: Kind
    steps: int


def plan_allocations(tasks: Iterable[TaskSpec], total_steps: int, mix: OfflineMix) -> list[Allocation]:
    """Step budgets per (task, kind). A group missing from ``tasks`` gives its share to the other."""
    tasks = list(tasks)
    require_scripted_person(tasks)
    groups = {g: [t for t in tasks if t.group == g] for g in ("short", "long")}
    group_share = {"long": mix.long_share, "short": 1.0 - mix.long_share}
    if not groups["long"]:
        group_share = {"short": 1.0, "long": 0.0}
    elif not groups["short"]:
        group_share = {"short": 0.0, "long": 1.0}
    plan = []
    for group, members in groups.items():
        for task in members:
            per_task = total_steps * group_share[group] / len(members)
            plan += [Allocation(task.task_id, kind, round(per_task * mix.share(kind))) for kind in KINDS]
    return [a for a in plan if a.steps > 0]


def episode_seed(base_seed: int, task_id: str, kind: str, index: int) -> int:
    digest = hashlib.sha256(f"{base_seed}/{task_id}/{kind}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# Offline episodes are stamped on a simulated timeline, not the wall clock: the same seed records the same
# episode, id included, so the offline stage trains on the same data in the same order on every run.
OFFLINE_EPOCH_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def simulated_clock(seed: int) -> Callable[[], int]:
    """Control steps at the robots' 20 Hz from a start the seed fixes (one 10 s slot per seed class)."""
    ticks, start = itertools.count(), OFFLINE_EPOCH_US + (seed % 1_000_000) * 10_000_000
    return lambda: start + next(ticks) * round(CONTROL_PERIOD_S * 1e6)


def record_episode(env, task: TaskSpec, kind: Kind, seed: int, policy: ChunkPolicy | None = None,
                   max_steps: int | None = None) -> Episode:
    """One offline episode of the given kind, recorded through the simulator (at most ``max_steps``)."""
    rng = np.random.default_rng(seed)
    style = {"demo": _DEMO_STYLE, "play": _PLAY_STYLE, "failed_rollout": _DEGRADED_STYLE}[kind]
    operator = Teleoperator(env, rng, noise=style[0], smoothing=style[1], random_prob=style[2])
    if kind == "failed_rollout":
        runner = EpisodeRunner(env, task, robot_id="pretrain-fleet", source="rollout", seed=seed,
                               policy_version="pretrained" if policy else "pretrain-scripted", max_steps=max_steps,
                               clock=simulated_clock(seed))
        if policy is None:
            operator.reset(runner.raw_observation, runner.info)
        while not runner.done:
            chunk = None
            if runner.needs_chunk:
                chunk = (policy(runner.observation, task) if policy
                         else operator.act(runner.raw_observation, runner.info)[None])
            runner.step(chunk)
        return runner.episode()
    if kind == "play":
        partial = int(task.horizon * rng.uniform(_PLAY_MIN_FRACTION, 1.0))
        max_steps = min(partial, max_steps or partial)
    runner = EpisodeRunner(env, task, robot_id=OFFLINE_TELEOPERATOR_ID, policy_version=TELEOP_POLICY_VERSION,
                           seed=seed, teleop=operator, source="demo" if kind == "demo" else "play",
                           max_steps=max_steps, clock=simulated_clock(seed))
    while not runner.done:
        runner.step()
    return runner.episode()


@dataclass
class DatasetReport:
    total_steps_planned: int
    mix: dict[str, float]
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> kind -> steps
    episodes: dict[str, dict[str, int]] = field(default_factory=dict)
    successes: dict[str, dict[str, int]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    def add(self, task_id: str, kind: str, episode: Episode, key: str) -> None:
        for table, amount in ((self.steps, episode.num_steps), (self.episodes, 1),
                              (self.successes, int(episode.outcome == "success"))):
            row = table.setdefault(task_id, {})
            row[kind] = row.get(kind, 0) + amount
        self.keys.append(key)

    def merge(self, other: DatasetReport) -> None:
        for name in ("steps", "episodes", "successes"):
            for task_id, row in getattr(other, name).items():
                mine = getattr(self, name).setdefault(task_id, {})
                for kind, amount in row.items():
                    mine[kind] = mine.get(kind, 0) + amount
        self.keys += other.keys

    def summary(self, long_tasks: set[str]) -> DatasetSummary:
        total = sum(sum(row.values()) for row in self.steps.values()) or 1
        by_kind = {k: sum(row.get(k, 0) for row in self.steps.values()) / total for k in KINDS}
        long = sum(sum(row.values()) for t, row in self.steps.items() if t in long_tasks) / total
        return DatasetSummary(steps=total, hours=total * CONTROL_PERIOD_S / 3600, share_by_kind=by_kind,
                              long_share=long, episodes=sum(sum(row.values()) for row in self.episodes.values()))


class DatasetSummary(BaseModel):
    """The mix an offline dataset achieved (what ``generate-offline`` returns)."""

    steps: int
    hours: float
    share_by_kind: dict[str, float]  # demo / failure / play, as shares of the steps
    long_share: float  # steps on long-horizon tasks
    episodes: int


def generate_allocation(
    store: ObjectStore,
    task: TaskSpec,
    kind: Kind,
    steps: int,
    seed: int,
    policy: ChunkPolicy | None = None,
    on_episode: Callable[[Episode, str], None] | None = None,
) -> DatasetReport:
    """Fill one (task, kind) budget with whole episodes (at least one) and write them to the buffer."""
    report = DatasetReport(total_steps_planned=steps, mix={})
    env = make_env(task)
    done, index = 0, 0
    redraws = 0
    while done < steps or index == 0:
        # Demonstrations are always whole; failures and play stop where the budget ends.
        cap = None if kind == "demo" else max(steps - done, _MIN_EPISODE_STEPS)
        episode = record_episode(env, task, kind, episode_seed(seed, task.task_id, kind, index + redraws), policy,
                                 max_steps=cap)
        if kind == "failed_rollout" and episode.outcome == "success" and redraws < _FAILURE_REDRAWS * (index + 1):
            redraws += 1
            continue
        key = buffer_key("offline", task.task_id, episode.episode_id)
        put_episode(store, key, episode, extra_metadata={"lwd.offline_kind": kind})
        report.add(task.task_id, kind, episode, key)
        if on_episode:
            on_episode(episode, key)
        done += episode.num_steps
        index += 1
    env.close()
    trim_heap()
    return report


def write_dataset_report(store: ObjectStore, report: DatasetReport, tasks: Iterable[TaskSpec], mix: OfflineMix) -> dict:
    tasks = list(tasks)
    document = {**asdict(report), "mix": asdict(mix),
                "achieved": report.summary({t.task_id for t in tasks if t.group == "long"}).model_dump()}
    store.put_json(dataset_report_key(), document)
    return document

"""Actor: one process driving one or more simulated robots with the current policy.

Robots sharing a process step in lockstep and share one batched policy call per model version (the
batch is padded to the process's robot count so JAX compiles once). Each robot keeps its own task,
simulator, teleoperator (who takes over when the policy stalls or drifts) and version.

Weights change only between episodes, by the rule every robot follows (lwd_core/fleet/releases.py):
a release is taken only if it is signed, for this robot, not older than accepted, and its policy's
bytes hash to the release; otherwise it is reported and the robot keeps its current weights. Finished
episodes go to the edge client's spool.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lwd_core.algo.text import tokenize
from lwd_core.config import HumanConfig
from lwd_core.fleet.coordinator import Coordinator, Release
from lwd_core.fleet.edge import EdgeClient
from lwd_core.fleet.releases import (
    FLOOR_DIR,
    ReleaseFollower,
    ReleaseTrack,
    status_report,
)
from lwd_core.sim.environment import make_env
from lwd_core.sim.rollout import EpisodeRunner
from lwd_core.sim.teleop import RolloutHuman
from lwd_core.store import ObjectStore
from lwd_core.suite import CONTROL_PERIOD_S, TaskSpec

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.05


class PolicyCache:
    """Verified policies by version (a process rarely needs more than the current and the next)."""

    def __init__(self, store: ObjectStore, capacity: int = 2):
        self.store = store
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def get(self, release: Release) -> tuple[Any, Any]:
        from lwd_core.algo.checkpoint import (
            load_policy,  # JAX is only needed once there is a policy
        )

        cache_key = f"{release.version}:{release.policy_sha256}"
        if cache_key not in self._entries:
            self._entries[cache_key] = load_policy(self.store, release.checkpoint, release.policy_sha256,
                                                   release.manifest_sha256 or None)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(cache_key)
        return self._entries[cache_key]


@dataclass(eq=False, kw_only=True)
class Robot(ReleaseTrack):
    task: TaskSpec
    env: Any = None
    runner: EpisodeRunner | None = None
    episodes_started: int = 0


def assign_tasks(robot_ids: list[str], suite: tuple[TaskSpec, ...] | list[TaskSpec]) -> dict[str, TaskSpec]:
    """Robot stations cover the suite round-robin by robot index (robot-00 -> first task, ...)."""
    return {robot_id: suite[index % len(suite)] for index, robot_id in enumerate(sorted(robot_ids))}


def _seed(robot_id: str, episode: int, base: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}/{robot_id}/{episode}".encode()).digest()[:4], "little")


class Actor:
    def __init__(
        self,
        store: ObjectStore,
        edge: EdgeClient,
        robots: dict[str, TaskSpec],
        *,
        human: HumanConfig | None = HumanConfig(),
        max_steps: int | None = None,
        seed: int = 0,
        poll_s: float = 1.0,
        clock: Callable[[], int] | None = None,
        verify_release: Callable[[dict[str, Any]], bool] | None = None,
        sign_report: Callable[[dict[str, Any]], str] | None = None,
        realtime_factor: float = 0.0,
        floor_dir: str | os.PathLike | None = None,
    ):
        """``human``: the person who watches each rollout and takes over (None: nobody).
        ``verify_release``: the release key's verifier (lwd_core.security.release_verifier); each release
        must verify and be no older than the last one accepted before its hashes are trusted (production
        actors always pass it; None skips only that check, never the hash checks). ``sign_report``: the
        robots' signer of their reports (lwd_core.security.report_signer). ``realtime_factor``: pace
        control steps at that multiple of the robots' 20 Hz (1.0: real time); 0: as fast as the
        simulator goes. ``floor_dir``: where each robot's accepted-revision floor survives restarts
        (None: ``release-floor`` in the edge client's spool)."""
        import jax

        self.store = store
        self.coordinator = Coordinator(store, sign_report=sign_report)
        self.edge = edge
        self.robots = [Robot(robot_id, task=task) for robot_id, task in sorted(robots.items())]
        self.floor_dir = Path(floor_dir) if floor_dir is not None else edge.root / FLOOR_DIR
        self.releases = ReleaseFollower(self.floor_dir, store.url, verify_release)
        for robot in self.robots:
            self.releases.restore(robot, self.coordinator.actor(robot.robot_id))
        self.human = human
        self.max_steps = max_steps
        self.seed = seed
        self.poll_s = poll_s
        self.clock = clock
        self.policies = PolicyCache(store)
        self.step_period_s = CONTROL_PERIOD_S / realtime_factor if realtime_factor > 0 else 0.0
        self._next_step = 0.0
        self._rng = jax.random.PRNGKey(seed)
        self._desired: dict[str, Any] | None = None
        self._desired_at = 0.0
        self._last_report = 0.0
        self.episodes_finished = 0

    @property
    def accepted_revision(self) -> int:
        """The highest revision any of this process's robots accepted. Every publish re-signs all current
        releases at the new fleet-wide revision, so a genuine release is never below it."""
        return max((robot.revision_floor or 0 for robot in self.robots), default=0)

    # -- coordinator I/O -----------------------------------------------------------------------
    def _desired_document(self) -> dict[str, Any]:
        if self._desired is None or time.monotonic() - self._desired_at >= self.poll_s:
            self._desired = self.coordinator.desired()
            self._desired_at = time.monotonic()
        return self._desired

    def report(self, robot: Robot, state: str) -> None:
        self.coordinator.report(robot.robot_id, status_report(robot, robot.task.task_id, state))

    def _maybe_swap(self, robot: Robot) -> None:
        """Between episodes: move to the desired release if it passes the rule (releases.py)."""
        desired = self.coordinator.release_for(robot.robot_id, self._desired_document())
        state = self.releases.consider(robot, desired, self.accepted_revision, self.policies.get)
        if state is not None:
            self.report(robot, state)

    def _start_episode(self, robot: Robot) -> bool:
        self._maybe_swap(robot)
        if robot.release is None:
            return False
        if robot.env is None:
            robot.env = make_env(robot.task)
        seed = _seed(robot.robot_id, robot.episodes_started, self.seed)
        human = None if self.human is None else RolloutHuman(robot.env, robot.task, self.human, seed)
        robot.runner = EpisodeRunner(robot.env, robot.task, robot_id=robot.robot_id,
                                     policy_version=robot.release.version, source="rollout", seed=seed,
                                     human=human, max_steps=self.max_steps, clock=self.clock)
        robot.episodes_started += 1
        return True

    def _finish_episode(self, robot: Robot) -> None:
        episode = robot.runner.episode()
        robot.runner = None
        self.edge.spool(episode)
        robot.count(episode)
        self.episodes_finished += 1
        self.report(robot, "running")

    # -- acting --------------------------------------------------------------------------------
    def _act(self, needing: list[Robot]) -> None:
        import jax

        by_version: dict[str, list[Robot]] = {}
        for robot in needing:
            by_version.setdefault(robot.runner.policy_version, []).append(robot)
        size = len(self.robots)  # fixed batch: one compilation per process
        for robots in by_version.values():
            learner, params = self.policies.get(robots[0].release)
            obs = np.zeros((size, learner.spec.obs_dim), np.float32)
            tokens = np.zeros((size, learner.spec.max_tokens), np.int32)
            for row, robot in enumerate(robots):
                obs[row] = robot.runner.observation
                tokens[row] = tokenize(robot.task.instruction)
            self._rng, key = jax.random.split(self._rng)
            chunks = learner.act(params, obs, tokens, key)
            for row, robot in enumerate(robots):
                robot.runner.step(chunks[row])

    def run(self, max_episodes: int | None = None, duration_s: float | None = None,
            stop: threading.Event | None = None) -> int:
        """Act until ``max_episodes`` episodes finished, ``duration_s`` passed or ``stop`` is set.

        Episodes in flight when time runs out or ``stop`` is set are dropped, as a robot that is
        switched off mid-episode would; ``max_episodes`` lets every started episode finish.
        """
        deadline = time.monotonic() + duration_s if duration_s else None
        stop = stop or threading.Event()
        started = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for robot in self.robots:
                if robot.runner is None and (max_episodes is None or started < max_episodes):
                    started += self._start_episode(robot)
            active = [r for r in self.robots if r.runner is not None]
            if not active:
                if max_episodes is not None and started >= max_episodes:
                    break
                self._heartbeat("waiting")
                stop.wait(max(self.poll_s, _IDLE_WAIT_S))  # no release yet (or refused): poll, do not spin
                continue
            if self.step_period_s:
                if (delay := self._next_step - time.monotonic()) > 0:
                    stop.wait(delay)
                # Falling behind does not cause a burst: the schedule restarts from now.
                self._next_step = max(self._next_step, time.monotonic() - self.step_period_s) + self.step_period_s
            needing = [r for r in active if r.runner.needs_chunk]
            if needing:
                self._act(needing)
            for robot in active:
                if robot.runner is not None and not robot.runner.done and robot not in needing:
                    robot.runner.step()
                if robot.runner is not None and robot.runner.done:
                    self._finish_episode(robot)
            self._heartbeat("running")
        return self.episodes_finished

    def _heartbeat(self, state: str) -> None:
        if time.monotonic() - self._last_report < self.poll_s:
            return
        self._last_report = time.monotonic()
        for robot in self.robots:
            self.report(robot, state if robot.release else "waiting")

    def close(self) -> None:
        for robot in self.robots:
            if robot.env is not None:
                robot.env.close()
                robot.env = None

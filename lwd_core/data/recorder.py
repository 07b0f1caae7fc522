"""An episode recorded as it happens, one control step at a time: the one recorder for the simulator's
robots (lwd_core/sim/rollout.py) and a real robot's control loop (lwd_core/robot.py).

Rewards are never recorded from a robot: each step's follows from its success by the suite's rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from lwd_core.data.episode import Episode, Source
from lwd_core.suite import sparse_rewards


class MonotonicClock:
    """UTC microseconds, strictly increasing even if the wall clock steps back."""

    def __init__(self, now: Callable[[], int] | None = None):
        self._now = now or (lambda: time.time_ns() // 1000)
        self._last = 0

    def __call__(self) -> int:
        self._last = max(self._now(), self._last + 1)
        return self._last


_FIELDS = ("obs", "action", "success", "intervention", "terminal", "chunk_pos", "timestamp", "next_obs")


class EpisodeRecorder:
    """Steps in, an :class:`Episode` out. Observations are the policy's (padded) ones."""

    def __init__(self, *, robot_id: str, task_id: str, instruction: str, policy_version: str, source: Source,
                 clock: Callable[[], int] | None = None):
        self.robot_id, self.task_id, self.instruction = robot_id, task_id, instruction
        self.policy_version, self.source = policy_version, source
        self.clock = clock or MonotonicClock()
        self._steps: dict[str, list] = {name: [] for name in _FIELDS}

    @property
    def num_steps(self) -> int:
        return len(self._steps["obs"])

    def record(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, *, success: bool, terminal: bool,
               intervention: bool = False, chunk_pos: int = 0) -> None:
        """One executed step: ``action`` taken in ``obs`` led to ``next_obs``; ``intervention``: a
        person acted (one step at a time, so ``chunk_pos`` 0)."""
        steps = self._steps
        steps["obs"].append(np.asarray(obs, np.float32))
        steps["action"].append(np.asarray(action, np.float32))
        steps["success"].append(bool(success))
        steps["intervention"].append(bool(intervention))
        steps["terminal"].append(bool(terminal))
        steps["chunk_pos"].append(chunk_pos)
        steps["timestamp"].append(self.clock())
        steps["next_obs"].append(np.asarray(next_obs, np.float32))

    def episode(self) -> Episode:
        steps = self._steps
        if not steps["obs"]:
            raise ValueError("an episode needs at least one step")
        return Episode(
            robot_id=self.robot_id,
            task_id=self.task_id,
            instruction=self.instruction,
            policy_version=self.policy_version,
            source=self.source,
            outcome="success" if steps["success"][-1] else "failure",
            observations=np.stack(steps["obs"]),
            actions=np.stack(steps["action"]),
            rewards=sparse_rewards(np.asarray(steps["success"])),
            successes=np.asarray(steps["success"]),
            interventions=np.asarray(steps["intervention"]),
            terminals=np.asarray(steps["terminal"]),
            chunk_pos=np.asarray(steps["chunk_pos"]),
            timestamps_us=np.asarray(steps["timestamp"]),
            next_observations=np.stack(steps["next_obs"]),
        )

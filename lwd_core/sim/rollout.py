"""Run one episode in the simulator and record it as an :class:`~lwd_core.data.episode.Episode`.

Who acts at each step:
- ``source="demo"`` / ``"play"``: the teleoperator throughout (play uses a noisy teleoperator);
- ``source="rollout"``: the policy, one action chunk at a time; with a monitor, the teleoperator takes
  over when the policy stalls or drifts (those steps are flagged ``intervention``), and the policy
  re-plans from a fresh chunk when control returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from lwd_core.data.episode import Episode, Source
from lwd_core.sim.tasks import TaskSpec, pad_observation, sparse_reward
from lwd_core.sim.teleop import InterventionMonitor, Teleoperator, cube_subgoal

# (padded observation, task) -> action chunk (chunk, action_dim) in [-1, 1]
ChunkPolicy = Callable[[np.ndarray, TaskSpec], np.ndarray]


class MonotonicClock:
    """UTC microseconds, strictly increasing even if the wall clock steps back."""

    def __init__(self, now: Callable[[], int] | None = None):
        self._now = now or (lambda: time.time_ns() // 1000)
        self._last = 0

    def __call__(self) -> int:
        self._last = max(self._now(), self._last + 1)
        return self._last


def run_episode(
    env,
    task: TaskSpec,
    *,
    robot_id: str,
    policy_version: str,
    source: Source,
    seed: int,
    teleop: Teleoperator | None = None,
    policy: ChunkPolicy | None = None,
    monitor: InterventionMonitor | None = None,
    max_steps: int | None = None,
    clock: Callable[[], int] | None = None,
) -> Episode:
    if source == "rollout" and policy is None:
        raise ValueError("a rollout needs a policy")
    if source != "rollout" and teleop is None:
        raise ValueError(f"a {source} episode needs a teleoperator")
    if monitor is not None and teleop is None:
        raise ValueError("interventions need a teleoperator")
    clock = clock or MonotonicClock()
    limit = min(max_steps or task.horizon, task.horizon)

    ob, info = env.reset(seed=seed)
    if teleop is not None:
        teleop.reset(ob, info)
    if monitor is not None:
        monitor.reset()
    record: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "success", "intervention", "terminal",
                                               "chunk_pos", "timestamp", "next_obs")}
    pending: list[np.ndarray] = []
    chunk_pos = 0
    human = source != "rollout"
    for _ in range(limit):
        padded = pad_observation(ob, task)
        if human:
            action = teleop.act(ob, info)
            pending.clear()
            position = 0  # the human decides every step: each action is its own chunk
        else:
            if not pending:
                chunk = np.asarray(policy(padded, task), dtype=np.float32)
                pending = list(np.clip(chunk, -1.0, 1.0))
                chunk_pos = 0
            action = pending.pop(0)
            position = chunk_pos
            chunk_pos += 1
        ob, _, terminated, truncated, info = env.step(action)
        success = bool(info.get("success", False))
        record["obs"].append(padded)
        record["action"].append(action)
        record["reward"].append(sparse_reward(success))
        record["success"].append(success)
        record["intervention"].append(source == "rollout" and human)
        record["terminal"].append(bool(terminated))
        record["chunk_pos"].append(position)
        record["timestamp"].append(clock())
        record["next_obs"].append(pad_observation(ob, task))
        if terminated or truncated:
            break
        if monitor is not None:
            block, progress = cube_subgoal(env)
            human = monitor.observe(block, progress)
            if human and teleop is not None and not record["intervention"][-1]:
                teleop.reset(ob, info)  # the human re-plans from where the robot left things

    return Episode(
        robot_id=robot_id,
        task_id=task.task_id,
        instruction=task.instruction,
        policy_version=policy_version,
        source=source,
        outcome="success" if record["success"][-1] else "failure",
        observations=np.stack(record["obs"]),
        actions=np.stack(record["action"]),
        rewards=np.asarray(record["reward"]),
        successes=np.asarray(record["success"]),
        interventions=np.asarray(record["intervention"]),
        terminals=np.asarray(record["terminal"]),
        chunk_pos=np.asarray(record["chunk_pos"]),
        timestamps_us=np.asarray(record["timestamp"]),
        next_observations=np.stack(record["next_obs"]),
    )

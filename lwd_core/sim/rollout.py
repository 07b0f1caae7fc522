"""Run one episode in the simulator and record it as an :class:`~lwd_core.data.episode.Episode`.

Who acts at each step:
- ``source="demo"`` / ``"play"``: the teleoperator throughout (play uses a noisy teleoperator);
- ``source="rollout"``: the policy, one action chunk at a time; with a watching human
  (:class:`~lwd_core.sim.teleop.RolloutHuman`), the person takes over when they see the policy stall or
  drift (those steps are flagged ``intervention``), and the policy re-plans from a fresh chunk when
  control returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lwd_core.data.episode import Episode, Source
from lwd_core.data.recorder import EpisodeRecorder
from lwd_core.sim.teleop import RolloutHuman, Teleoperator
from lwd_core.suite import TaskSpec, pad_observation

# (padded observation, task) -> action chunk (chunk, action_dim) in [-1, 1]
ChunkPolicy = Callable[[np.ndarray, TaskSpec], np.ndarray]


# Each simulator holds ~190 MB (model, meshes, textures); closing one frees it to the C heap, not the
# OS (lwd_core.memory.trim_heap).
SIMULATOR_MB = 190


def forget_solver_warmstart(env: Any) -> None:
    """Call right after ``env.reset``: make the episode depend on its seed alone.

    OGBench's cube reset settles the scene with two steps of *unseeded* random actions (its
    ``action_space`` is a new Box on every access). The state is then overwritten, so the first observation
    matches the seed, but MuJoCo's constraint-solver warm start is left random, and trajectories of
    fresh and reused simulators drift apart at ~1e-14. Zeroing it makes every rollout exactly repeatable.
    """
    data = getattr(env.unwrapped, "_data", None)  # a MuJoCo-based environment's state; others have none
    if data is not None and hasattr(data, "qacc_warmstart"):
        data.qacc_warmstart[:] = 0.0


class EpisodeRunner:
    """One episode as a step machine, so many robots can share one batched policy call.

    Drive it with ``while not runner.done: runner.step(chunk if runner.needs_chunk else None)``;
    :meth:`episode` returns the recording once done.
    """

    def __init__(
        self,
        env,
        task: TaskSpec,
        *,
        robot_id: str,
        policy_version: str,
        source: Source,
        seed: int,
        teleop: Teleoperator | None = None,
        human: RolloutHuman | None = None,
        max_steps: int | None = None,
        clock: Callable[[], int] | None = None,
    ):
        if human is not None:
            if source != "rollout" or teleop is not None:
                raise ValueError("a watching human takes over rollouts, with their own teleoperator")
            teleop = human.teleop
        if source != "rollout" and teleop is None:
            raise ValueError(f"a {source} episode needs a teleoperator")
        self.env, self.task, self.teleop, self.human = env, task, teleop, human
        self.policy_version, self.source = policy_version, source
        self.limit = min(max_steps or task.horizon, task.horizon)
        self._ob, self._info = env.reset(seed=seed)
        forget_solver_warmstart(env)
        if teleop is not None:
            teleop.reset(self._ob, self._info)
        if human is not None:
            human.reset()
        self.recorder = EpisodeRecorder(robot_id=robot_id, task_id=task.task_id, instruction=task.instruction,
                                        policy_version=policy_version, source=source, clock=clock)
        self._pending: list[np.ndarray] = []
        self._chunk_pos = 0
        self._human_in_control = source != "rollout"
        self.done = False

    @property
    def observation(self) -> np.ndarray:
        """The padded observation the policy sees now."""
        return pad_observation(self._ob, self.task)

    @property
    def raw_observation(self) -> np.ndarray:
        return self._ob

    @property
    def info(self) -> dict:
        return self._info

    @property
    def needs_chunk(self) -> bool:
        return not self.done and not self._human_in_control and not self._pending

    def step(self, chunk: np.ndarray | None = None) -> None:
        if self.done:
            raise RuntimeError("the episode is over")
        padded = self.observation
        intervention = self.source == "rollout" and self._human_in_control
        if self._human_in_control:
            action = self.teleop.act(self._ob, self._info)
            self._pending.clear()
            position = 0  # the human decides every step: each action is its own chunk
        else:
            if not self._pending:
                if chunk is None:
                    raise ValueError("the policy must supply an action chunk now (needs_chunk is true)")
                self._pending = list(np.clip(np.asarray(chunk, dtype=np.float32), -1.0, 1.0))
                self._chunk_pos = 0
            action = self._pending.pop(0)
            position = self._chunk_pos
            self._chunk_pos += 1
        self._ob, _, terminated, truncated, self._info = self.env.step(action)
        self.recorder.record(padded, action, pad_observation(self._ob, self.task),
                             success=bool(self._info.get("success", False)), terminal=bool(terminated),
                             intervention=intervention, chunk_pos=position)
        if terminated or truncated or self.recorder.num_steps >= self.limit:
            self.done = True
            return
        if self.human is not None:
            self._human_in_control = self.human.watch(self._ob)
            if self._human_in_control and not intervention:
                self.teleop.reset(self._ob, self._info)  # the human re-plans from where the robot left things

    def episode(self) -> Episode:
        if not self.done:
            raise RuntimeError("the episode is still running")
        return self.recorder.episode()


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
    human: RolloutHuman | None = None,
    max_steps: int | None = None,
    clock: Callable[[], int] | None = None,
) -> Episode:
    """Run one whole episode with a single (unbatched) policy."""
    if source == "rollout" and policy is None:
        raise ValueError("a rollout needs a policy")
    runner = EpisodeRunner(env, task, robot_id=robot_id, policy_version=policy_version, source=source, seed=seed,
                           teleop=teleop, human=human, max_steps=max_steps, clock=clock)
    while not runner.done:
        runner.step(policy(runner.observation, task) if runner.needs_chunk else None)
    return runner.episode()

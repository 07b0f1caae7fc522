"""Any Gymnasium environment as a fleet robot.

A task names an :class:`~lwd_core.suite.Environment` (a registered Gymnasium id, the observation size it
promises, where its success signal lives). :func:`make_env` builds it and wraps it in :class:`RobotEnv`,
which holds it to what the fleet relies on, so a lab's environment fails at construction with the reason,
not hours later in training:

- observations: a flat ``Box`` of the environment's size (the suite pads it into the shared layout);
- actions: a ``Box`` of ``ACTION_DIM`` with finite bounds; the policy acts in [-1, 1] and the wrapper
  maps that onto the bounds;
- success: ``info["success"]`` after every reset and step, read from the environment's own key.

Rewards are never taken from the environment: the suite's rule recomputes them from success.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import gymnasium
import numpy as np

from lwd_core.suite import ACTION_DIM, MAX_SCENE_OBS, Environment, TaskSpec


class RobotEnv(gymnasium.Wrapper):
    """A Gymnasium environment checked against its :class:`Environment` and speaking the fleet's
    conventions (actions in [-1, 1], ``info["success"]``)."""

    def __init__(self, env: gymnasium.Env, environment: Environment):
        super().__init__(env)
        self.environment = environment
        obs_space, action_space = env.observation_space, env.action_space
        where = f"environment {environment.name!r} ({environment.gymnasium_id})"
        if not isinstance(obs_space, gymnasium.spaces.Box) or obs_space.shape != (environment.obs_dim,):
            raise ValueError(f"{where}: observations must be a flat Box of {environment.obs_dim} values, "
                             f"got {obs_space}")
        if environment.obs_dim > MAX_SCENE_OBS:
            raise ValueError(f"{where}: {environment.obs_dim} observation values do not fit the policy's "
                             f"{MAX_SCENE_OBS} state slots")
        if not isinstance(action_space, gymnasium.spaces.Box) or action_space.shape != (ACTION_DIM,):
            raise ValueError(f"{where}: actions must be a Box of {ACTION_DIM} values, got {action_space}")
        low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
            raise ValueError(f"{where}: the action bounds must be finite, got {low} .. {high}")
        self._centre, self._half_range = (high + low) / 2, (high - low) / 2
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def _with_success(self, info: dict[str, Any]) -> dict[str, Any]:
        return {**info, "success": bool(info.get(self.environment.success_key, False))}

    def reset(self, **kwargs):
        ob, info = self.env.reset(**kwargs)
        return ob, self._with_success(info)

    def step(self, action):
        scaled = self._centre + self._half_range * np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        ob, reward, terminated, truncated, info = self.env.step(scaled.astype(self.env.action_space.dtype))
        return ob, reward, terminated, truncated, self._with_success(info)


def make_env(task: TaskSpec) -> RobotEnv:
    """A fresh environment for the task. Nothing is downloaded."""
    # Known and harmless here: no display (state observations never render) and OGBench's float64
    # Box spaces. Every process that builds an environment comes through here (CLI, actors, pool workers).
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
    environment = task.environment
    importlib.import_module(environment.registered_by)  # registers its Gymnasium ids
    return RobotEnv(gymnasium.make(task.env_name), environment)

"""The suite: the one home of its facts (tasks, instructions, dimensions, the reward rule, robot naming).

The 8 tasks on OGBench manipulation (MuJoCo, UR5e + Robotiq, state observations).

Four short "restocking" pick-and-place tasks (cube-single, 200-step limit) and four long-horizon
multi-stage tasks (cube-double 500, cube-triple 1000 steps: swaps, stacking, unstacking, cycles; each
needs several grasp-carry-place stages in the right order). Every task has a language instruction.

One generalist policy serves all tasks, so observations share one layout (see :func:`pad_observation`):

    [ scene state, zero-padded to MAX_SCENE_OBS (46, cube-triple's size) | one-hot scene id (3) ]

The scene id tells the network which slots are real; the instruction tells it which task to do.
Reward is sparse from the simulator's own success flag: 0 on success, -1 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SCENES: tuple[str, ...] = ("cube-single", "cube-double", "cube-triple")
SCENE_OBS_DIMS = {"cube-single": 28, "cube-double": 37, "cube-triple": 46}
MAX_SCENE_OBS = max(SCENE_OBS_DIMS.values())
OBS_DIM = MAX_SCENE_OBS + len(SCENES)
ACTION_DIM = 5
CONTROL_PERIOD_S = 0.05  # OGBench manipspace controls at 20 Hz: steps -> robot hours


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    scene: str
    ogbench_task: int
    instruction: str
    horizon: int
    group: Literal["short", "long"]

    @property
    def env_name(self) -> str:
        return f"{self.scene}-play-singletask-task{self.ogbench_task}-v0"


TASK_SUITE: tuple[TaskSpec, ...] = (
    TaskSpec("restock-horizontal", "cube-single", 1, "restock the cube one slot to the side", 200, "short"),
    TaskSpec("restock-forward", "cube-single", 2, "move the cube forward to the front shelf slot", 200, "short"),
    TaskSpec("restock-back", "cube-single", 3, "move the cube back to the rear shelf slot", 200, "short"),
    TaskSpec("restock-diagonal", "cube-single", 4, "carry the cube diagonally to the far slot", 200, "short"),
    TaskSpec("swap-pair", "cube-double", 4, "swap the positions of the two cubes", 500, "long"),
    TaskSpec("stack-pair", "cube-double", 5, "stack one cube on top of the other", 500, "long"),
    TaskSpec("unstack-tower", "cube-triple", 3, "unstack the tower and place each cube at its target", 1000, "long"),
    TaskSpec("cycle-three", "cube-triple", 4, "cycle the three cubes to their next positions", 1000, "long"),
)
TASKS_BY_ID = {task.task_id: task for task in TASK_SUITE}
TASK_INDEX = {task.task_id: index for index, task in enumerate(TASK_SUITE)}


def get_task(task_id: str) -> TaskSpec:
    try:
        return TASKS_BY_ID[task_id]
    except KeyError:
        raise KeyError(f"unknown task {task_id!r}; the suite has {sorted(TASKS_BY_ID)}") from None


def select_tasks(task_ids: list[str] | None) -> tuple[TaskSpec, ...]:
    """The configured tasks (empty or None: the whole suite)."""
    return tuple(get_task(t) for t in task_ids) if task_ids else TASK_SUITE


def pad_observation(obs: np.ndarray, task: TaskSpec) -> np.ndarray:
    obs = np.asarray(obs, dtype=np.float32)
    expected = SCENE_OBS_DIMS[task.scene]
    if obs.shape != (expected,):
        raise ValueError(f"{task.scene} observation must have shape ({expected},), got {obs.shape}")
    out = np.zeros(OBS_DIM, dtype=np.float32)
    out[:expected] = obs
    out[MAX_SCENE_OBS + SCENES.index(task.scene)] = 1.0
    return out


# Largest |value| a scene-state dimension honestly takes: positions in metres, angles, velocities and
# the gripper stay under about 5 in every episode measured here; 100 leaves ample room.
OBS_STATE_BOUND = 100.0


def observation_bounds(task: TaskSpec) -> np.ndarray:
    """Per-dimension bound on |observation| for the task's layout: the scene's state dims, zero padding
    beyond them, and the one-hot scene id (0 or 1)."""
    bounds = np.zeros(OBS_DIM, dtype=np.float32)
    bounds[: SCENE_OBS_DIMS[task.scene]] = OBS_STATE_BOUND
    bounds[MAX_SCENE_OBS:] = 1.0
    return bounds


def sparse_reward(success: bool) -> float:
    """The reward rule, the one place it is written: 0 on success, -1 otherwise."""
    return 0.0 if success else -1.0


def sparse_rewards(successes: np.ndarray) -> np.ndarray:
    """:func:`sparse_reward` per step of an episode."""
    return np.where(np.asarray(successes, dtype=bool), sparse_reward(True), sparse_reward(False)).astype(np.float32)


# What a human's demonstration or play episode names as its policy (a rollout names a published release).
TELEOP_POLICY_VERSION = "teleop"
# The offline dataset's teleoperator (a fleet's own come from config fleet.teleoperators).
OFFLINE_TELEOPERATOR_ID = "teleop-0"


def fleet_robot_ids(count: int, hosts: Sequence[str] = ()) -> list[str]:
    """Robot naming: ``robot-00`` ... for ``count`` robots on one host; with several fleet hosts,
    ``count`` on each, named ``<host>-robot-00`` ..., so hosts never share an id."""
    names = [f"robot-{index:02d}" for index in range(count)]
    return [f"{host}-{name}" for host in hosts for name in names] if hosts else names

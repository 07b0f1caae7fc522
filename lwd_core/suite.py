"""The suite: the one home of its facts (environments, tasks, instructions, dimensions, the reward rule,
robot naming).

The 8 tasks on OGBench manipulation (MuJoCo, UR5e + Robotiq, state observations), and the tasks beyond
them that a fleet may also name (:data:`EXTRA_TASKS`).

Four short "restocking" pick-and-place tasks (cube-single, 200-step limit) and four long-horizon
multi-stage tasks (cube-double 500, cube-triple 1000 steps: swaps, stacking, unstacking, cycles; each
needs several grasp-carry-place stages in the right order). Every task has a language instruction.

A task runs in an :class:`Environment`, any Gymnasium environment (built by its registered id, wrapped
by lwd_core/sim/environment.py): an environment is a kind of robot and scene, with its own observation
size. One generalist policy serves all of them, so observations share one layout (see
:func:`pad_observation`):

    [ environment state, zero-padded to MAX_SCENE_OBS (46, cube-triple's size) | one-hot environment (4) ]

The environment id tells the network which slots are real; the instruction tells it which task to do.
Reward is sparse from the environment's own success signal: 0 on success, -1 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ACTION_DIM = 5  # every robot acts in the same space: end-effector deltas, yaw and gripper, in [-1, 1]
CONTROL_PERIOD_S = 0.05  # OGBench manipspace controls at 20 Hz: steps -> robot hours


@dataclass(frozen=True)
class Environment:
    """A kind of robot and scene: how to build one and what it shows the policy.

    ``gymnasium_id`` is a template filled with a task's ``ogbench_task`` number; importing
    ``registered_by`` registers it with Gymnasium (a lab's own package works the same way). The success
    signal is ``info[success_key]`` after each step. ``scripted_human``: whether lwd_core/sim/teleop.py
    can demonstrate and take over here (only the cube scenes: elsewhere offline data comes from an
    import, and the fleet runs unwatched in simulation).
    """

    name: str
    obs_dim: int
    gymnasium_id: str
    registered_by: str = "ogbench"
    success_key: str = "success"
    scripted_human: bool = False


ENVIRONMENTS: dict[str, Environment] = {env.name: env for env in (
    Environment("cube-single", 28, "cube-single-singletask-task{task}-v0", scripted_human=True),
    Environment("cube-double", 37, "cube-double-singletask-task{task}-v0", scripted_human=True),
    Environment("cube-triple", 46, "cube-triple-singletask-task{task}-v0", scripted_human=True),
    # OGBench's drawer, window, buttons and a cube: a scene family the eight tasks do not use.
    Environment("scene", 40, "scene-singletask-task{task}-v0"),
)}
SCENES: tuple[str, ...] = tuple(ENVIRONMENTS)
SCENE_OBS_DIMS = {name: env.obs_dim for name, env in ENVIRONMENTS.items()}
MAX_SCENE_OBS = 46  # the policy's state slots (cube-triple's state): every environment's must fit
if too_large := sorted(name for name, dims in SCENE_OBS_DIMS.items() if dims > MAX_SCENE_OBS):
    raise ValueError(f"environments {too_large} observe more than the policy's {MAX_SCENE_OBS} state values")
# Each environment adds a one-hot slot: adding one changes the layout, and policies trained before it
# (their checkpoints and buffers) no longer fit.
OBS_DIM = MAX_SCENE_OBS + len(SCENES)


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    scene: str  # its Environment's name
    ogbench_task: int
    instruction: str
    horizon: int
    group: Literal["short", "long"]

    @property
    def environment(self) -> Environment:
        return ENVIRONMENTS[self.scene]

    @property
    def env_name(self) -> str:
        """The Gymnasium id its robots are built from."""
        return self.environment.gymnasium_id.format(task=self.ogbench_task)


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
# Beyond the eight: tasks a fleet may name (``fleet.tasks``) that the default selection leaves out.
EXTRA_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("open-drawer-window", "scene", 1, "open the drawer and the window", 750, "short"),
)
# Every task the policy knows, in the order that gives each its index (the eight keep theirs).
KNOWN_TASKS = TASK_SUITE + EXTRA_TASKS
TASKS_BY_ID = {task.task_id: task for task in KNOWN_TASKS}
TASK_INDEX = {task.task_id: index for index, task in enumerate(KNOWN_TASKS)}


def get_task(task_id: str) -> TaskSpec:
    try:
        return TASKS_BY_ID[task_id]
    except KeyError:
        raise KeyError(f"unknown task {task_id!r}; the suite knows {sorted(TASKS_BY_ID)}") from None


def select_tasks(task_ids: list[str] | None) -> tuple[TaskSpec, ...]:
    """The configured tasks (empty or None: the eight of the suite)."""
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

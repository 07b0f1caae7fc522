"""The scripted human: demonstrator, play-data source, and the person who watches rollouts and takes over.

OGBench's cube oracles expect the data-collection mode's privileged target (which block, where to).
In task mode that is hidden, so the human, who can see the goal markers, supplies it
(:func:`plan_subgoal`): an uncovered unfinished block whose target is clear, lowest target first (stacks
build bottom-up); when every move is blocked (swaps, cycles) a free block is parked on the clearest spot
first. A subgoal is kept until reached, or re-planned after ``retry_steps`` (the human retries when stuck).

Interventions (:class:`HumanConfig`, :class:`RolloutHuman`): the person judges progress from what they can
see, the gripper and the cubes as the robot's observation shows them (with their own estimation error)
and the goal markers, never from simulator internals. :class:`InterventionMonitor` takes over when that
progress *stalls* (none over a window) or *drifts* (well past the best seen), after the person's reaction
time, within an intervention budget, and hands control back after a fixed time or once the subgoal is
done. The ``realistic`` person also corrects imperfectly (action noise, now and then a wrong sub-goal);
the ``oracle`` is OGBench's expert, exact and instant, so every takeover is a perfect label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lwd_core.config import HumanConfig
from lwd_core.suite import CONTROL_PERIOD_S, TaskSpec

SUCCESS_RADIUS = 0.04  # OGBench's cube success threshold
# OGBench cube observations: 19 proprioceptive values (the effector position at 12:15), then 9 per cube
# (position first); positions are stored as (xyz - centre) * 10 (ogbench manipspace cube_env).
_EFFECTOR_SLICE = slice(12, 15)
_PROPRIO_DIMS, _PER_CUBE_DIMS = 19, 9
_XYZ_CENTRE, _XYZ_SCALE = np.array([0.425, 0.0, 0.0]), 10.0


def require_scripted_person(tasks: Iterable[TaskSpec]) -> None:
    """This module's person knows only the cube scenes (:attr:`Environment.scripted_human`)."""
    if missing := [task.task_id for task in tasks if not task.environment.scripted_human]:
        raise ValueError(f"the simulated person demonstrates and takes over only in the cube scenes, not in "
                         f"{missing}: import their offline data (`lwd import lerobot DIR`) and set fleet.human "
                         "to null")


def _steps(seconds: float) -> int:
    return round(seconds / CONTROL_PERIOD_S)


@dataclass(frozen=True)
class Subgoal:
    block: int
    position: np.ndarray
    yaw: float


@dataclass(frozen=True)
class Scene:
    """What a person watching sees: the gripper, the cubes, the goal markers and the table."""

    effector: np.ndarray  # (3,) metres
    blocks: np.ndarray  # (n, 3)
    targets: np.ndarray  # (n, 3)
    target_yaws: np.ndarray  # (n,)
    table_low: np.ndarray  # (2,) x, y where cubes may be placed
    table_high: np.ndarray


def seen_scene(env: Any, ob: np.ndarray, rng: np.random.Generator | None = None, noise_m: float = 0.0) -> Scene:
    """The scene from the robot's observation ``ob`` (the gripper and cubes, with a person's estimation
    error ``noise_m``) and the goal markers shown in the scene."""
    from ogbench.manipspace import lie

    u = env.unwrapped
    n = u._num_cubes
    ob = np.asarray(ob, dtype=np.float64)
    cubes = np.stack([ob[_PROPRIO_DIMS + _PER_CUBE_DIMS * i:][:3] for i in range(n)])
    effector, blocks = ob[_EFFECTOR_SLICE] / _XYZ_SCALE + _XYZ_CENTRE, cubes / _XYZ_SCALE + _XYZ_CENTRE
    if noise_m and rng is not None:
        effector = effector + rng.normal(0.0, noise_m, size=3)
        blocks = blocks + rng.normal(0.0, noise_m, size=blocks.shape)
    markers = [u._cube_target_mocap_ids[i] for i in range(n)]
    low, high = np.asarray(u._object_sampling_bounds[0]), np.asarray(u._object_sampling_bounds[1])
    return Scene(effector=effector, blocks=blocks,
                 targets=np.array([u._data.mocap_pos[m] for m in markers]),
                 target_yaws=np.array([lie.SO3(wxyz=u._data.mocap_quat[m]).compute_yaw_radians() for m in markers]),
                 table_low=low[:2], table_high=high[:2])


def plan_subgoal(scene: Scene) -> Subgoal:
    """What a human would do next: move a free (top) block whose target is clear, lowest target first;
    if every move is blocked (a swap or cycle), park a free block on the clearest spot first."""
    positions, targets = scene.blocks, scene.targets
    n = len(positions)
    at_target = np.linalg.norm(positions - targets, axis=1) <= SUCCESS_RADIUS
    pending = [i for i in range(n) if not at_target[i]] or list(range(n))

    def covered(i: int) -> bool:
        return any(
            j != i and positions[j][2] > positions[i][2] + 0.01 and np.linalg.norm(positions[j][:2] - positions[i][:2]) < 0.03
            for j in range(n)
        )

    def target_blocked(i: int) -> bool:
        # Occupied: another cube at the same height overlapping the spot (one below it is a support).
        return any(
            j != i and abs(positions[j][2] - targets[i][2]) < 0.02 and np.linalg.norm(positions[j][:2] - targets[i][:2]) < 0.045
            for j in range(n)
        )

    free = [i for i in pending if not covered(i)]
    movable = [i for i in free if not target_blocked(i)]
    if movable:
        block = min(movable, key=lambda i: targets[i][2])
        return Subgoal(block, targets[block].copy(), float(scene.target_yaws[block]))
    block = (free or pending)[0]
    low, high = scene.table_low, scene.table_high
    grid = np.stack(np.meshgrid(np.linspace(low[0], high[0], 7), np.linspace(low[1], high[1], 7)), -1).reshape(-1, 2)
    obstacles = np.concatenate([positions[:, :2], targets[:, :2]])
    clearance = np.linalg.norm(grid[:, None] - obstacles[None], axis=-1).min(1)
    spot = grid[int(np.argmax(clearance))]
    return Subgoal(block, np.array([spot[0], spot[1], 0.02]), 0.0)


def misjudged_subgoal(scene: Scene, goal: Subgoal, rng: np.random.Generator) -> Subgoal:
    """A person's wrong sub-goal: the right block, taken to a spot on the table picked by mistake."""
    spot = rng.uniform(scene.table_low, scene.table_high)
    return Subgoal(goal.block, np.array([spot[0], spot[1], 0.02]), 0.0)


def subgoal_progress(scene: Scene, goal: Subgoal) -> float:
    """Distance of the goal block to its goal plus half the gripper's distance to the block."""
    block = scene.blocks[goal.block]
    return float(np.linalg.norm(block - goal.position) + 0.5 * np.linalg.norm(scene.effector - block))


class Teleoperator:
    """Oracle-driven operator. ``noise``/``smoothing``/``random_prob`` turn demos into play data;
    ``wrong_subgoal_prob`` makes a planned sub-goal now and then a misjudged one, pursued for
    ``wrong_subgoal_steps``."""

    def __init__(
        self,
        env: Any,
        rng: np.random.Generator,
        noise: float = 0.0,
        smoothing: float = 0.0,
        random_prob: float = 0.0,
        retry_steps: int = 300,
        wrong_subgoal_prob: float = 0.0,
        wrong_subgoal_steps: int = 30,
    ):
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        self.env = env
        self.rng = rng
        self.noise = noise
        self.smoothing = smoothing
        self.random_prob = random_prob
        self.oracle = CubeMarkovOracle(env=env, min_norm=0.4)
        self.retry_steps = retry_steps
        self.wrong_subgoal_prob = wrong_subgoal_prob
        self.wrong_subgoal_steps = wrong_subgoal_steps
        self._goal: Subgoal | None = None
        self._goal_steps = 0
        self._goal_limit = retry_steps
        self._previous = np.zeros(5, dtype=np.float32)

    def _with_subgoal(self, ob: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        scene = seen_scene(self.env, ob)
        reached = (self._goal is not None
                   and np.linalg.norm(scene.blocks[self._goal.block] - self._goal.position) <= SUCCESS_RADIUS)
        replan = self._goal is None or reached or self._goal_steps >= self._goal_limit
        if replan:
            self._goal, self._goal_limit = plan_subgoal(scene), self.retry_steps
            if self.wrong_subgoal_prob and self.rng.uniform() < self.wrong_subgoal_prob:
                self._goal, self._goal_limit = misjudged_subgoal(scene, self._goal, self.rng), self.wrong_subgoal_steps
            self._goal_steps = 0
        self._goal_steps += 1
        merged = {
            **info,
            "privileged/target_block": self._goal.block,
            "privileged/target_block_pos": self._goal.position.copy(),
            "privileged/target_block_yaw": np.array([self._goal.yaw]),
        }
        if replan or self.oracle.done:
            self.oracle.reset(ob, merged)
        return merged

    def reset(self, ob: np.ndarray, info: dict[str, Any]) -> None:
        self._goal = None
        self._previous = np.zeros(5, dtype=np.float32)
        self._with_subgoal(ob, info)

    def act(self, ob: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        action = np.asarray(self.oracle.select_action(ob, self._with_subgoal(ob, info)), dtype=np.float32)
        if self.random_prob and self.rng.uniform() < self.random_prob:
            action = self.rng.uniform(-1, 1, size=action.shape).astype(np.float32)
        if self.noise:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape).astype(np.float32)
        if self.smoothing:
            action = self.smoothing * self._previous + (1 - self.smoothing) * action
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        self._previous = action
        return action


@dataclass
class InterventionMonitor:
    """When the person takes over, from the progress they see: a stall or a drift starts a takeover of
    ``takeover_steps`` after ``reaction_steps`` (the robot acting meanwhile), while ``budget_steps`` of
    control remain (None: unlimited)."""

    stall_window: int = 40
    min_progress: float = 0.02
    drift_margin: float = 0.15
    takeover_steps: int = 60
    reaction_steps: int = 0
    budget_steps: int | None = None
    _history: list[float] = field(default_factory=list)
    _best: float = float("inf")
    _takeover_left: int = 0
    _reaction_left: int = 0
    _spent: int = 0
    _block: int = -1

    def reset(self) -> None:
        self._history.clear()
        self._best = float("inf")
        self._takeover_left = self._reaction_left = self._spent = 0
        self._block = -1

    @property
    def active(self) -> bool:
        return self._takeover_left > 0

    @property
    def budget_left(self) -> float:
        return math.inf if self.budget_steps is None else self.budget_steps - self._spent

    def observe(self, block: int, progress: float) -> bool:
        """Record progress; returns whether the human is in control for the next step."""
        if block != self._block:
            # A finished subgoal ends a takeover (or the wish for one) and restarts the watch.
            self._block = block
            self._history.clear()
            self._best = progress
            self._takeover_left = self._reaction_left = 0
        if self._takeover_left > 0:
            self._takeover_left = min(self._takeover_left - 1, self.budget_left)
            self._best = min(self._best, progress)
            return self._control()
        if self._reaction_left > 0:
            # Noticed, not yet in control: the robot keeps acting.
            self._reaction_left -= 1
            if self._reaction_left == 0:
                self._takeover_left = min(self.takeover_steps, self.budget_left)
                self._best = progress
                return self._control()
            return False
        self._history.append(progress)
        self._best = min(self._best, progress)
        stalled = len(self._history) > self.stall_window and (
            self._history[-self.stall_window - 1] - min(self._history[-self.stall_window :]) < self.min_progress
        )
        drifted = progress > self._best + self.drift_margin
        if (stalled or drifted) and self.budget_left > 0:
            self._history.clear()
            self._best = progress
            if self.reaction_steps > 0:
                self._reaction_left = self.reaction_steps
                return False
            self._takeover_left = min(self.takeover_steps, self.budget_left)
            return self._control()
        return False

    def _control(self) -> bool:
        if self._takeover_left > 0:
            self._spent += 1
        return self._takeover_left > 0


class RolloutHuman:
    """The person watching one rollout: who judges progress (:class:`InterventionMonitor` fed with
    :func:`seen_scene`) and who acts once in control (:class:`Teleoperator`)."""

    def __init__(self, env: Any, task: TaskSpec, config: HumanConfig, seed: int):
        require_scripted_person([task])
        acting = config.effective()
        self.env = env
        self.rng = np.random.default_rng(seed)
        self.perception_noise = acting.perception_noise_m
        self.teleop = Teleoperator(env, np.random.default_rng([seed, 1]), noise=acting.action_noise,
                                   wrong_subgoal_prob=acting.wrong_subgoal_prob,
                                   wrong_subgoal_steps=_steps(acting.wrong_subgoal_s))
        budget = acting.budget_s_per_robot_hour
        self.monitor = InterventionMonitor(
            stall_window=_steps(acting.stall_s), min_progress=acting.min_progress_m, drift_margin=acting.drift_m,
            takeover_steps=_steps(acting.takeover_s), reaction_steps=_steps(acting.reaction_s),
            budget_steps=None if budget is None else math.floor(budget / 3600 * task.horizon))

    def reset(self) -> None:
        self.monitor.reset()

    def watch(self, ob: np.ndarray) -> bool:
        """Whether the person is in control for the next step, from what they see now."""
        scene = seen_scene(self.env, ob, self.rng, self.perception_noise)
        goal = plan_subgoal(scene)
        return self.monitor.observe(goal.block, subgoal_progress(scene, goal))

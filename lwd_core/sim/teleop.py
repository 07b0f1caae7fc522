"""Scripted teleoperator from OGBench's shipped oracles: demonstrator, play-data source and intervening human.

OGBench's cube oracles expect the data-collection mode's privileged target (which block, where to).
In task mode that is hidden, so the "human", who can see the goal, supplies it (:func:`plan_subgoal`):
an uncovered unfinished block whose target is clear, lowest target first (stacks build bottom-up); when
every move is blocked (swaps, cycles) a free block is parked on the clearest spot first. A subgoal is
kept until reached, or re-planned after ``retry_steps`` (the human retries when stuck).

Interventions: :class:`InterventionMonitor` watches task progress (distance of the subgoal block to its
target plus the gripper's distance to that block) and takes over when the policy *stalls* (no progress
over a window) or *drifts* (progress distance grows well past the best seen), then hands control back
after a fixed number of steps or once the subgoal is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUCCESS_RADIUS = 0.04  # OGBench's cube success threshold


@dataclass(frozen=True)
class Subgoal:
    block: int
    position: np.ndarray
    yaw: float


def _scene(env: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = env.unwrapped
    n = u._num_cubes
    positions = np.array([u._data.joint(f"object_joint_{i}").qpos[:3] for i in range(n)])
    targets = np.array([u._data.mocap_pos[u._cube_target_mocap_ids[i]] for i in range(n)])
    return positions, targets, u._data.site_xpos[u._pinch_site_id].copy()


def plan_subgoal(env: Any) -> Subgoal:
    """What a human would do next: move a free (top) block whose target is clear, lowest target first;
    if every move is blocked (a swap or cycle), park a free block on the clearest spot first."""
    from ogbench.manipspace import lie

    u = env.unwrapped
    positions, targets, _ = _scene(env)
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
    yaw_of = lambda i: float(lie.SO3(wxyz=u._data.mocap_quat[u._cube_target_mocap_ids[i]]).compute_yaw_radians())  # noqa: E731
    if movable:
        block = min(movable, key=lambda i: targets[i][2])
        return Subgoal(block, targets[block].copy(), yaw_of(block))
    block = (free or pending)[0]
    low, high = np.asarray(u._object_sampling_bounds[0]), np.asarray(u._object_sampling_bounds[1])
    grid = np.stack(np.meshgrid(np.linspace(low[0], high[0], 7), np.linspace(low[1], high[1], 7)), -1).reshape(-1, 2)
    obstacles = np.concatenate([positions[:, :2], targets[:, :2]])
    clearance = np.linalg.norm(grid[:, None] - obstacles[None], axis=-1).min(1)
    spot = grid[int(np.argmax(clearance))]
    return Subgoal(block, np.array([spot[0], spot[1], 0.02]), 0.0)


def subgoal_progress(env: Any, goal: Subgoal) -> float:
    """Distance of the goal block to its goal plus half the gripper's distance to the block."""
    positions, _, effector = _scene(env)
    block = positions[goal.block]
    return float(np.linalg.norm(block - goal.position) + 0.5 * np.linalg.norm(effector - block))


def cube_subgoal(env: Any) -> tuple[int, float]:
    """(block, progress) of the subgoal a human would pursue now: what the intervention monitor watches."""
    goal = plan_subgoal(env)
    return goal.block, subgoal_progress(env, goal)


class Teleoperator:
    """Oracle-driven operator. ``noise``/``smoothing``/``random_prob`` turn demos into play data."""

    def __init__(
        self,
        env: Any,
        rng: np.random.Generator,
        noise: float = 0.0,
        smoothing: float = 0.0,
        random_prob: float = 0.0,
        retry_steps: int = 300,
    ):
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        self.env = env
        self.rng = rng
        self.noise = noise
        self.smoothing = smoothing
        self.random_prob = random_prob
        self.oracle = CubeMarkovOracle(env=env, min_norm=0.4)
        self.retry_steps = retry_steps
        self._goal: Subgoal | None = None
        self._goal_steps = 0
        self._previous = np.zeros(5, dtype=np.float32)

    def _with_subgoal(self, ob: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        positions, _, _ = _scene(self.env)
        reached = self._goal is not None and np.linalg.norm(positions[self._goal.block] - self._goal.position) <= SUCCESS_RADIUS
        replan = self._goal is None or reached or self._goal_steps >= self.retry_steps
        if replan:
            self._goal = plan_subgoal(self.env)
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
    stall_window: int = 40
    min_progress: float = 0.02
    drift_margin: float = 0.15
    takeover_steps: int = 60
    _history: list[float] = field(default_factory=list)
    _best: float = float("inf")
    _takeover_left: int = 0
    _block: int = -1

    def reset(self) -> None:
        self._history.clear()
        self._best = float("inf")
        self._takeover_left = 0
        self._block = -1

    @property
    def active(self) -> bool:
        return self._takeover_left > 0

    def observe(self, block: int, progress: float) -> bool:
        """Record progress; returns whether the human is in control for the next step."""
        if block != self._block:
            # A finished subgoal ends a takeover and restarts the watch.
            self._block = block
            self._history.clear()
            self._best = progress
            self._takeover_left = 0
        if self._takeover_left > 0:
            self._takeover_left -= 1
            self._best = min(self._best, progress)
            return self._takeover_left > 0
        self._history.append(progress)
        self._best = min(self._best, progress)
        stalled = len(self._history) > self.stall_window and (
            self._history[-self.stall_window - 1] - min(self._history[-self.stall_window :]) < self.min_progress
        )
        drifted = progress > self._best + self.drift_margin
        if stalled or drifted:
            self._takeover_left = self.takeover_steps
            self._history.clear()
            self._best = progress
            return True
        return False

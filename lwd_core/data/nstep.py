"""Dynamic n-step TD over action chunks.

A decision executes a chunk of ``h`` environment steps; an n-step target looks ``n`` decisions ahead:

    R_t = sum_{j=0}^{L-1} gamma^j r_{t+j},     L = n * h environment steps, cut short at episode end
    y_t = R_t + gamma^L' * (1 - terminal) * V(s_{t+L'})                 (L' = steps actually taken)

Discounting is per environment step inside the chunk. A terminal step inside the window stops the sum
and removes the bootstrap; a time-limit end (done, not terminal) bootstraps from the final observation
with the discount of the steps actually taken. ``n`` depends on the task horizon and training stage
(long tasks use long n offline to propagate sparse reward; online uses n = 1 to limit off-policy bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

RunKind = Literal["offline", "online"]


@dataclass(frozen=True)
class NStepSchedule:
    offline_long: int = 10
    offline_short: int = 3
    online: int = 1
    long_horizon_threshold: int = 400

    @classmethod
    def from_config(cls, algo) -> NStepSchedule:
        return cls(algo.nstep_offline_long, algo.nstep_offline_short, algo.nstep_online, algo.long_horizon_threshold)

    def n_for(self, task_horizon: int, stage: RunKind) -> int:
        if stage == "online":
            return self.online
        if stage != "offline":
            raise ValueError(f"stage must be offline or online, not {stage!r}")
        return self.offline_long if task_horizon >= self.long_horizon_threshold else self.offline_short


def nstep_targets(
    rewards: np.ndarray, terminals: np.ndarray, gamma: float, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per start step t of one episode: (discounted reward sum, bootstrap discount, bootstrap step index).

    The bootstrap observation for start t is ``next_obs[index[t]]``; its discount is 0 after a terminal.
    """
    steps = len(rewards)
    offsets = np.arange(window)
    idx = np.arange(steps)[:, None] + offsets[None, :]
    inside = idx < steps
    idx_c = np.minimum(idx, steps - 1)
    term = terminals[idx_c] & inside
    # Steps strictly after the first terminal of the window are not part of the return.
    after_terminal = (np.cumsum(term, axis=1) - term) > 0
    used = inside & ~after_terminal
    powers = gamma ** offsets.astype(np.float64)
    reward_sum = (np.where(used, rewards[idx_c], 0.0) * powers).sum(1)
    taken = used.sum(1)
    hit_terminal = (term & used).any(1)
    discount = np.where(hit_terminal, 0.0, gamma ** taken.astype(np.float64))
    bootstrap_index = np.arange(steps) + taken - 1
    return reward_sum.astype(np.float32), discount.astype(np.float32), bootstrap_index


def discounted_return(rewards: np.ndarray, gamma: float) -> float:
    """The episode's discounted return from its first step: ``returns_to_go(...)[0]`` without the
    per-step loop (labelling runs it for every ingested episode)."""
    rewards = np.asarray(rewards, np.float64)
    return float(np.dot(rewards, gamma ** np.arange(len(rewards), dtype=np.float64)))


def returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        running = rewards[i] + gamma * running
        out[i] = running
    return out.astype(np.float32)


def action_chunks(actions: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, A) -> (T, chunk * A) windows starting at each step, padded past the end by the last action,
    plus how many real actions each window holds."""
    steps = len(actions)
    idx = np.minimum(np.arange(steps)[:, None] + np.arange(chunk)[None, :], steps - 1)
    valid = np.minimum(chunk, steps - np.arange(steps))
    return actions[idx].reshape(steps, -1), valid.astype(np.int32)


def build_transitions(
    episodes: Sequence,
    rewards: Sequence[np.ndarray],
    chunk: int,
    gamma: float,
    n_for_task: dict[str, int] | int,
    task_index: dict[str, int],
    tokens_for_task: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Chunked n-step transitions for a set of episodes (one row per start step), with each episode's
    per-step ``rewards`` as its labels give them (:mod:`lwd_core.data.labels`), never the reward column
    a robot wrote."""
    if len(rewards) != len(episodes):
        raise ValueError(f"{len(rewards)} reward sequences for {len(episodes)} episodes")
    parts: list[dict[str, np.ndarray]] = []
    for episode, episode_rewards in zip(episodes, rewards, strict=True):
        episode_rewards = np.asarray(episode_rewards, np.float64)
        if len(episode_rewards) != episode.num_steps:
            raise ValueError(f"episode {episode.episode_id}: {len(episode_rewards)} labelled rewards for "
                             f"{episode.num_steps} steps")
        n = n_for_task if isinstance(n_for_task, int) else n_for_task[episode.task_id]
        reward_sum, discount, boot = nstep_targets(
            episode_rewards, np.asarray(episode.terminals, bool), gamma, n * chunk
        )
        chunks, valid = action_chunks(np.asarray(episode.actions, np.float32), chunk)
        steps = len(reward_sum)
        interventions = np.asarray(episode.interventions, bool)
        parts.append({
            "obs": np.asarray(episode.observations, np.float32),
            "actions": chunks,
            "chunk_valid": valid,
            "reward": reward_sum,
            "discount": discount,
            "next_obs": np.asarray(episode.next_observations, np.float32)[boot],
            "task": np.full(steps, task_index[episode.task_id], np.int32),
            "tokens": np.repeat(tokens_for_task[episode.task_id][None], steps, axis=0),
            "intervention": action_chunks(interventions[:, None].astype(np.float32), chunk)[0].max(1) > 0,
            "demo": np.full(steps, episode.source == "demo"),
            "mc_return": returns_to_go(episode_rewards, gamma),
            "condition": np.zeros(steps, np.int32),
        })
    if not parts:
        raise ValueError("no episodes to build transitions from")
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

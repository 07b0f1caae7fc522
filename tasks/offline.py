"""Prefect tasks for the offline stage, each a thin wrapper over lwd_core."""

from __future__ import annotations

import numpy as np
from prefect import task

from lwd_core.algo.checkpoint import load_policy, save_checkpoint
from lwd_core.algo.learner import Learner, LearnerSpec
from lwd_core.algo.nstep import NStepSchedule, build_transitions
from lwd_core.algo.replay import MixedReplay
from lwd_core.algo.text import tokenize
from lwd_core.config import LWDConfig
from lwd_core.data.layout import buffer_key, get_episode, put_episode
from lwd_core.sim.rollout import run_episode
from lwd_core.sim.tasks import ACTION_DIM, OBS_DIM, TASK_INDEX, get_task, make_env
from lwd_core.sim.teleop import Teleoperator
from lwd_core.store import open_store


@task(retries=2, retry_delay_seconds=2)
def generate_demonstrations(config: LWDConfig, task_id: str, episodes: int, seed: int) -> list[str]:
    """Oracle demonstrations for one task, written to buffer/offline; returns their keys."""
    store = open_store(config)
    spec = get_task(task_id)
    env = make_env(spec)
    keys = []
    for i in range(episodes):
        episode = run_episode(env, spec, robot_id="teleop-0", policy_version="oracle", source="demo",
                              seed=seed + i, teleop=Teleoperator(env, np.random.default_rng(seed + i)))
        key = buffer_key("offline", spec.task_id, episode.episode_id)
        put_episode(store, key, episode)
        keys.append(key)
    return keys


@task(retries=1)
def train_offline(config: LWDConfig, keys: list[str], steps: int, version: str) -> str:
    """LWD offline training on the given buffer episodes; returns the committed checkpoint prefix."""
    store = open_store(config)
    episodes = [get_episode(store, key) for key in keys]
    schedule = NStepSchedule.from_config(config.algo)
    transitions = build_transitions(
        episodes, chunk=config.algo.action_chunk, gamma=config.algo.discount,
        n_for_task={e.task_id: schedule.n_for(get_task(e.task_id).horizon, "offline") for e in episodes},
        task_index=TASK_INDEX, tokens_for_task={e.task_id: tokenize(e.instruction) for e in episodes},
    )
    learner = Learner(LearnerSpec.from_config(config.algo, OBS_DIM, ACTION_DIM))
    replay = MixedReplay(transitions, seed=config.algo.seed)
    state = learner.init(config.algo.seed)
    for _ in range(steps):
        state, metrics = learner.update(state, replay.sample(config.algo.batch_size))
    prefix = f"checkpoints/{version}"
    save_checkpoint(store, prefix, learner, state,
                    extra={"replay": replay.state_dict(), "metrics": {k: float(v) for k, v in metrics.items()}})
    return prefix


@task
def evaluate_in_sim(config: LWDConfig, checkpoint: str, task_id: str, episodes: int, seed: int) -> float:
    """Success rate of the checkpoint's policy on one task (no interventions)."""
    import jax

    store = open_store(config)
    learner, params = load_policy(store, checkpoint)
    spec = get_task(task_id)
    env = make_env(spec)
    tokens = tokenize(spec.instruction)[None]
    key = jax.random.PRNGKey(seed)

    def policy(obs, _task):
        nonlocal key
        key, sub = jax.random.split(key)
        return learner.act(params, obs[None], tokens, sub)[0]

    wins = 0
    for i in range(episodes):
        episode = run_episode(env, spec, robot_id="eval-0", policy_version=checkpoint, source="rollout",
                              seed=10_000 + seed + i, policy=policy)
        wins += episode.outcome == "success"
    return wins / episodes

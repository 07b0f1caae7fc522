"""The simulator pool: inline and worker processes agree, simulators are reused, failures surface."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from lwd_core.config import HumanConfig
from lwd_core.sim.environment import make_env
from lwd_core.sim.pool import EpisodeRequest, SimPool, SimPoolError
from lwd_core.sim.rollout import EpisodeRunner
from lwd_core.suite import ACTION_DIM, get_task, pad_observation

CHUNK = 4


def observation_policy(obs: np.ndarray, _tasks) -> np.ndarray:
    """Deterministic and row-wise: the same observation always gets the same chunk."""
    return np.repeat(np.tanh(3.0 * obs[:, None, :ACTION_DIM]), CHUNK, axis=1)


def zero_policy(obs: np.ndarray, _tasks) -> np.ndarray:
    return np.zeros((len(obs), CHUNK, ACTION_DIM), np.float32)  # never moves: a stall


@pytest.fixture(scope="module")
def worker_pool():
    with SimPool(2) as pool:
        yield pool


def assert_same_rollouts(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert (a.task_id, a.robot_id, a.policy_version, a.outcome) == (b.task_id, b.robot_id, b.policy_version,
                                                                       b.outcome)
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.interventions, b.interventions)
        np.testing.assert_array_equal(a.chunk_pos, b.chunk_pos)


def test_inline_and_worker_pools_give_the_same_episodes(worker_pool):
    requests = [EpisodeRequest(task_id, seed, robot_id=f"r{seed}", max_steps=steps)
                for task_id in ("restock-horizontal", "restock-back") for seed, steps in ((1, 20), (2, 27))]
    with SimPool(1) as inline:
        expected = inline.run(requests, observation_policy)
        assert inline.envs_created == 4  # two concurrent episodes per task
        again = inline.run(requests, observation_policy)
        assert inline.envs_created == 4  # the second call reuses them
    assert [(e.task_id, e.robot_id, e.num_steps) for e in expected] == [
        (r.task_id, r.robot_id, r.max_steps) for r in requests]
    assert_same_rollouts(expected, again)
    assert_same_rollouts(expected, worker_pool.run(requests, observation_policy))
    assert worker_pool.envs_created == 4
    with SimPool(1, max_concurrent=1) as one_at_a_time:
        assert_same_rollouts(expected, one_at_a_time.run(requests, observation_policy))
        assert one_at_a_time.envs_created == 2  # a simulator per task in turn, each reused while its task runs


def test_a_reused_simulator_starts_and_runs_like_a_fresh_one():
    task = get_task("restock-forward")
    with SimPool(1) as pool:
        pool.run([EpisodeRequest(task.task_id, seed, max_steps=10) for seed in (1, 2)], zero_policy)
        reused = pool.run([EpisodeRequest(task.task_id, seed, max_steps=60) for seed in (3, 4)], zero_policy)
        assert pool.envs_created == 2
    fresh_env = make_env(task)
    for seed, episode in zip((3, 4), reused, strict=True):
        first, _ = fresh_env.reset(seed=seed)
        np.testing.assert_array_equal(episode.observations[0], pad_observation(first, task))
    for seed, episode in zip((3, 4), reused, strict=True):
        # Zero actions are the sensitive case: without forgetting the solver's random warm start (the
        # runner does it after reset), a fresh simulator drifts from a reused one within a few dozen steps.
        runner = EpisodeRunner(make_env(task), task, robot_id="eval", policy_version="eval", source="rollout",
                               seed=seed, max_steps=60)
        while not runner.done:
            runner.step(zero_policy(runner.observation[None], [task])[0] if runner.needs_chunk else None)
        np.testing.assert_array_equal(episode.observations, runner.episode().observations)
        np.testing.assert_array_equal(episode.next_observations, runner.episode().next_observations)


def test_stalled_rollouts_get_interventions_identically_in_every_pool(worker_pool):
    requests = [EpisodeRequest("restock-horizontal", seed, human=HumanConfig(kind="oracle"), max_steps=100) for seed in (1, 5)]
    with SimPool(1) as inline:
        episodes = inline.run(requests, zero_policy)
    for episode in episodes:
        # The monitor's 40-step stall window must pass before the human takes over.
        assert episode.interventions.any() and not episode.interventions[:40].any()
        assert (episode.actions[~episode.interventions] == 0).all()
        assert (episode.actions[episode.interventions] != 0).any()
        assert episode.outcome == "success"  # the human finished the task
    assert_same_rollouts(episodes, worker_pool.run(requests, zero_policy))


def test_failures_surface_in_the_parent_and_the_pool_recovers(worker_pool):
    good = EpisodeRequest("restock-horizontal", 1, max_steps=8)
    with pytest.raises(SimPoolError, match=r"task='restock-back' seed=-1 failed"):
        worker_pool.run([good, EpisodeRequest("restock-back", -1, max_steps=8)], zero_policy)  # reset rejects it
    with pytest.raises(KeyError, match="unknown task 'fold-laundry'"):
        worker_pool.run([good, EpisodeRequest("fold-laundry", 1)], zero_policy)
    with pytest.raises(ValueError, match=r"shape \(2, chunk, 5\)"):
        worker_pool.run([good, good], lambda obs, _: np.zeros((len(obs), ACTION_DIM)))
    assert worker_pool.run([good], zero_policy)[0].num_steps == 8  # aborted calls leave nothing behind


def test_a_dead_worker_fails_the_call_instead_of_hanging():
    with SimPool(2, reply_timeout_s=120) as pool:

        def killing_policy(obs, tasks):
            os.kill(pool._workers[1].process.pid, signal.SIGKILL)  # a worker crashes
            return zero_policy(obs, tasks)

        requests = [EpisodeRequest("restock-horizontal", seed, max_steps=12) for seed in (1, 2)]
        with pytest.raises(SimPoolError, match="worker 1 .* (died|is gone)"):
            pool.run(requests, killing_policy)
        with pytest.raises(SimPoolError, match="closed"):
            pool.run(requests, zero_policy)

from __future__ import annotations

import numpy as np
import pytest

from lwd_core.config import AlgoConfig
from lwd_core.data.nstep import (
    NStepSchedule,
    action_chunks,
    build_transitions,
    discounted_return,
    nstep_targets,
    returns_to_go,
)

G = 0.9


def test_hand_made_chain_with_terminal():
    # Steps 0..4; success (terminal) at step 3; step 4 never happens in practice but guards the cut.
    rewards = np.array([-1.0, -1.0, -1.0, 0.0, -1.0])
    terminals = np.array([False, False, False, True, False])
    reward_sum, discount, boot = nstep_targets(rewards, terminals, G, window=3)
    np.testing.assert_allclose(reward_sum[0], -1 - G - G**2)
    assert discount[0] == pytest.approx(G**3) and boot[0] == 2  # bootstrap from next_obs[2] = s_3
    np.testing.assert_allclose(reward_sum[1], -1 - G)  # r1 + g r2 + g^2 * 0, stops at terminal
    assert discount[1] == 0.0
    np.testing.assert_allclose(reward_sum[3], 0.0)
    assert discount[3] == 0.0
    # Window reaching past the end without a terminal: bootstrap from the final observation.
    assert reward_sum[4] == pytest.approx(-1.0) and discount[4] == pytest.approx(G) and boot[4] == 4


def test_truncated_episode_bootstraps_with_steps_taken():
    rewards = -np.ones(4)
    terminals = np.zeros(4, bool)
    reward_sum, discount, boot = nstep_targets(rewards, terminals, G, window=10)
    np.testing.assert_allclose(reward_sum, [-(1 + G + G**2 + G**3), -(1 + G + G**2), -(1 + G), -1.0], rtol=1e-6)
    np.testing.assert_allclose(discount, [G**4, G**3, G**2, G], rtol=1e-6)
    assert boot.tolist() == [3, 3, 3, 3]


def test_one_step_is_plain_td():
    rewards = np.array([-1.0, -1.0, 0.0])
    terminals = np.array([False, False, True])
    reward_sum, discount, boot = nstep_targets(rewards, terminals, G, window=1)
    np.testing.assert_allclose(reward_sum, rewards)
    np.testing.assert_allclose(discount, [G, G, 0.0])
    assert boot.tolist() == [0, 1, 2]


def test_returns_to_go():
    np.testing.assert_allclose(returns_to_go(np.array([-1.0, -1.0, 0.0]), G), [-1 - G, -1, 0.0])


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
def test_discounted_return_is_the_first_return_to_go(gamma):
    rewards = np.where(np.random.default_rng(0).random(1000) < 0.9, -1.0, 0.0)
    assert discounted_return(rewards, gamma) == pytest.approx(float(returns_to_go(rewards, gamma)[0]), rel=1e-6)
    assert discounted_return(np.zeros(0), gamma) == 0.0


def test_chunks_pad_with_last_action():
    actions = np.arange(8, dtype=np.float32).reshape(4, 2)
    chunks, valid = action_chunks(actions, 3)
    assert chunks.shape == (4, 6)
    np.testing.assert_array_equal(chunks[0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(chunks[3], [6, 7, 6, 7, 6, 7])
    assert valid.tolist() == [3, 3, 2, 1]


def test_schedule_by_horizon_and_stage():
    schedule = NStepSchedule.from_config(AlgoConfig())
    assert schedule.n_for(1000, "offline") == 10
    assert schedule.n_for(200, "offline") == 3
    assert schedule.n_for(1000, "online") == 1
    with pytest.raises(ValueError):
        schedule.n_for(10, "warmup")


def test_build_transitions_uses_chunked_window(episode_factory):
    episode = episode_factory(steps=12, obs_dim=4, action_dim=2)
    out = build_transitions([episode], [episode.rewards], chunk=2, gamma=G, n_for_task={episode.task_id: 3},
                            task_index={episode.task_id: 0}, tokens_for_task={episode.task_id: np.ones(16, np.int32)})
    assert out["obs"].shape == (12, 4) and out["actions"].shape == (12, 4) and out["tokens"].shape == (12, 16)
    expected_sum, expected_disc, boot = nstep_targets(episode.rewards.astype(float), episode.terminals, G, 6)
    np.testing.assert_allclose(out["reward"], expected_sum)
    np.testing.assert_allclose(out["discount"], expected_disc)
    np.testing.assert_array_equal(out["next_obs"], episode.next_observations[boot])
    # A chunk counts as intervention if any of its steps was taken over.
    assert out["intervention"][2] and out["intervention"][3] and not out["intervention"][0]

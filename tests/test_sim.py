"""The simulated suite on the real OGBench/MuJoCo simulator."""

from __future__ import annotations

import numpy as np
import pytest

from lwd_core.data.episode import Episode
from lwd_core.sim.rollout import MonotonicClock, make_env, run_episode
from lwd_core.sim.teleop import InterventionMonitor, Teleoperator
from lwd_core.suite import (
    MAX_SCENE_OBS,
    OBS_DIM,
    SCENES,
    TASK_SUITE,
    get_task,
    pad_observation,
    select_tasks,
)


def test_suite_shape():
    assert len(TASK_SUITE) == 8
    assert sum(t.group == "short" for t in TASK_SUITE) == 4 and sum(t.group == "long" for t in TASK_SUITE) == 4
    assert len({t.instruction for t in TASK_SUITE}) == 8
    assert all(t.horizon >= 500 for t in TASK_SUITE if t.group == "long")
    assert select_tasks([]) == TASK_SUITE and select_tasks(["swap-pair"])[0].scene == "cube-double"
    with pytest.raises(KeyError, match="unknown task"):
        get_task("fold-laundry")


def test_padding_marks_the_scene():
    task = get_task("restock-horizontal")
    padded = pad_observation(np.arange(28, dtype=np.float32), task)
    assert padded.shape == (OBS_DIM,)
    np.testing.assert_array_equal(padded[:28], np.arange(28))
    assert (padded[28:MAX_SCENE_OBS] == 0).all()
    assert padded[MAX_SCENE_OBS + SCENES.index("cube-single")] == 1.0 and padded[MAX_SCENE_OBS:].sum() == 1.0
    with pytest.raises(ValueError, match="shape"):
        pad_observation(np.zeros(37), task)


@pytest.mark.parametrize("task", TASK_SUITE, ids=lambda t: t.task_id)
def test_oracle_demonstration_succeeds_on_every_task(task):
    env = make_env(task)
    for seed in (11, 12, 13):
        episode = run_episode(env, task, robot_id="robot-0", policy_version="oracle", source="demo", seed=seed,
                              teleop=Teleoperator(env, np.random.default_rng(seed)))
        assert episode.outcome == "success", (task.task_id, seed)
    assert episode.terminals[-1] and episode.rewards[-1] == 0.0 and (episode.rewards[:-1] == -1.0).all()
    assert episode.observations.shape[1] == OBS_DIM and np.isfinite(episode.observations).all()
    assert (np.diff(episode.timestamps_us) > 0).all() and not episode.interventions.any()
    np.testing.assert_array_equal(episode.next_observations[:-1], episode.observations[1:])
    assert Episode.from_parquet_bytes(episode.to_parquet_bytes()).episode_id == episode.episode_id


def test_play_data_is_noisy_but_valid():
    task = get_task("restock-horizontal")
    env = make_env(task)
    demo = run_episode(env, task, robot_id="r", policy_version="oracle", source="demo", seed=3,
                       teleop=Teleoperator(env, np.random.default_rng(0)), max_steps=30)
    play = run_episode(env, task, robot_id="r", policy_version="oracle", source="play", seed=3,
                       teleop=Teleoperator(env, np.random.default_rng(0), noise=0.2, smoothing=0.5, random_prob=0.1),
                       max_steps=30)
    assert play.source == "play" and play.num_steps == 30
    assert np.abs(play.actions - demo.actions[: play.num_steps]).mean() > 0.05
    assert (np.abs(play.actions) <= 1.0).all()


def test_stalling_policy_gets_interventions_and_the_human_finishes():
    task = get_task("restock-horizontal")
    env = make_env(task)
    calls = []

    def frozen_policy(obs, _task):
        calls.append(obs)
        return np.zeros((4, 5), np.float32)  # never moves: a stall

    episode = run_episode(env, task, robot_id="robot-1", policy_version="v0", source="rollout", seed=5,
                          teleop=Teleoperator(env, np.random.default_rng(0)), policy=frozen_policy,
                          monitor=InterventionMonitor(stall_window=20, takeover_steps=200))
    assert episode.interventions.any() and not episode.interventions[:20].any()
    assert episode.outcome == "success"  # the takeover completed the task
    policy_steps = ~episode.interventions
    assert set(episode.chunk_pos[policy_steps].tolist()) <= {0, 1, 2, 3}
    assert episode.chunk_pos[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len(calls) >= 5


def test_monitor_stall_drift_and_handback():
    monitor = InterventionMonitor(stall_window=5, min_progress=0.01, drift_margin=0.1, takeover_steps=3)
    assert not any(monitor.observe(0, 1.0 - 0.05 * i) for i in range(10))  # steady progress
    flat = [monitor.observe(0, 0.55) for _ in range(5)]
    assert flat == [False, False, False, False, True]  # no progress over a full window: stalled
    assert monitor.active
    # The human holds control for takeover_steps steps in all (the trigger step counts), then hands back.
    assert [monitor.observe(0, 0.5) for _ in range(3)] == [True, True, False]
    monitor.reset()
    monitor.observe(1, 0.3)
    assert monitor.observe(1, 0.45) is True  # drifted 0.15 past the best
    assert monitor.observe(2, 0.45) is False  # a new subgoal ends the takeover


def test_clock_is_strictly_monotone_even_if_wall_clock_steps_back():
    readings = iter([100, 50, 50, 200])
    clock = MonotonicClock(lambda: next(readings))
    assert [clock() for _ in range(4)] == [100, 101, 102, 200]

"""The simulated suite on the real OGBench/MuJoCo simulator."""

from __future__ import annotations

import numpy as np
import pytest

from lwd_core.config import HumanConfig
from lwd_core.data.episode import Episode
from lwd_core.data.recorder import MonotonicClock
from lwd_core.sim.environment import make_env
from lwd_core.sim.rollout import run_episode
from lwd_core.sim.teleop import (
    InterventionMonitor,
    RolloutHuman,
    Teleoperator,
    plan_subgoal,
    seen_scene,
)
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

    oracle = HumanConfig(kind="oracle", stall_s=1.0, takeover_s=10.0)  # 20-step window, 200-step takeover
    episode = run_episode(env, task, robot_id="robot-1", policy_version="v0", source="rollout", seed=5,
                          policy=frozen_policy, human=RolloutHuman(env, task, oracle, seed=0))
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


def test_monitor_reaction_delay_and_budget():
    monitor = InterventionMonitor(stall_window=3, min_progress=0.01, takeover_steps=5, reaction_steps=2,
                                  budget_steps=3)
    seen = [monitor.observe(0, 0.5) for _ in range(10)]
    # Stalled at the 4th look; two looks to react (the robot acting), then control until the budget of 3
    # steps is spent, and never again in this episode however stuck the robot is.
    assert seen == [False] * 3 + [False, False, True, True, True] + [False] * 2
    assert monitor.budget_left == 0
    assert not any(monitor.observe(0, 0.5) for _ in range(20))


def test_the_human_judges_progress_from_the_observation_not_the_simulator():
    for task in (get_task("restock-horizontal"), get_task("swap-pair"), get_task("unstack-tower")):
        env = make_env(task)
        ob, _ = env.reset(seed=3)
        u = env.unwrapped
        scene = seen_scene(env, ob)
        truth = np.array([u._data.joint(f"object_joint_{i}").qpos[:3] for i in range(u._num_cubes)])
        np.testing.assert_allclose(scene.blocks, truth, atol=1e-9)
        np.testing.assert_allclose(scene.effector, u._data.site_xpos[u._pinch_site_id], atol=1e-9)
        # Poking the simulator's state without a new observation changes nothing the person sees.
        u._data.joint("object_joint_0").qpos[:3] += 0.1
        assert np.array_equal(seen_scene(env, ob).blocks, scene.blocks)
        noisy = seen_scene(env, ob, np.random.default_rng(0), noise_m=0.01)
        assert 0 < np.abs(noisy.blocks - scene.blocks).max() < 0.05
        env.close()


def test_a_realistic_human_reacts_late_within_budget_and_corrects_imperfectly():
    task = get_task("restock-horizontal")
    env = make_env(task)

    def frozen_policy(obs, _task):
        return np.zeros((4, 5), np.float32)

    def rollout(config):
        return run_episode(env, task, robot_id="robot-1", policy_version="v0", source="rollout", seed=5,
                           policy=frozen_policy, human=RolloutHuman(env, task, config, seed=0))

    oracle = rollout(HumanConfig(kind="oracle"))
    # 20 steps to react; 10% of each episode's time; exact eyes, so only the reaction moves the takeover.
    person = rollout(HumanConfig(reaction_s=1.0, budget_s_per_robot_hour=360.0, perception_noise_m=0.0))
    assert person.interventions.any()
    assert np.argmax(person.interventions) == np.argmax(oracle.interventions) + 20  # the reaction time
    assert person.interventions.sum() <= 0.1 * task.horizon < oracle.interventions.sum()
    assert oracle.outcome == "success" and person.outcome == "failure"  # out of budget before done
    # The oracle's unlimited, instant help is the realistic settings switched off.
    assert HumanConfig(kind="oracle", reaction_s=9.0).effective().reaction_s == 0.0
    env.close()


def test_a_wrong_subgoal_is_pursued_for_a_while_then_replanned():
    task = get_task("restock-horizontal")
    env = make_env(task)
    ob, info = env.reset(seed=1)
    operator = Teleoperator(env, np.random.default_rng(0), wrong_subgoal_prob=1.0, wrong_subgoal_steps=5)
    operator.reset(ob, info)
    right = plan_subgoal(seen_scene(env, ob))
    assert np.linalg.norm(operator._goal.position - right.position) > 0.01
    operator.wrong_subgoal_prob = 0.0
    for _ in range(5):  # the person notices after wrong_subgoal_steps and re-plans
        ob, _, _, _, info = env.step(operator.act(ob, info))
    assert np.allclose(operator._goal.position, right.position)
    env.close()


def test_clock_is_strictly_monotone_even_if_wall_clock_steps_back():
    readings = iter([100, 50, 50, 200])
    clock = MonotonicClock(lambda: next(readings))
    assert [clock() for _ in range(4)] == [100, 101, 102, 200]

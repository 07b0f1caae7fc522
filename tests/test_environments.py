"""Any Gymnasium environment as a fleet robot (lwd_core/sim/environment.py): the adapter's checks and
conventions, and a whole flywheel round on an environment the eight tasks do not use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from conftest import last_json, lwd

from flows.fleet import fleet_supervisor
from lwd_core.config import HumanConfig, LWDConfig
from lwd_core.data.layout import buffer_prefix, get_episode
from lwd_core.data.lerobot import write_dataset
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.sim.dataset import OfflineMix, plan_allocations
from lwd_core.sim.environment import RobotEnv, make_env
from lwd_core.sim.rollout import run_episode
from lwd_core.sim.teleop import RolloutHuman
from lwd_core.store import open_store
from lwd_core.suite import (
    ACTION_DIM,
    MAX_SCENE_OBS,
    OBS_DIM,
    SCENES,
    TASK_INDEX,
    TASK_SUITE,
    Environment,
    get_task,
    select_tasks,
)

ROOT = Path(__file__).resolve().parent.parent
SCENE_TINY = ROOT / "configs" / "scene-tiny.yaml"
SCENE_TASK = get_task("open-drawer-window")


class LabArm(gymnasium.Env):
    """A lab's own environment: its own action bounds and its own name for success."""

    def __init__(self, obs_dim: int = 7, action_low: float = -0.5, action_high: float = 2.0):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        self.action_space = gymnasium.spaces.Box(action_low, action_high, (ACTION_DIM,), np.float32)
        self.received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape), {"is_success": False}

    def step(self, action):
        self.received.append(np.asarray(action))
        done = len(self.received) >= 3
        return np.ones(self.observation_space.shape), -5.0, done, False, {"is_success": done}


LAB_ARM = Environment("lab-arm", 7, "LabArm-v0", registered_by="tests", success_key="is_success")


def test_an_environment_speaks_the_fleets_conventions():
    env = RobotEnv(LabArm(), LAB_ARM)
    _, info = env.reset(seed=0)
    assert info["success"] is False and env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
    # The policy's [-1, 1] lands on the environment's own bounds; its own success key becomes "success".
    *_, info = env.step(np.array([-1.0, 0.0, 1.0, 3.0, -7.0]))
    np.testing.assert_allclose(env.unwrapped.received[-1], [-0.5, 0.75, 2.0, 2.0, -0.5])
    env.step(np.zeros(ACTION_DIM))
    *_, terminated, _, info = env.step(np.zeros(ACTION_DIM))
    assert terminated and info["success"] is True


@pytest.mark.parametrize(("arm", "reason"), [
    (LabArm(obs_dim=9), "flat Box of 7"),
    (LabArm(action_low=-np.inf), "action bounds must be finite"),
])
def test_an_environment_that_breaks_the_contract_is_refused_when_built(arm, reason):
    with pytest.raises(ValueError, match=reason):
        RobotEnv(arm, LAB_ARM)


def test_an_environment_larger_than_the_policys_state_slots_is_refused():
    wide = Environment("wide-arm", MAX_SCENE_OBS + 1, "Wide-v0")
    with pytest.raises(ValueError, match="do not fit"):
        RobotEnv(LabArm(obs_dim=MAX_SCENE_OBS + 1), wide)


def test_the_scene_environment_runs_in_the_shared_layout_with_the_suites_reward():
    assert SCENE_TASK not in TASK_SUITE and select_tasks([]) == TASK_SUITE  # beyond the eight, by name only
    assert TASK_INDEX["open-drawer-window"] == len(TASK_SUITE)  # the eight keep their indices
    env = make_env(SCENE_TASK)
    chunks = np.random.default_rng(0).uniform(-1, 1, size=(20, 5, ACTION_DIM))
    calls = iter(chunks)
    episode = run_episode(env, SCENE_TASK, robot_id="robot-00", policy_version="v", source="rollout", seed=3,
                          policy=lambda obs, task: next(calls), max_steps=40)
    assert episode.observations.shape == (40, OBS_DIM)
    assert (episode.observations[:, MAX_SCENE_OBS + SCENES.index("scene")] == 1.0).all()
    assert (episode.observations[:, 40:MAX_SCENE_OBS] == 0).all()  # 40 values of its own, then padding
    assert (episode.rewards == -1.0).all() and episode.outcome == "failure"  # the environment's -2 is not used
    # The same seed and actions give the same episode (the MuJoCo warm start is forgotten here too).
    calls = iter(chunks)
    again = run_episode(env, SCENE_TASK, robot_id="robot-00", policy_version="v", source="rollout", seed=3,
                        policy=lambda obs, task: next(calls), max_steps=40)
    np.testing.assert_array_equal(again.observations, episode.observations)


def test_a_task_without_a_scripted_person_needs_its_data_imported_and_an_unwatched_fleet(tmp_path):
    with pytest.raises(ValueError, match="lwd import lerobot"):
        plan_allocations([SCENE_TASK], 1000, OfflineMix())
    with pytest.raises(ValueError, match="set fleet.human to null"):
        RolloutHuman(make_env(SCENE_TASK), SCENE_TASK, HumanConfig(), seed=0)
    # The flywheel learns it before any robot starts, not from the robots' logs.
    watched = LWDConfig(data_dir=str(tmp_path), fleet={"tasks": [SCENE_TASK.task_id]})
    with pytest.raises(ValueError, match="set fleet.human to null"):
        fleet_supervisor(watched)
    ids, _ = fleet_supervisor(watched.model_copy(update={"fleet": watched.fleet.model_copy(update={"human": None})}))
    assert len(ids) == watched.fleet.robots


def test_a_scene_environment_completes_a_flywheel_round(prefect_server, tmp_path):
    # A lab's dataset of demonstrations on the new environment, in LeRobot's format (random actions here:
    # the round's plumbing is under test, not learning).
    env, rng = make_env(SCENE_TASK), np.random.default_rng(7)
    played = [run_episode(env, SCENE_TASK, robot_id="lab-arm", policy_version="play", source="rollout", seed=seed,
                          policy=lambda obs, task: rng.uniform(-1, 1, size=(5, ACTION_DIM)), max_steps=50)
              for seed in range(4)]
    write_dataset(played, tmp_path / "lerobot", fps=20)

    data = tmp_path / "data"
    env_vars = {**os.environ, "LWD_DATA_DIR": str(data), "LWD_CONFIG": str(SCENE_TINY),
                "PREFECT_API_URL": prefect_server["url"], "PREFECT_HOME": prefect_server["home"],
                "PREFECT_CLIENT_MAX_RETRIES": "15"}
    imported = lwd(env_vars, "import", "lerobot", str(tmp_path / "lerobot"))
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]
    assert last_json(imported.stdout)["accepted"] == 4

    result = lwd(env_vars, "flywheel", "--rounds", "1", "--auto-approve", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rounds = last_json(result.stdout)["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and all(r["gate"] == "pass" and r["approved"] for r in rounds)

    store = open_store(LWDConfig(data_dir=str(data), fleet={"tasks": [SCENE_TASK.task_id], "human": None}))
    online = [get_episode(store, key) for key in store.list(buffer_prefix("online"), ".parquet")]
    assert len(online) >= 2 and {episode.task_id for episode in online} == {"open-drawer-window"}
    assert all(episode.observations.shape[1] == OBS_DIM and not episode.interventions.any() for episode in online)
    assert Coordinator(store).desired()["stable"]["version"] == "policy-v2"

    # A robot of the lab's own, in a process of its own (docs/bring-your-own-robot.md, step 6): it takes
    # the release signed for it, acts with its portable policy, and ingestion accepts its episodes.
    robot = subprocess.run([sys.executable, str(ROOT / "infra" / "robot" / "sim_robot.py"), "--robot", "robot-01",
                            "--task", SCENE_TASK.task_id, "--store", store.url, "--spool", str(tmp_path / "robot-spool"),
                            "--keys", str(data / "keys"), "--episodes", "2", "--max-steps", "20"],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert robot.returncode == 0, robot.stderr[-3000:]
    ingested = lwd(env_vars, "ingest")
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    online = [get_episode(store, key) for key in store.list(buffer_prefix("online"), ".parquet")]
    assert sum(e.robot_id == "robot-01" and e.policy_version == "policy-v2" and e.num_steps == 20 for e in online) >= 2

"""The learner process of a training run, without Prefect or MLflow: process 0 commits, followers do not."""

from __future__ import annotations

import pytest
from conftest import make_episode

from lwd_core.algo import training
from lwd_core.algo.learner_process import LearnerProcess
from lwd_core.config import AlgoConfig
from lwd_core.data.layout import (
    CHECKPOINT_LATEST_KEY,
    buffer_key,
    put_episode,
    snapshot_key,
)
from lwd_core.suite import ACTION_DIM, OBS_DIM, TASK_SUITE

SNAPSHOT = "snap-process"


@pytest.fixture
def snapshot_store(local_store):
    task = TASK_SUITE[0].task_id
    entries = []
    for i in range(3):
        episode = make_episode(steps=12, obs_dim=OBS_DIM, action_dim=ACTION_DIM, task_id=task, seed=500 + i,
                               source="demo")
        key = buffer_key("offline", task, episode.episode_id)
        put_episode(local_store, key, episode)
        entries.append({"key": key, "episode_id": episode.episode_id, "kind": "offline", "steps": episode.num_steps})
    local_store.put_json(snapshot_key(SNAPSHOT), {"snapshot_id": SNAPSHOT, "episodes": entries})
    training._LOADED.clear()  # another test's buffers are not this process's
    return local_store


def tiny_algo() -> AlgoConfig:
    return AlgoConfig(hidden_dims=[16, 16], critic_heads=2, flow_steps=2, value_size=11, batch_size=8,
                      pretrain_steps=2, warmup_steps=2, offline_steps=4, checkpoint_every=4)


def test_a_follower_trains_but_commits_nothing(snapshot_store):
    follower = LearnerProcess(snapshot_store, SNAPSHOT, tiny_algo(), "lwd", True, 0, process_index=1)
    assert not follower.leads
    follower.follow()
    assert snapshot_store.list("checkpoints") == [] and snapshot_store.list("replay-segments") == []
    with pytest.raises(RuntimeError, match="only process 0 commits"):
        follower.lead(follower.plan())


def test_the_leader_commits_moves_the_pointer_and_reports_progress(snapshot_store):
    leader = LearnerProcess(snapshot_store, SNAPSHOT, tiny_algo(), "lwd", True, 0)
    plan = leader.plan()
    assert plan.stage == "offline" and plan.steps == 2 + 2 + 4
    logged, done = [], []
    result = leader.lead(plan, on_log=lambda step, metrics: logged.append(step), on_progress=done.append)
    assert int(result.state.step) == plan.target_step and result.seconds > 0
    assert snapshot_store.get_json(CHECKPOINT_LATEST_KEY) == {"checkpoint": result.checkpoint}
    assert logged and done[-1] == plan.steps and done == sorted(done)
    assert snapshot_store.list("replay-segments"), "the leader keeps the built transitions for the next round"

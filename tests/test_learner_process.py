"""The learner process of a training run, without Prefect or MLflow: process 0 commits, followers do not."""

from __future__ import annotations

import pytest
from conftest import make_episode

from lwd_core.algo.learner_process import LearnerProcess
from lwd_core.algo.trainer import plan_training, run_training
from lwd_core.algo.transition_cache import TransitionCache
from lwd_core.config import AlgoConfig
from lwd_core.data.labels import label_buffer
from lwd_core.data.layout import CHECKPOINT_LATEST_KEY, PRETRAINED_KEY, buffer_key, put_episode
from lwd_core.data.nstep import NStepSchedule
from lwd_core.data.snapshot import build_snapshot
from lwd_core.store import StoreError
from lwd_core.suite import ACTION_DIM, OBS_DIM, TASK_SUITE


def tiny_algo() -> AlgoConfig:
    return AlgoConfig(hidden_dims=[16, 16], flow_steps=2, batch_size=8, pretrain_steps=2, warmup_steps=2,
                      offline_steps=4, checkpoint_every=4, agents={"lwd": {"critic_heads": 2, "value_size": 11}})


@pytest.fixture
def snapshot_store(local_store):
    task = TASK_SUITE[0].task_id
    for i in range(3):
        episode = make_episode(steps=12, obs_dim=OBS_DIM, action_dim=ACTION_DIM, task_id=task, seed=500 + i,
                               source="demo")
        put_episode(local_store, buffer_key("offline", task, episode.episode_id), episode)
    label_buffer(local_store, "offline", tiny_algo().discount, NStepSchedule.from_config(tiny_algo()))
    build_snapshot(local_store)
    return local_store


def test_a_follower_trains_but_commits_nothing(snapshot_store):
    follower = LearnerProcess(snapshot_store, "", tiny_algo(), "lwd", True, 0, process_index=1)
    assert not follower.leads
    follower.follow()
    assert snapshot_store.list("checkpoints") == [] and snapshot_store.list("replay-segments") == []
    with pytest.raises(RuntimeError, match="only process 0 commits"):
        follower.lead(follower.plan())


def test_the_leader_commits_moves_the_pointer_and_reports_progress(snapshot_store):
    leader = LearnerProcess(snapshot_store, "", tiny_algo(), "lwd", True, 0)
    plan = leader.plan()
    assert plan.kind == "offline" and [(s.phase, s.steps) for s in plan.stages] == [
        ("pretrain", 2), ("warmup", 2), ("train", 4)]
    logged, done = [], []
    result = leader.lead(plan, on_log=lambda step, metrics: logged.append(step), on_progress=done.append)
    assert int(result.state.step) == plan.target_step and result.seconds > 0
    assert snapshot_store.get_json(CHECKPOINT_LATEST_KEY) == {"checkpoint": result.checkpoint}
    assert logged and done[-1] == plan.steps and done == sorted(done)
    assert snapshot_store.list("replay-segments"), "the leader keeps the built transitions for the next round"
    # The pretrain stage's end is the store's pretrained policy: the next offline run starts from it.
    pretrained = snapshot_store.get_json(PRETRAINED_KEY)["checkpoint"]
    again = LearnerProcess(snapshot_store, "", tiny_algo(), "bc", False, 0).plan()
    assert again.parent == pretrained and again.start_step == 2 and [s.phase for s in again.stages] == ["train"]


def test_two_training_runs_cannot_both_move_the_latest_checkpoint(snapshot_store):
    """Both runs start from the same pointer; the first to finish moves it, the second is refused."""
    algo = tiny_algo()
    snapshot = build_snapshot(snapshot_store)
    first = plan_training(snapshot_store, snapshot, algo, "bc", resume=False, name="first")
    second = plan_training(snapshot_store, snapshot, algo, "bc", resume=False, name="second")
    buffers = TransitionCache().load(snapshot_store, snapshot, algo, "offline")
    winner = run_training(snapshot_store, first, algo, buffers)
    with pytest.raises(StoreError, match="another training run moved"):
        run_training(snapshot_store, second, algo, buffers)
    assert snapshot_store.get_json(CHECKPOINT_LATEST_KEY) == {"checkpoint": winner.checkpoint}

"""Training sees the rewards the label stage wrote, by the suite's reward rule: a change of the rule
changes the learner's TD targets, and the reward column a robot wrote changes nothing."""

from __future__ import annotations

import numpy as np
from conftest import make_episode

from lwd_core import suite
from lwd_core.algo.learner import BATCH_KEYS, Learner, LearnerSpec
from lwd_core.algo.transition_cache import TransitionCache
from lwd_core.config import AlgoConfig
from lwd_core.data.labels import label_buffer
from lwd_core.data.layout import LABELS_PREFIX, buffer_key, put_episode
from lwd_core.data.nstep import NStepSchedule
from lwd_core.data.snapshot import build_snapshot
from lwd_core.suite import ACTION_DIM, OBS_DIM, TASK_SUITE

ALGO = AlgoConfig(nstep_offline_short=1, nstep_offline_long=1)


def _transitions(store):
    label_buffer(store, "offline", ALGO.discount, NStepSchedule.from_config(ALGO))
    snapshot = build_snapshot(store)
    return snapshot, TransitionCache().load(store, snapshot, ALGO, "offline").offline


def _td_target_mean(transitions) -> float:
    tiny = ALGO.model_copy(update={"hidden_dims": [16], "flow_steps": 2}).with_agent("lwd", critic_heads=2,
                                                                                    value_size=11)
    learner = Learner(LearnerSpec.from_config(tiny, OBS_DIM, ACTION_DIM, "lwd"))
    batch = {key: transitions[key][:32] for key in BATCH_KEYS}
    _, metrics = learner.update(learner.init(0), batch, "warmup")
    return float(metrics["td_target_mean"])


def test_the_label_stage_is_the_source_of_training_rewards(local_store, monkeypatch):
    task = TASK_SUITE[0].task_id
    for i in range(4):
        # What a robot wrote in its reward column (+7 a step here) is not what training uses.
        written = {"rewards": np.full(20, 7.0, np.float32)} if i == 1 else {}
        episode = make_episode(steps=20, obs_dim=OBS_DIM, action_dim=ACTION_DIM, task_id=task, seed=900 + i,
                               success=i % 2 == 0, source="demo" if i % 2 == 0 else "rollout", **written)
        put_episode(local_store, buffer_key("offline", task, episode.episode_id), episode)
    before_snapshot, before = _transitions(local_store)
    assert np.all(before["reward"] <= 0) and np.all(before["mc_return"] <= 0), "the robot's +7 rewards were not used"

    # A new reward rule (+1 at success, 0 otherwise), the labels written again by the label stage.
    monkeypatch.setattr(suite, "sparse_reward", lambda success: 1.0 if success else 0.0)
    for key in local_store.list(LABELS_PREFIX, suffix=".parquet"):
        local_store.delete(key)
    after_snapshot, after = _transitions(local_store)

    assert after_snapshot.snapshot_id != before_snapshot.snapshot_id, "relabelled data is a new snapshot"
    np.testing.assert_array_equal(after["obs"], before["obs"])
    shift = after["reward"][:32] - before["reward"][:32]
    assert np.all(shift > 0)
    # Same state, same rows, same bootstrap: the targets move by exactly the rewards' change.
    np.testing.assert_allclose(_td_target_mean(after) - _td_target_mean(before), shift.mean(), rtol=1e-4)


def test_a_label_table_or_buffer_file_altered_in_the_store_is_refused(local_store):
    """Someone with write access to the store rewrites a label table (a failure's rewards raised to a
    success's) or swaps a buffer file: training refuses it, naming what was altered."""
    import io

    import polars as pl
    import pytest

    from lwd_core.store import StoreError

    task = TASK_SUITE[0].task_id
    episodes = [make_episode(steps=20, obs_dim=OBS_DIM, action_dim=ACTION_DIM, task_id=task, seed=950 + i,
                             success=i == 0, source="demo" if i == 0 else "rollout") for i in range(2)]
    keys = [buffer_key("offline", task, episode.episode_id) for episode in episodes]
    for key, episode in zip(keys, episodes, strict=True):
        put_episode(local_store, key, episode)
    label_buffer(local_store, "offline", ALGO.discount, NStepSchedule.from_config(ALGO))
    snapshot = build_snapshot(local_store)
    (table,) = local_store.list(LABELS_PREFIX, suffix=".parquet")
    genuine = local_store.get(table)

    frame = pl.read_parquet(io.BytesIO(genuine))
    forged = frame.with_columns(pl.col("rewards").list.eval(pl.lit(0.0, pl.Float32)))  # never failed
    sink = io.BytesIO()
    forged.write_parquet(sink)
    local_store.put_atomic(table, sink.getvalue())
    with pytest.raises(StoreError, match="altered in the store"):
        TransitionCache().load(local_store, snapshot, ALGO, "offline")

    local_store.put_atomic(table, genuine)
    put_episode(local_store, keys[1], episodes[0])  # another (valid, signed-once) episode under its key
    with pytest.raises(StoreError, match="replaced in the store"):
        TransitionCache().load(local_store, snapshot, ALGO, "offline")
    put_episode(local_store, keys[1], episodes[1])
    assert TransitionCache().load(local_store, snapshot, ALGO, "offline").offline is not None

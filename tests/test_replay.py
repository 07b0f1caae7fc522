from __future__ import annotations

import numpy as np
import pytest

from lwd_core.algo.replay import MixedReplay


def buffer(tasks: np.ndarray, tag: float) -> dict[str, np.ndarray]:
    return {"obs": np.full((len(tasks), 2), tag, np.float32), "task": tasks.astype(np.int32)}


def test_online_ratio_is_exact():
    replay = MixedReplay(buffer(np.zeros(100), 0.0), buffer(np.zeros(50), 1.0), online_ratio=0.25, seed=0)
    batch = replay.sample(64)
    assert batch["from_online"].sum() == 16
    assert (batch["obs"][batch["from_online"]] == 1.0).all() and (batch["obs"][~batch["from_online"]] == 0.0).all()


def test_empty_online_buffer_means_all_offline():
    replay = MixedReplay(buffer(np.zeros(10), 0.0), None, online_ratio=0.9)
    assert not replay.sample(32)["from_online"].any()
    empty = MixedReplay(buffer(np.zeros(10), 0.0), buffer(np.zeros(0), 1.0), online_ratio=0.9)
    assert empty.sizes["online"] == 0 and not empty.sample(32)["from_online"].any()


def test_tasks_balanced_despite_unequal_volume():
    tasks = np.concatenate([np.zeros(1000), np.ones(100), np.full(10, 2)])
    replay = MixedReplay(buffer(tasks, 0.0), online_ratio=0.0, seed=1)
    counts = np.bincount(replay.sample(30_000)["task"], minlength=3)
    assert np.all(np.abs(counts / 30_000 - 1 / 3) < 0.02), counts
    unbalanced = MixedReplay(buffer(tasks, 0.0), online_ratio=0.0, balance_tasks=False, seed=1)
    counts = np.bincount(unbalanced.sample(30_000)["task"], minlength=3)
    assert counts[0] / 30_000 > 0.85


def test_resume_draws_the_same_batches():
    replay = MixedReplay(buffer(np.arange(50) % 3, 0.0), buffer(np.arange(20) % 2, 1.0), seed=3)
    replay.sample(8)
    state = replay.state_dict()
    expected = [replay.sample(16)["task"] for _ in range(3)]
    resumed = MixedReplay(buffer(np.arange(50) % 3, 0.0), buffer(np.arange(20) % 2, 1.0), seed=99)
    resumed.load_state_dict(state)
    for want in expected:
        np.testing.assert_array_equal(resumed.sample(16)["task"], want)
    assert resumed.samples_drawn == 8 + 48


def test_invalid_inputs():
    with pytest.raises(ValueError, match="online_ratio"):
        MixedReplay(buffer(np.zeros(3), 0.0), online_ratio=1.5)
    with pytest.raises(ValueError, match="offline buffer is empty"):
        MixedReplay(buffer(np.zeros(0), 0.0))

"""The multi-device learner path on CPU: 4 forced host devices, data-parallel over a mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from test_learner import tiny_spec, OBS, ACT
    from conftest import make_episode
    from lwd_core.algo import distributed
    from lwd_core.algo.learner import Learner
    from lwd_core.data.nstep import build_transitions
    from lwd_core.algo.replay import MixedReplay
    from lwd_core.algo.text import tokenize
    from lwd_core.algo.update_loop import run_updates

    assert jax.device_count() == 4, jax.devices()
    episodes = [make_episode(steps=20, obs_dim=OBS, action_dim=ACT, task_id="t", seed=i) for i in range(6)]
    transitions = build_transitions(episodes, [e.rewards for e in episodes], chunk=2, gamma=0.95, n_for_task=2,
                                    task_index={"t": 0}, tokens_for_task={"t": tokenize("do t")})
    learner = Learner(tiny_spec())
    mesh = distributed.data_mesh()
    batch = MixedReplay(transitions, seed=0).sample(64)
    sharded = distributed.shard_batch({k: batch[k] for k in ("obs", "actions")}, mesh)
    layout = sorted(len(s.data) for s in sharded["obs"].addressable_shards)
    multi = run_updates(learner, learner.init(0), MixedReplay(transitions, seed=0), 20, 64, mesh=mesh)
    single = run_updates(learner, learner.init(0), MixedReplay(transitions, seed=0), 20, 64)
    leaves = lambda s: jax.tree_util.tree_leaves(s.state.params)
    gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(leaves(multi), leaves(single)))
    print(json.dumps({"layout": layout, "gap": gap, "loss_multi": multi.history[-1]["critic_loss"],
                      "loss_single": single.history[-1]["critic_loss"]}))
""")


def test_data_parallel_update_matches_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["layout"] == [16, 16, 16, 16], "each device holds a quarter of the batch"
    # Same batches, same math: only the all-reduce's float summation order differs.
    assert out["gap"] < 1e-3, out
    assert abs(out["loss_multi"] - out["loss_single"]) < 1e-3 * max(1.0, abs(out["loss_single"]))

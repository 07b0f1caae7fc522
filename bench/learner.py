"""Learner throughput and peak memory at the reference network sizes; prints one JSON object.

Reference sizes (QAM on OGBench): 4x512 GELU+LayerNorm MLPs, 10 critic heads, batch 256, chunk 5,
10 flow steps. Usage: uv run python bench/learner.py [--method lwd] [--steps 50] [--obs-dim 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import jax
import numpy as np

from lwd_core.algo.agents import AGENTS
from lwd_core.algo.learner import Learner, LearnerSpec
from lwd_core.algo.text import MAX_TOKENS


def synthetic_batch(rng: np.random.Generator, spec: LearnerSpec, batch: int) -> dict[str, np.ndarray]:
    flat = spec.chunk * spec.action_dim
    return {
        "obs": rng.normal(size=(batch, spec.obs_dim)).astype(np.float32),
        "tokens": rng.integers(1, spec.vocab_size, size=(batch, MAX_TOKENS)).astype(np.int32),
        "actions": rng.uniform(-1, 1, size=(batch, flat)).astype(np.float32),
        "reward": -np.ones(batch, np.float32),
        "discount": np.full(batch, 0.99**5, np.float32),
        "next_obs": rng.normal(size=(batch, spec.obs_dim)).astype(np.float32),
        "mc_return": -rng.uniform(0, 100, size=batch).astype(np.float32),
        "condition": rng.integers(0, 3, size=batch).astype(np.int32),
        "demo": rng.uniform(size=batch) < 0.5,
        "intervention": rng.uniform(size=batch) < 0.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=tuple(AGENTS), default="lwd")
    parser.add_argument("--value-model", choices=("divl", "expectile"), default="divl")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=10)
    args = parser.parse_args()

    spec = LearnerSpec(
        obs_dim=args.obs_dim, action_dim=5, chunk=5, method=args.method, value_model=args.value_model,
        hidden_dims=(args.hidden,) * args.layers, critic_heads=args.heads, flow_steps=10,
    )
    learner = Learner(spec)
    state = learner.init(0)
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(rng, spec, args.batch) for _ in range(4)]

    start = time.perf_counter()
    state, _ = learner.update(state, batches[0])
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(args.steps):
        state, _ = learner.update(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start

    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    print(json.dumps({
        "bench": "learner",
        "method": args.method,
        "value_model": args.value_model,
        "device": f"{device.platform}:{device.device_kind}",
        "host": platform.node(),
        "batch": args.batch,
        "hidden": [args.hidden] * args.layers,
        "critic_heads": args.heads,
        "parameters": int(params),
        "compile_s": round(compile_s, 2),
        "steps": args.steps,
        "steps_per_s": round(args.steps / elapsed, 2),
        "peak_device_bytes": (stats or {}).get("peak_bytes_in_use"),
        "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()

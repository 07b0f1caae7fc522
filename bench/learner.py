"""Learner throughput and peak memory at the reference network sizes; prints one JSON object.

Reference sizes (QAM on OGBench): 4x512 GELU+LayerNorm MLPs, 10 critic heads, batch 256, chunk 5,
10 flow steps. Usage: uv run python bench/learner.py [--method lwd] [--steps 50] [--obs-dim 64]

``--compare-qam PATH`` also builds the QAM reference agent (ColinQiyangLi/qam, agents/qam.py) from a
local checkout at PATH with the same sizes (bench/qam_reference.py) and times both on synthetic batches
in alternating rounds on the same machine: updates/s of each and ours / reference. Ours is timed both
as training runs it (``--window`` updates fused per call, state donated) and one update per call.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lwd_core.algo.agents import AGENTS
from lwd_core.algo.learner import BATCH_KEYS, Learner, LearnerSpec
from lwd_core.algo.text import MAX_TOKENS
from lwd_core.algo.update_loop import LOG_EVERY
from lwd_core.config import AlgoConfig


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
    parser.add_argument("--compare-qam", default="", metavar="PATH",
                        help="a local checkout of github.com/ColinQiyangLi/qam to time side by side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds with --compare-qam")
    parser.add_argument("--window", type=int, default=LOG_EVERY,
                        help="updates fused per call (lax.scan); default: as training fuses each logging window")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="matmul dtype of our hidden layers (algo.compute_dtype); the reference stays float32")
    args = parser.parse_args()

    algo = AlgoConfig(action_chunk=5, hidden_dims=[args.hidden] * args.layers, flow_steps=10,
                      compute_dtype=args.compute_dtype)
    if args.method == "lwd":
        algo = algo.with_agent("lwd", value_model=args.value_model, critic_heads=args.heads)
    spec = LearnerSpec.from_config(algo, args.obs_dim, 5, args.method)
    if args.steps % args.window:
        parser.error("--steps must be a multiple of --window")
    learner = Learner(spec)
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(rng, spec, args.batch) for _ in range(4)]

    def window_batches(offset: int) -> dict[str, np.ndarray]:
        # Stacked on the host per window, as training samples a window up front.
        picked = [batches[(offset + i) % len(batches)] for i in range(args.window)]
        return {key: np.stack([batch[key] for batch in picked]) for key in BATCH_KEYS}

    def fused(state, steps):  # the training path for runs of FUSE_FROM_STEPS or more
        for offset in range(0, steps, args.window):
            state, _ = learner.update_many(state, window_batches(offset))
        return jax.block_until_ready(state)

    def single(state, steps):  # one call per update, as short runs take them
        for i in range(steps):
            state, _ = learner.update(state, batches[i % len(batches)])
        return jax.block_until_ready(state)

    start = time.perf_counter()
    sides = {"fused": [fused(learner.init(0), args.window), fused, 0.0]}
    first_window_s = time.perf_counter() - start  # compilation plus one window of updates
    sides["single"] = [single(learner.init(1), 1), single, 0.0]

    if args.compare_qam:
        import qam_reference

        module = qam_reference.load_qam(args.compare_qam)
        agent = qam_reference.make_agent(module, args.obs_dim, 5, 5, args.hidden, args.layers, args.heads, 10,
                                         args.batch)
        ref_batches = [qam_reference.synthetic_batch(rng, args.obs_dim, 5, 5, args.batch) for _ in range(4)]

        def theirs(agent, steps):
            for i in range(steps):
                agent, _ = agent.update(ref_batches[i % len(ref_batches)])
            return jax.block_until_ready(agent)

        sides["reference"] = [theirs(agent, 1), theirs, 0.0]

    # Alternating rounds: a slow moment of a shared machine hits every side alike.
    rounds = args.rounds if args.compare_qam else 1
    for _ in range(rounds):
        for side in sides.values():
            start = time.perf_counter()
            side[0] = side[1](side[0], args.steps)
            side[2] += time.perf_counter() - start
    state = sides["fused"][0]
    rate = {name: args.steps * rounds / side[2] for name, side in sides.items()}

    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    result = {
        "bench": "learner",
        "method": args.method,
        "value_model": args.value_model,
        "device": f"{device.platform}:{device.device_kind}",
        "host": platform.node(),
        "batch": args.batch,
        "hidden": [args.hidden] * args.layers,
        "critic_heads": args.heads,
        "compute_dtype": args.compute_dtype,
        "parameters": int(params),
        "first_window_s": round(first_window_s, 2),
        "steps": args.steps * rounds,
        "window": args.window,
        "steps_per_s": round(rate["fused"], 3),
        "steps_per_s_single_calls": round(rate["single"], 3),
        "peak_device_bytes": (stats or {}).get("peak_bytes_in_use"),
        "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.compare_qam:
        result["qam_reference_steps_per_s"] = round(rate["reference"], 3)
        result["ratio_vs_qam_reference"] = round(rate["fused"] / rate["reference"], 3)
        result["ratio_single_calls_vs_qam_reference"] = round(rate["single"] / rate["reference"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

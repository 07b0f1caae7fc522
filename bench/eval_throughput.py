"""Evaluation throughput (env steps/s and episodes/s) on the four short tasks with a fixed random policy; prints one JSON object.

Three ways: "before" (the old evaluate loop: a fresh simulator per episode, one process), "pool_inline"
(SimPool(1)) and "pool_workers" (SimPool(cpu count)). A pool's first call builds its simulators; the
"reused" call (new seeds, same pool) is what a second evaluation in the same process costs. The workers'
first call includes their imports (a few seconds each).
Usage: uv run python bench/eval_throughput.py [--episodes 10] [--max-steps 200] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from lwd_core.data.episode import Episode
from lwd_core.sim.environment import make_env
from lwd_core.sim.evaluate import BatchPolicy, eval_seed
from lwd_core.sim.pool import EpisodeRequest, SimPool
from lwd_core.sim.rollout import EpisodeRunner
from lwd_core.suite import ACTION_DIM, TASK_SUITE, TaskSpec, get_task

CHUNK = 5


def random_policy(seed: int) -> BatchPolicy:
    rng = np.random.default_rng(seed)

    def policy(obs: np.ndarray, _tasks: list[TaskSpec]) -> np.ndarray:
        return rng.uniform(-1, 1, size=(len(obs), CHUNK, ACTION_DIM)).astype(np.float32)

    return policy


def requests_for(tasks: list[TaskSpec], episodes: int, max_steps: int, base_seed: int) -> list[EpisodeRequest]:
    return [EpisodeRequest(task.task_id, eval_seed(base_seed, task.task_id, index), max_steps=max_steps)
            for task in tasks for index in range(episodes)]


def run_before(requests: list[EpisodeRequest], policy: BatchPolicy) -> list[Episode]:
    """The evaluate loop as it was: one make_env per episode, every episode stepped in this process."""
    runners, envs = [], []
    for request in requests:
        task = get_task(request.task_id)
        envs.append(env := make_env(task))
        runners.append((task, EpisodeRunner(env, task, robot_id="eval", policy_version="eval", source="rollout",
                                            seed=request.seed, max_steps=request.max_steps)))
    try:
        while any(not r.done for _, r in runners):
            needing = [(t, r) for t, r in runners if r.needs_chunk]
            if needing:
                chunks = policy(np.stack([r.observation for _, r in needing]), [t for t, _ in needing])
                for (_, runner), chunk in zip(needing, chunks, strict=True):
                    runner.step(chunk)
            for _, runner in runners:
                if not runner.done and not runner.needs_chunk:
                    runner.step()
    finally:
        for env in envs:
            env.close()
    return [r.episode() for _, r in runners]


def measured(run, requests: list[EpisodeRequest]) -> dict:
    start = time.perf_counter()
    episodes = run(requests, random_policy(0))
    seconds = time.perf_counter() - start
    steps = sum(episode.num_steps for episode in episodes)
    return {"episodes": len(episodes), "env_steps": steps, "seconds": round(seconds, 2),
            "steps_per_s": round(steps / seconds, 1), "episodes_per_s": round(len(episodes) / seconds, 2)}


def measured_pool(workers: int, first: list[EpisodeRequest], reused: list[EpisodeRequest]) -> dict:
    start = time.perf_counter()
    with SimPool(workers) as pool:
        startup_s = time.perf_counter() - start  # spawning only: workers import while the first call waits
        first_call = measured(pool.run, first)
        envs_built = pool.envs_created
        reused_call = measured(pool.run, reused)
        assert pool.envs_created == envs_built, "the reused call should build no simulator"
    return {"workers": workers, "startup_s": round(startup_s, 2), "envs_created": envs_built,
            "first_call": first_call, "reused_call": reused_call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for pool_workers")
    args = parser.parse_args()

    import ogbench  # noqa: F401  (loaded once up front so no measurement below pays for the import)

    tasks = [task for task in TASK_SUITE if task.group == "short"]
    first = requests_for(tasks, args.episodes, args.max_steps, base_seed=0)
    reused = requests_for(tasks, args.episodes, args.max_steps, base_seed=1)  # new seeds, same simulators
    print(json.dumps({
        "bench": "eval_throughput",
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "tasks": [task.task_id for task in tasks],
        "episodes_per_task": args.episodes,
        "max_steps": args.max_steps,
        "chunk": CHUNK,
        "before": measured(run_before, first) | {"envs_created": len(first)},
        "pool_inline": measured_pool(1, first, reused),
        "pool_workers": measured_pool(args.workers, first, reused),
    }))


if __name__ == "__main__":
    main()

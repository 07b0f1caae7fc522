"""Policy evaluation on the sim suite: the (task, episode) pairs run through a
:class:`~lwd_core.sim.pool.SimPool` (up to its ``max_concurrent`` at once per worker), with one batched
policy call per round for all episodes that need a chunk. Fixed seeds per (task, episode index) make a candidate and the champion face the same initial
states. Pass one pool to several evaluations to reuse its simulators (building one costs about a second).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from lwd_core.data.layout import eval_cache_key
from lwd_core.gating import wilson_interval
from lwd_core.sim.pool import EpisodeRequest, SimPool
from lwd_core.store import ObjectStore, sha256_hex
from lwd_core.suite import TaskSpec

# Part of every cache key: summaries written before per-episode outcomes are not reused.
EVAL_CACHE_FORMAT = 2
# (observations (B, obs_dim), task specs of the B rows) -> action chunks (B, chunk, action_dim)
BatchPolicy = Callable[[np.ndarray, list[TaskSpec]], np.ndarray]


def eval_seed(base: int, task_id: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"eval/{base}/{task_id}/{index}".encode()).digest()[:4], "little")


def mcnemar_p(reference: np.ndarray, other: np.ndarray) -> float:
    """Exact two-sided McNemar test on paired successes (same evaluation episodes)."""
    from scipy.stats import binomtest

    wins = int(np.sum(reference & ~other))
    losses = int(np.sum(~reference & other))
    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)


def paired_comparison(before: dict, after: dict) -> dict | None:
    """``after`` against ``before`` on the same evaluation episodes (two :func:`summarize` outputs with
    the same tasks, seed and episode count): mean change, paired wins/losses and McNemar's p. None when
    the episodes are not the same ones (or a summary predates per-episode outcomes)."""
    tasks = sorted(before["tasks"])
    if tasks != sorted(after["tasks"]) or before.get("seed") != after.get("seed"):
        return None
    if any(len(before["tasks"][t].get("outcomes", [])) != after["tasks"][t]["episodes"]
           or len(after["tasks"][t].get("outcomes", [])) != before["tasks"][t]["episodes"] for t in tasks):
        return None
    old = np.concatenate([np.asarray(before["tasks"][t]["outcomes"], bool) for t in tasks])
    new = np.concatenate([np.asarray(after["tasks"][t]["outcomes"], bool) for t in tasks])
    return {"before": float(old.mean()), "after": float(new.mean()), "change": float(new.mean() - old.mean()),
            "wins": int(np.sum(new & ~old)), "losses": int(np.sum(~new & old)), "episodes": len(new),
            "p_value": mcnemar_p(new, old)}


@dataclass
class TaskResult:
    task_id: str
    group: str
    successes: int
    episodes: int
    mean_steps: float
    outcomes: tuple[bool, ...] = ()  # per episode, in seed order: what paired tests need

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def as_dict(self) -> dict:
        low, high = wilson_interval(self.successes, self.episodes)
        return {"task_id": self.task_id, "group": self.group, "successes": self.successes, "episodes": self.episodes,
                "success_rate": self.success_rate, "ci_low": low, "ci_high": high, "mean_steps": self.mean_steps,
                "outcomes": [int(o) for o in self.outcomes]}


def summarize(results: Iterable[TaskResult]) -> dict:
    """Per-task rows plus means over all tasks and over the short / long groups."""
    results = list(results)
    out = {"tasks": {r.task_id: r.as_dict() for r in results}}
    for name, members in (("all", results), ("short", [r for r in results if r.group == "short"]),
                          ("long", [r for r in results if r.group == "long"])):
        if members:
            successes, episodes = sum(r.successes for r in members), sum(r.episodes for r in members)
            low, high = wilson_interval(successes, episodes)
            out[name] = {"success_rate": float(np.mean([r.success_rate for r in members])),
                         "successes": successes, "episodes": episodes, "ci_low": low, "ci_high": high}
    return out


def evaluate_policy(
    policy: BatchPolicy,
    tasks: Iterable[TaskSpec],
    episodes_per_task: int,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    policy_version: str = "eval",
    pool: SimPool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[TaskResult]:
    """``pool``: where the episodes run (None: a temporary inline pool, closed on return);
    ``on_progress(finished, total)`` as episodes finish."""
    tasks = list(tasks)
    requests = [EpisodeRequest(task.task_id, eval_seed(seed, task.task_id, index), robot_id="eval",
                               policy_version=policy_version, max_steps=max_steps)
                for task in tasks for index in range(episodes_per_task)]
    if pool is None:
        with SimPool(1) as temporary:
            episodes = temporary.run(requests, policy, on_progress)
    else:
        episodes = pool.run(requests, policy, on_progress)
    results = []
    for task in tasks:
        task_episodes = [e for e in episodes if e.task_id == task.task_id]
        outcomes = tuple(e.outcome == "success" for e in task_episodes)
        results.append(TaskResult(task.task_id, task.group, sum(outcomes), len(task_episodes),
                                  float(np.mean([e.num_steps for e in task_episodes])), outcomes))
    return results


def learner_policy(learner, params, seed: int = 0, batch_size: int | None = None) -> BatchPolicy:
    """A BatchPolicy over a Learner's fine-tuned flow policy (padded to ``batch_size``: one compilation)."""
    import jax

    from lwd_core.algo.text import tokenize

    key = jax.random.PRNGKey(seed)

    def policy(obs: np.ndarray, tasks: list[TaskSpec]) -> np.ndarray:
        nonlocal key
        key, sub = jax.random.split(key)
        rows = len(obs)
        size = max(rows, batch_size or rows)
        padded = np.zeros((size, obs.shape[1]), np.float32)
        padded[:rows] = obs
        tokens = np.zeros((size, learner.spec.max_tokens), np.int32)
        tokens[:rows] = np.stack([tokenize(t.instruction) for t in tasks])
        return learner.act(params, padded, tokens, sub)[:rows]

    return policy


GATE_CONCURRENT_EPISODES = 1


def evaluate_checkpoint(store: ObjectStore, checkpoint: str, policy_sha256: str | None, suite: Iterable[TaskSpec],
                        episodes_per_task: int, seed: int, max_steps: int = 0, name: str = "eval",
                        on_progress: Callable[[int, int], None] | None = None) -> dict:
    """:func:`summarize` of a committed checkpoint's policy on ``suite`` (``max_steps`` 0: each task's
    limit), cached in the store per (checkpoint, episodes, seed, limit, tasks): a version is evaluated
    once however many gates compare against it."""
    from lwd_core.algo.checkpoint import load_policy

    suite = list(suite)
    digest = sha256_hex(json.dumps([EVAL_CACHE_FORMAT, checkpoint, episodes_per_task, seed, max_steps,
                                    [t.task_id for t in suite]]).encode())[:16]
    cache = eval_cache_key(digest)
    if store.exists(cache):
        return store.get_json(cache)
    learner, params = load_policy(store, checkpoint, policy_sha256)
    # Inline, one episode at a time: the gate runs in the flywheel's own process, where each concurrent
    # episode holds a simulator (SIMULATOR_MB); at 2 the main job's peak was 2.9 GB, at 1 the gate
    # costs a few seconds more in policy calls.
    with SimPool(1, max_concurrent=GATE_CONCURRENT_EPISODES) as pool:
        batch = min(len(suite) * episodes_per_task, pool.max_batch)  # pad to one compiled shape
        results = evaluate_policy(learner_policy(learner, params, seed, batch_size=batch), suite, episodes_per_task,
                                  seed=seed, max_steps=max_steps or None, policy_version=name, pool=pool,
                                  on_progress=on_progress)
    summary = summarize(results) | {"checkpoint": checkpoint, "episodes_per_task": episodes_per_task, "seed": seed}
    store.put_json(cache, summary)
    return summary

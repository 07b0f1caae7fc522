"""A reusable pool of simulators for batched rollouts (evaluation and simulated fleets).

Building an OGBench simulator costs about a second, stepping one about a millisecond, so the pool keeps
its simulators per task and reuses them across episodes and calls. Each episode resets its simulator to
its own seed and forgets the solver's warm start (:class:`~lwd_core.sim.rollout.EpisodeRunner`), so an episode
depends on its request (and the policy's answers) alone: not on whether its simulator is fresh or reused, nor on
the worker count or how many episodes run at once.

``SimPool(1)`` steps every episode inline in this process. ``SimPool(n)`` spreads requests round-robin
over ``n`` worker processes ("spawn": the parent may have JAX loaded, which must never be forked).
A call proceeds in rounds: every worker reports the observations of its episodes that need an action
chunk, the parent makes one batched policy call for all of them and sends the chunks back, and each
worker steps each of its episodes until it needs a chunk again or is done (teleoperator steps need no
chunk). Finished episodes come back as the project's Parquet bytes.

A pool is not thread-safe: one :meth:`SimPool.run` at a time.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import numpy as np

from lwd_core.config import HumanConfig
from lwd_core.data.episode import Episode
from lwd_core.memory import trim_heap
from lwd_core.sim.environment import make_env
from lwd_core.sim.rollout import EpisodeRunner
from lwd_core.sim.teleop import RolloutHuman
from lwd_core.suite import ACTION_DIM, TaskSpec, get_task

if TYPE_CHECKING:
    from lwd_core.sim.evaluate import BatchPolicy

_LIVENESS_POLL_S = 1.0
_JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class EpisodeRequest:
    """One policy rollout. ``human``: the person who watches it and takes over when it stalls or drifts,
    as on the fleet's robots (those steps are flagged in the episode); None: nobody intervenes."""

    task_id: str
    seed: int
    robot_id: str = "eval"
    policy_version: str = "eval"
    human: HumanConfig | None = None
    max_steps: int | None = None


class SimPoolError(RuntimeError):
    """An episode failed in the pool, or a worker died or stopped answering."""


class _Shard:
    """The episodes and cached simulators of one worker (or of the inline pool)."""

    def __init__(self, max_envs: int) -> None:
        self._idle_envs: dict[str, list[Any]] = {}
        self._running: dict[int, tuple[EpisodeRequest, Any, EpisodeRunner]] = {}
        self.max_envs = max_envs
        self.envs_created = 0

    def _acquire_env(self, task: TaskSpec) -> Any:
        idle = self._idle_envs.setdefault(task.task_id, [])
        if idle:
            return idle.pop()
        # Memory is bounded by simulators, not episodes: make room by closing another task's idle one.
        held = len(self._running) + sum(len(envs) for envs in self._idle_envs.values())
        spare = next((envs for envs in self._idle_envs.values() if envs), None)
        if held >= self.max_envs and spare:
            spare.pop().close()
            trim_heap()  # else the next simulator is built beside the freed one, not in its place
        env = make_env(task)
        self.envs_created += 1
        return env

    def _release_env(self, task_id: str, env: Any) -> None:
        self._idle_envs.setdefault(task_id, []).append(env)

    def _start(self, index: int, request: EpisodeRequest) -> None:
        task = get_task(request.task_id)
        env = self._acquire_env(task)
        try:
            # Seeded by the episode alone, so results do not depend on how requests are spread.
            human = None if request.human is None else RolloutHuman(env, task, request.human, request.seed)
            runner = EpisodeRunner(env, task, robot_id=request.robot_id, policy_version=request.policy_version,
                                   source="rollout", seed=request.seed, human=human, max_steps=request.max_steps)
        except BaseException:
            self._release_env(task.task_id, env)
            raise
        self._running[index] = (request, env, runner)

    def round(self, new: list[tuple[int, EpisodeRequest]], chunks: dict[int, np.ndarray],
              ) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, Episode]]]:
        """Start ``new`` episodes, apply ``chunks``, then step every episode until it needs a chunk or is
        done. Returns (index, padded observation) of those needing a chunk and the finished episodes."""
        for index, request in new:
            with _blame(request):
                self._start(index, request)
        needs: list[tuple[int, np.ndarray]] = []
        finished: list[tuple[int, Episode]] = []
        for index, (request, env, runner) in list(self._running.items()):
            with _blame(request):
                if index in chunks:
                    runner.step(chunks[index])
                while not runner.done and not runner.needs_chunk:
                    runner.step()
                if runner.done:
                    finished.append((index, runner.episode()))
                    del self._running[index]
                    self._release_env(request.task_id, env)
                else:
                    needs.append((index, runner.observation))
        return needs, finished

    def abort(self) -> None:
        """Drop the running episodes; their simulators stay cached (each episode resets its own)."""
        for request, env, _ in self._running.values():
            self._release_env(request.task_id, env)
        self._running.clear()

    def close(self) -> None:
        self.abort()
        for envs in self._idle_envs.values():
            for env in envs:
                env.close()
        self._idle_envs.clear()


@contextmanager
def _blame(request: EpisodeRequest) -> Iterator[None]:
    """Re-raise any failure as a SimPoolError naming the episode's task and seed."""
    try:
        yield
    except SimPoolError:
        raise
    except Exception as exc:
        raise SimPoolError(f"episode task={request.task_id!r} seed={request.seed} failed: "
                           f"{type(exc).__name__}: {exc}") from exc


def _worker_main(conn: Connection, max_envs: int) -> None:
    """A worker process: answer rounds until told to close or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    shard = _Shard(max_envs)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "close":
                return
            if message[0] == "abort":
                shard.abort()
                continue
            _, new, chunks = message
            try:
                requests = [(index, EpisodeRequest(**fields)) for index, fields in new]
                needs, finished = shard.round(requests, chunks)
                # Episodes travel as the project's own Parquet bytes, never as pickled objects.
                conn.send(("ok", needs, [(index, episode.to_parquet_bytes()) for index, episode in finished],
                           shard.envs_created))
            except Exception as exc:
                shard.abort()
                conn.send(("error", f"{exc}\n--- worker traceback ---\n{traceback.format_exc()}"))
    finally:
        shard.close()


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    envs_created: int = 0


class SimPool:
    """Simulators kept per task and reused across episodes and calls; see the module docstring.

    ``workers`` 1: everything runs inline in this process; 0: one worker per CPU core. ``max_concurrent``: episodes a worker runs
    at once; a worker keeps at most twice that many simulators (~170 MB each), idle ones for other tasks
    included, so switching tasks rarely rebuilds one. ``reply_timeout_s``: the longest a worker
    may take over one round (starting its episodes included) before the pool gives up on it.
    """

    def __init__(self, workers: int = 1, *, max_concurrent: int = 16, reply_timeout_s: float = 900.0):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.workers = workers if workers >= 1 else os.cpu_count() or 1  # 0: one per CPU core
        self.max_concurrent = max_concurrent
        self.reply_timeout_s = reply_timeout_s
        self._local: _Shard | None = None
        self._workers: list[_Worker] = []
        self._closed = False
        self._replies_pending = False
        if self.workers == 1:
            self._local = _Shard(2 * max_concurrent)
            return
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold JAX
        try:
            for index in range(self.workers):
                parent_conn, child_conn = context.Pipe()
                process = context.Process(target=_worker_main, args=(child_conn, 2 * max_concurrent),
                                          name=f"simpool-{index}", daemon=True)
                process.start()
                child_conn.close()  # so a dead worker reads as EOF here
                self._workers.append(_Worker(process, parent_conn))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SimPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def max_batch(self) -> int:
        """The most observations one policy call can get: pad to this for a single compilation."""
        return self.workers * self.max_concurrent

    @property
    def envs_created(self) -> int:
        """Simulators built so far, all workers together."""
        if self._local is not None:
            return self._local.envs_created
        return sum(worker.envs_created for worker in self._workers)

    # -- running -------------------------------------------------------------------------------
    def run(self, requests: list[EpisodeRequest], policy: BatchPolicy,
            on_progress: Callable[[int, int], None] | None = None) -> list[Episode]:
        """Run every request to the end with one batched ``policy`` call per round; episodes in request
        order; ``on_progress(finished, total)`` after each round that finished some. Raises SimPoolError
        naming the task and seed if an episode fails."""
        if self._closed:
            raise SimPoolError("the pool is closed")
        requests = list(requests)
        tasks = [get_task(request.task_id) for request in requests]  # an unknown task fails here, at once
        if not requests:
            return []
        shards = min(self.workers, len(requests))
        # Each shard runs at most ``max_concurrent`` episodes at once (a simulator holds ~170 MB); the rest
        # wait in its queue and start as running ones finish. Tasks are interleaved so every shard keeps a
        # steady mix of tasks and reuses its simulators instead of rebuilding them at each task switch.
        rank: dict[str, int] = {}
        occurrence = []
        for request in requests:
            occurrence.append(rank.get(request.task_id, 0))
            rank[request.task_id] = occurrence[-1] + 1
        order = sorted(range(len(requests)), key=lambda index: (occurrence[index], index))
        queues = {shard: deque(order[shard::shards]) for shard in range(shards)}

        def admit(shard: int, free: int) -> list[tuple[int, EpisodeRequest]]:
            queue = queues[shard]
            return [(index, requests[index]) for index in (queue.popleft() for _ in range(min(free, len(queue))))]

        new = {shard: admit(shard, self.max_concurrent) for shard in range(shards)}
        chunks: dict[int, dict[int, np.ndarray]] = {shard: {} for shard in range(shards)}
        episodes: list[Episode | None] = [None] * len(requests)
        active = set(range(shards))
        done = 0
        try:
            while active:
                replies = self._round({shard: (new.get(shard, []), chunks.get(shard, {})) for shard in active})
                new = {}
                needing: list[tuple[int, int, np.ndarray]] = []
                for shard, (needs, finished) in replies.items():
                    for index, episode in finished:
                        episodes[index] = episode
                    done += len(finished)
                    if finished and on_progress:
                        on_progress(done, len(requests))
                    needing.extend((index, shard, obs) for index, obs in needs)
                    new[shard] = admit(shard, self.max_concurrent - len(needs))
                    if not needs and not new[shard]:  # every episode of the shard is done
                        active.discard(shard)
                chunks = {shard: {} for shard in active}
                if not needing:
                    continue
                needing.sort(key=lambda row: row[0])  # request order within a round
                batch = policy(np.stack([obs for _, _, obs in needing]), [tasks[index] for index, _, _ in needing])
                batch = _check_chunks(batch, len(needing))
                for (index, shard, _), chunk in zip(needing, batch, strict=True):
                    chunks[shard][index] = chunk
        except BaseException:
            self._abort()
            raise
        return episodes  # type: ignore[return-value]  (every request finished: the loop ran to the end)

    def _round(self, messages: dict[int, tuple[list[tuple[int, EpisodeRequest]], dict[int, np.ndarray]]],
               ) -> dict[int, tuple[list[tuple[int, np.ndarray]], list[tuple[int, Episode]]]]:
        if self._local is not None:
            (new, chunks), = messages.values()
            return {0: self._local.round(new, chunks)}
        # Observations and chunks cross the pipes pickled: our own short-lived arrays, never fleet data.
        self._replies_pending = True
        for shard, (new, chunks) in messages.items():
            self._send(shard, ("round", [(index, dataclasses.asdict(request)) for index, request in new], chunks))
        replies: dict[int, Any] = {}
        errors: list[str] = []
        deadline = time.monotonic() + self.reply_timeout_s
        waiting = set(messages)
        while waiting:
            # Wake on a reply or a worker's death; the poll bound keeps the deadline checked.
            wait([self._workers[shard].conn for shard in waiting]
                 + [self._workers[shard].process.sentinel for shard in waiting], timeout=_LIVENESS_POLL_S)
            for shard in sorted(waiting):
                worker = self._workers[shard]
                if worker.conn.poll():
                    try:
                        reply = worker.conn.recv()
                    except (EOFError, OSError):
                        self._fail(f"worker {shard} (pid {worker.process.pid}) died mid-reply")
                    waiting.discard(shard)
                    if reply[0] == "error":
                        errors.append(f"worker {shard}: {reply[1]}")
                        continue
                    _, needs, finished, worker.envs_created = reply
                    replies[shard] = (needs, [(index, Episode.from_parquet_bytes(data)) for index, data in finished])
                elif not worker.process.is_alive():
                    self._fail(f"worker {shard} (pid {worker.process.pid}) died "
                               f"(exit code {worker.process.exitcode})")
            if waiting and time.monotonic() > deadline:
                self._fail(f"workers {sorted(waiting)} sent no reply within {self.reply_timeout_s:.0f} s")
        self._replies_pending = False
        if errors:
            raise SimPoolError(errors[0])  # every reply is in: the pipes are clean for the next call
        return replies

    def _send(self, shard: int, message: tuple) -> None:
        try:
            self._workers[shard].conn.send(message)
        except OSError:
            self._fail(f"worker {shard} (pid {self._workers[shard].process.pid}) is gone "
                       f"(exit code {self._workers[shard].process.exitcode})")

    def _fail(self, reason: str) -> None:
        """A worker died or hung: its episodes and simulators are lost, so the whole pool closes."""
        self.close()
        raise SimPoolError(f"{reason}; the pool is closed")

    def _abort(self) -> None:
        """After a failed call: drop every running episode so the pool can serve the next call."""
        if self._closed:
            return
        if self._local is not None:
            self._local.abort()
            return
        if self._replies_pending:  # interrupted mid-round: a late reply would be read as the next call's
            self.close()
            return
        for worker in self._workers:
            try:
                worker.conn.send(("abort",))
            except OSError:
                pass  # a dead worker is found out on the next call

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.close()
            trim_heap()
        for worker in self._workers:
            try:
                worker.conn.send(("close",))
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(_JOIN_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(_JOIN_TIMEOUT_S)
            worker.conn.close()


def _check_chunks(chunks: Any, rows: int) -> np.ndarray:
    chunks = np.asarray(chunks, dtype=np.float32)
    if chunks.ndim != 3 or chunks.shape[0] != rows or chunks.shape[2] != ACTION_DIM or chunks.shape[1] < 1:
        raise ValueError(f"the policy must return action chunks of shape ({rows}, chunk, {ACTION_DIM}), "
                         f"got {chunks.shape}")
    return chunks

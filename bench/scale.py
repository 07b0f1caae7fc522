"""Fleet-scale curve: episode-to-buffer and release-to-robot latency, and ingest throughput, for a
synthetic fleet of 16 .. 1,024 robots on one machine. Prints one JSON object (a table on stderr).

What is real and what is not:
- Robots replay episodes recorded once through the simulator (re-stamped with their robot id, the
  policy version they run and the time) at real robots' pace, ``--episode-steps`` steps at 20 Hz, so
  no physics runs and 2 cores can stand in for a large fleet. Everything after that is the production
  path: the actor's release logic (signature and revision checks, policy fetched and verified, swaps
  between episodes, status reports), the edge client (durable spool, signing, upload thread), the
  object store, the coordinator, and the Prefect ``ingest`` flow, run back to back by one ingest
  worker (the main process).
- Per fleet size: a first release starts the fleet; a second one is published halfway and its
  release-to-robot latency measured on every robot (a robot swaps between episodes, so this includes
  finishing the episode in hand).
- Episode-to-buffer latency runs from the episode's end; ``upload_to_buffer`` is its part spent in
  raw/ waiting for ingest (the rest is the robot's: spooling, signing, uploading).
- Where one ingest worker saturates: ``ingest_capacity_episodes_per_s`` is what it ingested per busy
  second at the largest fleet, and ``robots_per_ingest_worker`` = capacity x episode length the fleet
  size it keeps up with (past it: several ingest runs at once, docs/operator-guide.md);
  ``fell_behind_at_robots`` names the first fleet where it ingested under 80% of what was offered.

    uv run python bench/scale.py [--robots 16 64 256 1024] [--seconds 60] [--actor-processes 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.service_defaults import apply_service_defaults  # noqa: E402
from lwd_core.fleet.actor import Actor  # noqa: E402

CONTROL_HZ = 20.0


class Replayed:
    """Stands where the simulator's episode runner would: the actor asks it for the finished episode."""

    needs_chunk = False

    def __init__(self, template, robot_id: str, version: str):
        self.template, self.robot_id, self.version = template, robot_id, version

    def episode(self):
        steps = self.template.num_steps
        finished = time.time_ns() // 1000
        return self.template.replace(robot_id=self.robot_id, policy_version=self.version, source="rollout",
                                     interventions=np.zeros(steps, bool),
                                     timestamps_us=finished - (steps - 1 - np.arange(steps)) * int(1e6 / CONTROL_HZ))


class SyntheticActor(Actor):
    """The production actor with its robots' physics replaced by recorded episodes."""

    def __init__(self, *args, templates: dict, episode_s: float, **kwargs):
        super().__init__(*args, human=None, **kwargs)
        self.templates, self.episode_s = templates, episode_s
        self._rng_np = np.random.default_rng(0)

    def _start_episode(self, robot) -> bool:
        self._maybe_swap(robot)
        if robot.release is None:
            return False
        robot.runner = Replayed(self.templates[robot.task.task_id], robot.robot_id, robot.release.version)
        # Robots do not finish in lockstep: the first episode is a random part of a whole one.
        first = robot.episodes_started == 0
        robot.finish_at = time.monotonic() + self.episode_s * (self._rng_np.uniform() if first else 1.0)
        robot.episodes_started += 1
        return True

    def run_replay(self, duration_s: float) -> int:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            for robot in self.robots:
                if robot.runner is None:
                    self._start_episode(robot)
                elif time.monotonic() >= robot.finish_at:
                    self._finish_episode(robot)
            upcoming = [r.finish_at for r in self.robots if r.runner is not None]
            time.sleep(min(max(0.0, min(upcoming, default=time.monotonic() + self.poll_s) - time.monotonic()), 0.2))
        return self.episodes_finished


def actor_process(data_dir: str, robots: int, share: list[str], episode_s: float, seconds: float,
                  templates: dict[str, bytes], ready) -> None:
    from lwd_core.config import LWDConfig
    from lwd_core.data.episode import Episode
    from lwd_core.fleet.edge import EdgeClient
    from lwd_core.security import episode_signer, keyring_for, release_verifier
    from lwd_core.store import open_store
    from lwd_core.suite import fleet_robot_ids, select_tasks

    config = LWDConfig(data_dir=data_dir)
    config.fleet.robots = robots
    store = open_store(config)
    keyring = keyring_for(config, fleet_robot_ids(robots), generate=False)
    edge = EdgeClient(Path(data_dir) / "spool" / share[0], store, sign=episode_signer(keyring))
    tasks = select_tasks(list(templates))
    actor = SyntheticActor(store, edge, {robot: tasks[i % len(tasks)] for i, robot in enumerate(share)},
                           templates={k: Episode.from_parquet_bytes(v) for k, v in templates.items()},
                           episode_s=episode_s, poll_s=config.fleet.poll_seconds,
                           verify_release=release_verifier(keyring))
    edge.start(interval_s=0.5)
    ready.wait()
    actor.run_replay(seconds)
    edge.stop(drain=True)


def record_templates(tasks: list[str], steps: int) -> dict[str, bytes]:
    """One episode per task through the simulator (a scripted demonstration), as Parquet bytes."""
    from lwd_core.sim.dataset import record_episode
    from lwd_core.sim.environment import make_env
    from lwd_core.suite import get_task

    templates = {}
    for index, task_id in enumerate(tasks):
        task = get_task(task_id)
        env = make_env(task)
        templates[task_id] = record_episode(env, task, "demo", seed=index, max_steps=steps).to_parquet_bytes()
        env.close()
    return templates


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def measure(robots: int, args, templates: dict[str, bytes]) -> dict:
    from flows.ingest import ingest
    from lwd_core.algo.checkpoint import save_checkpoint
    from lwd_core.algo.learner import Learner, LearnerSpec
    from lwd_core.config import AlgoConfig, LWDConfig
    from lwd_core.fleet.coordinator import Coordinator, release_for_checkpoint
    from lwd_core.security import keyring_for, release_signer
    from lwd_core.store import open_store
    from lwd_core.suite import ACTION_DIM, OBS_DIM, fleet_robot_ids

    data_dir = tempfile.mkdtemp(prefix=f"lwd-scale-{robots}-")
    config = LWDConfig(data_dir=data_dir)
    config.fleet.robots = robots
    config.fleet.tasks = list(templates)
    store = open_store(config)
    ids = fleet_robot_ids(robots)
    keyring = keyring_for(config, ids)
    coordinator = Coordinator(store, sign_release=release_signer(keyring))
    learner = Learner(LearnerSpec.from_config(AlgoConfig(hidden_dims=[64, 64], flow_steps=2).with_agent(
        "lwd", critic_heads=2, value_size=11), OBS_DIM, ACTION_DIM, "lwd"))
    for index in range(2):
        save_checkpoint(store, f"checkpoints/scale-{index}", learner, learner.init(index))
    coordinator.publish_all(release_for_checkpoint(store, "checkpoints/scale-0", "scale-0"))

    ingest(batch_size=args.batch, config=config)  # the Prefect API up and the flow loaded before timing
    episode_s = args.episode_steps / CONTROL_HZ
    context = multiprocessing.get_context("spawn")
    shares = [share for share in (ids[i :: args.actor_processes] for i in range(args.actor_processes)) if share]
    ready = context.Barrier(len(shares) + 1)
    actors = [context.Process(target=actor_process, args=(data_dir, robots, share, episode_s, args.seconds,
                                                          templates, ready)) for share in shares]
    for process in actors:
        process.start()
    ready.wait()  # keys loaded, policies verified: the fleet starts together
    started = time.monotonic()
    latencies: list[float] = []
    queued: list[float] = []  # the part of each latency spent in raw/, waiting for ingest
    busy_s, ingested, runs, released = 0.0, 0, 0, False
    drained = False
    while not drained:
        drained = not any(process.is_alive() for process in actors)  # one more pass after the fleet stops
        if not released and time.monotonic() - started >= args.seconds / 2:
            coordinator.publish_all(release_for_checkpoint(store, "checkpoints/scale-1", "scale-1"))
            released = True
        begun = time.monotonic()
        totals = ingest(batch_size=args.batch, config=config)
        spent = time.monotonic() - begun
        if totals.seen:
            busy_s += spent
            ingested += totals.accepted
            latencies += totals.latency_s
            queued += totals.queued_s
            runs += 1
        elif not drained:
            time.sleep(0.5)  # nothing uploaded yet: an idle worker waits for the next event
    for process in actors:
        process.join()
    wall_s = time.monotonic() - started
    capacity = ingested / busy_s if busy_s else None
    distribution = coordinator.distribution_latencies_s("scale-1")
    return {
        "robots": robots, "seconds": round(wall_s, 1), "episode_s": episode_s,
        "offered_episodes_per_s": round(robots / episode_s, 1),
        "ingested_episodes": ingested, "ingest_runs": runs,
        "ingested_episodes_per_s": round(ingested / wall_s, 1),
        "episode_to_buffer_p50_s": pct(latencies, 50), "episode_to_buffer_p99_s": pct(latencies, 99),
        "upload_to_buffer_p50_s": pct(queued, 50), "upload_to_buffer_p99_s": pct(queued, 99),
        "release_to_robot_p50_s": pct(distribution, 50), "release_to_robot_p99_s": pct(distribution, 99),
        "robots_on_new_release": len(distribution),
        "ingest_busy_share": round(busy_s / wall_s, 2),
        "ingest_capacity_episodes_per_s": round(capacity, 1) if capacity else None,
        "robots_per_ingest_worker": round(capacity * episode_s) if capacity else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=60.0, help="fleet running time per fleet size")
    parser.add_argument("--episode-steps", type=int, default=200, help="steps per episode (at 20 Hz)")
    parser.add_argument("--actor-processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="ingest micro-batch size")
    parser.add_argument("--tasks", nargs="+", default=["restock-horizontal", "restock-forward", "restock-back",
                                                       "restock-diagonal"])
    args = parser.parse_args()
    # Its own Prefect home: the bench's ephemeral API never shares a database with another run.
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lwd-scale-prefect-"))
    apply_service_defaults()
    templates = record_templates(args.tasks, args.episode_steps)
    points = [measure(robots, args, templates) for robots in args.robots]
    # The worker runs back to back whenever anything waits, so its busy share is high at any load; its
    # capacity is what it ingested per busy second at the largest fleet, where runs carry full batches
    # (at small fleets each run's fixed cost dominates). Saturation shows as a backlog: ingested well
    # below offered, latency growing.
    loaded = max(points, key=lambda p: p["robots"])
    behind = [p for p in points if p["ingested_episodes_per_s"] < 0.8 * p["offered_episodes_per_s"]]
    result = {
        "bench": "scale", "episode_steps": args.episode_steps, "actor_processes": args.actor_processes,
        "points": points,
        "ingest_capacity_episodes_per_s": loaded["ingest_capacity_episodes_per_s"],
        "one_ingest_worker_saturates_at_robots": loaded["robots_per_ingest_worker"],
        "fell_behind_at_robots": behind[0]["robots"] if behind else None,
    }
    print(json.dumps(result))
    header = f"{'robots':>7}{'offered/s':>11}{'ingested/s':>12}{'to buffer p50':>15}{'p99':>7}" \
             f"{'in raw/ p50':>13}{'p99':>7}{'to robot p50':>14}{'p99':>7}{'ingest busy':>13}"
    print(header, file=sys.stderr)
    for p in points:
        print(f"{p['robots']:>7}{p['offered_episodes_per_s']:>11}{p['ingested_episodes_per_s']:>12}"
              f"{p['episode_to_buffer_p50_s']!s:>15}{p['episode_to_buffer_p99_s']!s:>7}"
              f"{p['upload_to_buffer_p50_s']!s:>13}{p['upload_to_buffer_p99_s']!s:>7}"
              f"{p['release_to_robot_p50_s']!s:>14}{p['release_to_robot_p99_s']!s:>7}{p['ingest_busy_share']:>13}",
              file=sys.stderr)


if __name__ == "__main__":
    main()

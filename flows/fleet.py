"""`lwd fleet up` / `lwd fleet status`, and the actor process entry point.

    lwd fleet up --robots 16            # robots spread over processes, supervised, Ctrl-C to stop
    python -m flows.fleet actor --robots robot-00,robot-01 --spool .lwd/spool/actor-0

Each actor process runs an :class:`~lwd_core.fleet.actor.Actor` for its robots and an edge client
uploading in the background and emitting ``lwd.episode.uploaded`` Prefect events.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from lwd_core.config import LWDConfig, load_config
from lwd_core.fleet.coordinator import Coordinator
from lwd_core.fleet.supervisor import Child, Supervisor
from lwd_core.security import keyring_for
from lwd_core.sim.teleop import require_scripted_person
from lwd_core.store import open_store
from lwd_core.suite import fleet_robot_ids, select_tasks
from tasks.progress import progress

log = logging.getLogger("lwd.fleet")


def plan_processes(robots: list[str], robots_per_process: int) -> list[list[str]]:
    """Robots per actor process; 0 spreads them over the CPU cores."""
    if robots_per_process <= 0:
        processes = max(1, min(len(robots), os.cpu_count() or 1))
        robots_per_process = -(-len(robots) // processes)
    return [robots[i : i + robots_per_process] for i in range(0, len(robots), robots_per_process)]


def spool_dir(config: LWDConfig, process_name: str) -> Path:
    return Path(config.data_dir).resolve() / "spool" / process_name


def write_child_config(config: LWDConfig) -> Path:
    """The run's settings for its actor processes, readable by this user only (it holds secrets)."""
    path = Path(config.data_dir).resolve() / "run" / "actor-config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(config.private_json())
    return path


def fleet_supervisor(config: LWDConfig, robots: int = 0, episodes: int = 0,
                     host: str = "") -> tuple[list[str], Supervisor]:
    """Actor processes for ``robots`` robots per host (``episodes`` per robot, 0: until stopped), not
    started: every host's of ``fleet.hosts``, or only ``host``'s. They load exactly this config
    (written for them), not whatever their environment says."""
    if host and host not in config.fleet.hosts:
        raise ValueError(f"host {host!r} is not one of fleet.hosts {config.fleet.hosts}")
    if config.fleet.human is not None:  # before any robot starts, not in each actor's log
        require_scripted_person(select_tasks(config.fleet.tasks))
    per_host = robots or config.fleet.robots
    ids = fleet_robot_ids(per_host, [host] if host else config.fleet.hosts)
    keyring_for(config, ids)  # on a file:// store, missing robot keys are made here, before any actor starts
    settings = write_child_config(config)
    children = []
    for index, group in enumerate(plan_processes(ids, config.fleet.robots_per_process)):
        name = f"actor-{index}"
        argv = [sys.executable, "-m", "flows.fleet", "actor", "--robots", ",".join(group),
                "--spool", str(spool_dir(config, name)), "--episodes", str(episodes * len(group)),
                "--fleet-size", str(per_host), "--config-json", str(settings)]
        log_path = Path(config.data_dir).resolve() / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        children.append(Child(name=name, argv=argv, env=dict(os.environ), log_path=str(log_path)))
    return ids, Supervisor(children)


def wait_for_fleet(config: LWDConfig, ids: list[str], since_us: int) -> int:
    """Until every robot reported since ``since_us`` (or ``rollout.timeout_seconds``), with a progress
    bar: how many did."""
    coordinator = Coordinator(open_store(config))
    deadline = time.monotonic() + config.rollout.timeout_seconds
    wanted = set(ids)
    with progress(f"starting {len(ids)} robots", len(ids), key="fleet-start") as advance:
        while True:
            up = sum(1 for robot, state in coordinator.actors().items()
                     if robot in wanted and state["heartbeat_us"] >= since_us)
            advance(up)
            if up == len(ids) or time.monotonic() > deadline:
                return up
            time.sleep(1.0)


def fleet_up(robots: int = 0, episodes: int = 0, duration: float = 0.0, host: str = "",
             config: LWDConfig | None = None) -> dict:
    """Start the fleet as supervised actor processes; returns when every actor is done or stopped.

    ``episodes`` is per robot (0: run until stopped or ``duration`` seconds pass); ``host``: this
    machine's name in ``fleet.hosts`` (only its robots start here).
    """
    config = config or load_config()
    ids, supervisor = fleet_supervisor(config, robots, episodes, host)
    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"fleet: {len(ids)} robots in {len(supervisor.children)} actor processes; "
              f"logs in {Path(config.data_dir) / 'logs'}", flush=True)
        supervisor.run(duration_s=duration or None, stop=stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return {"robots": ids, "processes": {c.name: {"exit_code": c.exit_code, "restarts": c.restarts}
                                         for c in supervisor.children}}


def fleet_status(config: LWDConfig | None = None) -> None:
    """Print desired vs running version per robot."""
    config = config or load_config()
    coordinator = Coordinator(open_store(config))
    desired = coordinator.desired()
    stable = (desired.get("stable") or {}).get("version")
    canary = desired.get("canary")
    print(f"desired revision {desired['revision']}: stable={stable or '-'}"
          + (f" canary={canary['release']['version']} on {','.join(canary['robots'])}" if canary else ""))
    rows = coordinator.status()
    if not rows:
        print("no actors have reported yet (start some with `lwd fleet up`)")
        return
    header = f"{'robot':<10} {'task':<20} {'desired':<14} {'running':<14} {'sync':<5} {'state':<17} " \
             f"{'episodes':>8} {'autonomous':>10} {'assisted':>8} {'heartbeat':>10}"
    print(header)
    for row in rows:
        autonomous, assisted = ("-" if row[name] is None else f"{row[name]:.0%}"
                                for name in ("autonomous_success", "assisted_success"))
        print(f"{row['robot_id']:<10} {row['task_id'] or '-':<20} {row['desired'] or '-':<14} "
              f"{row['running'] or '-':<14} {'yes' if row['in_sync'] else 'NO':<5} {row['state'] or '-':<17} "
              f"{row['episodes']:>8} {autonomous:>10} {assisted:>8} {row['heartbeat_age_s']:>9.0f}s")
        if row["last_error"]:
            print(f"{'':<10} error: {row['last_error']}")


def actor_main(argv: list[str] | None = None) -> NoReturn:
    """Process entry: run the named robots until done, SIGTERM or the supervisor's death, then drain
    uploads and exit."""
    from lwd_core.algo.compilation import use_compilation_cache
    from lwd_core.fleet.actor import FLOOR_DIR, Actor, assign_tasks
    from lwd_core.fleet.edge import EdgeClient
    from lwd_core.security import episode_signer, release_verifier, report_signer
    from tasks.events import emit_episode_uploaded, exit_after_events

    parser = argparse.ArgumentParser(prog="python -m flows.fleet actor")
    parser.add_argument("--robots", required=True, help="comma-separated robot ids")
    parser.add_argument("--spool", required=True)
    parser.add_argument("--episodes", type=int, default=0, help="episodes to finish (0: until stopped)")
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--fleet-size", type=int, default=0, help="robots per fleet host (task assignment)")
    parser.add_argument("--config-json", default="", help="settings written by the supervisor (default: load them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = LWDConfig.from_private_json(Path(args.config_json).read_text()) if args.config_json else load_config()
    use_compilation_cache(config.compilation_cache_dir)
    store = open_store(config)
    suite = select_tasks(config.fleet.tasks)
    mine = args.robots.split(",")
    fleet = fleet_robot_ids(args.fleet_size, config.fleet.hosts) if args.fleet_size else mine
    tasks = {robot: spec for robot, spec in assign_tasks(fleet, suite).items() if robot in mine}

    keyring = keyring_for(config, generate=False)  # its robots' private keys, the release's public one
    edge = EdgeClient(args.spool, store, notify=emit_episode_uploaded, sign=episode_signer(keyring))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop_when_orphaned(stop)
    actor = Actor(store, edge, tasks, human=config.fleet.human, seed=config.algo.seed,
                  max_steps=config.fleet.max_episode_steps or None, poll_s=config.fleet.poll_seconds,
                  verify_release=release_verifier(keyring), sign_report=report_signer(keyring),
                  realtime_factor=config.fleet.realtime_factor,
                  floor_dir=Path(config.data_dir) / FLOOR_DIR)  # per host: robots may move between processes
    edge.flush()  # whatever a previous incarnation left behind goes first
    edge.start()
    try:
        finished = actor.run(max_episodes=args.episodes or None, duration_s=args.duration or None, stop=stop)
    finally:
        report = edge.stop(drain=True)
        actor.close()
    log.info("actor done: %d episodes finished, %d left in spool", finished, len(edge.pending()))
    exit_after_events(0 if report is not None and not report.failed else 1)


def stop_when_orphaned(stop: threading.Event, poll_s: float = 2.0) -> threading.Thread:
    """Set ``stop`` once this process's parent is gone: an actor whose supervisor was killed stops
    instead of running robots nobody supervises (or stops)."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(poll_s):
            if os.getppid() != parent:
                log.warning("the supervisor (pid %d) is gone: stopping", parent)
                stop.set()

    watcher = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    watcher.start()
    return watcher


def _main(argv: list[str]) -> Any:
    if argv[:1] == ["actor"]:
        return actor_main(argv[1:])
    raise SystemExit("usage: python -m flows.fleet actor --robots ... --spool ...")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

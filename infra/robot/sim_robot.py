"""A robot's own Python process, with a Gymnasium environment standing in for its hardware: the robot-side
package (lwd_core.robot) driven as a lab's control loop drives a real arm. Only this stand-in needs the
environment's packages; on a robot, the loop below talks to the hardware instead.

    python infra/robot/sim_robot.py --robot robot-00 --task open-drawer-window \\
        --store file:///srv/lwd/store --spool ./spool --keys ./keys --episodes 3

It waits for a release signed for it, acts with its portable policy one chunk at a time, records every
step, and leaves each finished episode to the edge client (on disk first, then signed and uploaded).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lwd_core.robot import FleetRobot  # noqa: E402
from lwd_core.store import ObjectStore  # noqa: E402


def run(robot: FleetRobot, env, task_id: str, episodes: int, max_steps: int, poll_s: float) -> int:
    """The control loop: ``episodes`` episodes (0: until interrupted). Returns how many finished."""
    finished = 0
    while not episodes or finished < episodes:
        if robot.follow() is None:  # no release for this robot yet, or none that verifies
            time.sleep(poll_s)
            continue
        episode = robot.begin(task_id)
        obs, _ = env.reset(seed=finished)
        steps, over = 0, False
        while not over:
            for position, action in enumerate(episode.act(obs)):
                next_obs, _, terminated, truncated, info = env.step(action)
                episode.record(obs, action, next_obs, success=info["success"], terminal=terminated,
                               chunk_pos=position)
                obs, steps = next_obs, steps + 1
                over = terminated or truncated or steps >= max_steps
                if over:
                    break
        robot.finish(episode)
        finished += 1
    return finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robot", required=True, help="its id, as its key pair is named")
    parser.add_argument("--task", required=True, help="a suite task id")
    parser.add_argument("--store", required=True, help="the fleet's object store URL (file:// or s3://)")
    parser.add_argument("--spool", required=True, type=Path, help="where episodes wait for upload")
    parser.add_argument("--keys", required=True, type=Path, help="its private key and the release public key")
    parser.add_argument("--episodes", type=int, default=0, help="episodes to finish (0: until interrupted)")
    parser.add_argument("--max-steps", type=int, default=0, help="cap per episode (0: the task's limit)")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from lwd_core.sim.environment import make_env  # the stand-in for the hardware
    from lwd_core.suite import get_task

    task = get_task(args.task)
    robot = FleetRobot(args.robot, ObjectStore(args.store), args.spool, args.keys)
    env = make_env(task)
    robot.start()
    try:
        finished = run(robot, env, task.task_id, args.episodes, args.max_steps or task.horizon, args.poll_seconds)
    except KeyboardInterrupt:
        finished = None
    finally:
        report = robot.stop(drain=True)
        env.close()
    done = f"{finished} episodes finished" if finished is not None else "interrupted"
    print(f"{args.robot}: {done}; uploads: {report}")


if __name__ == "__main__":
    main()

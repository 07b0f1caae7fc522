"""The robot side: what runs on a robot's own computer, with numpy, onnxruntime and the store's client,
and no JAX, Prefect or MLflow (tests/test_robot.py checks the import; bench/robot_footprint.py measures
its install size and import time).

A robot follows the fleet's desired state by the rule every robot follows (lwd_core/fleet/releases.py:
signed by the release key, for this robot, not older than accepted, every hash checked), runs the
release's portable policy (``policy.onnx``, the acting function exported by lwd_core/algo/portable.py),
records its episodes in the episode format and hands them to the edge client, which keeps them on disk
until they are signed with the robot's key and uploaded::

    robot = FleetRobot("robot-07", store, spool_dir="/var/lib/lwd/spool", keys_dir="/etc/lwd/keys")
    robot.start()                                  # uploads in the background, crash-safe
    while running:
        if robot.follow() is None:                 # the release the fleet gives it, verified
            time.sleep(1); continue
        episode = robot.begin("restock-horizontal")
        obs = read_state()
        while not over:
            chunk = episode.act(obs)               # (chunk, action_dim) in [-1, 1]
            for action in chunk:
                next_obs, success, terminal = execute(action)
                episode.record(obs, action, next_obs, success=success, terminal=terminal, chunk_pos=...)
                obs = next_obs
        robot.finish(episode)
    robot.stop()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lwd_core.algo.text import tokenize
from lwd_core.data.episode import Episode
from lwd_core.data.layout import PORTABLE_POLICY_FILE
from lwd_core.data.recorder import EpisodeRecorder
from lwd_core.fleet.coordinator import Coordinator, Release
from lwd_core.fleet.edge import EdgeClient
from lwd_core.fleet.releases import (
    FLOOR_DIR,
    ReleaseFollower,
    ReleaseTrack,
    status_report,
)
from lwd_core.security import Keyring, episode_signer, release_verifier, report_signer
from lwd_core.store import ObjectStore
from lwd_core.suite import TaskSpec, get_task, pad_observation


class PortablePolicy:
    """A release's ``policy.onnx``: the policy's actions from an observation, its instruction and noise."""

    def __init__(self, model: bytes, seed: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a robot's computer runs its control loop beside it
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        shapes = json.loads(self.session.get_modelmeta().custom_metadata_map["lwd.inputs"])
        self.obs_shape, self.tokens_shape = tuple(shapes["obs"]), tuple(shapes["tokens"])
        self.noise_shape = tuple(shapes["noise"])
        self.rng = np.random.default_rng(seed)

    def act_from_noise(self, obs: np.ndarray, tokens: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """One action chunk (chunk, action_dim) from a padded observation, instruction tokens and noise."""
        feeds = {"obs": np.asarray(obs, np.float32).reshape(self.obs_shape),
                 "tokens": np.asarray(tokens, np.int32).reshape(self.tokens_shape),
                 "noise": np.asarray(noise, np.float32).reshape(self.noise_shape)}
        return self.session.run(None, feeds)[0][0]

    def act(self, obs: np.ndarray, instruction: str) -> np.ndarray:
        return self.act_from_noise(obs, tokenize(instruction), self.rng.standard_normal(self.noise_shape, np.float32))


class RobotEpisode:
    """One episode on the robot: the policy's chunks for its raw observations, and their recording."""

    def __init__(self, recorder: EpisodeRecorder, task: TaskSpec, policy: PortablePolicy):
        self.recorder, self.task, self.policy = recorder, task, policy

    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        return self.policy.act(pad_observation(raw_obs, self.task), self.task.instruction)

    def record(self, raw_obs: np.ndarray, action: np.ndarray, raw_next_obs: np.ndarray, *, success: bool,
               terminal: bool, intervention: bool = False, chunk_pos: int = 0) -> None:
        """One executed step; ``intervention``: a person acted (then ``chunk_pos`` 0)."""
        self.recorder.record(pad_observation(raw_obs, self.task), action, pad_observation(raw_next_obs, self.task),
                             success=success, terminal=terminal, intervention=intervention, chunk_pos=chunk_pos)


class FleetRobot:
    """One robot of the fleet: its releases, its episodes and their upload."""

    def __init__(self, robot_id: str, store: ObjectStore, spool_dir: str | Path, keys_dir: str | Path, *,
                 floor_dir: str | Path | None = None, seed: int | None = None):
        keyring = Keyring(keys_dir)  # this robot's private key and the release key's public one
        self.robot_id, self.store, self.seed = robot_id, store, seed
        self.coordinator = Coordinator(store, sign_report=report_signer(keyring))
        self.edge = EdgeClient(spool_dir, store, sign=episode_signer(keyring))
        self.track = ReleaseTrack(robot_id)
        self.releases = ReleaseFollower(Path(floor_dir) if floor_dir else self.edge.root / FLOOR_DIR, store.url,
                                        release_verifier(keyring))
        last_report = self.coordinator.actor(robot_id)
        self.releases.restore(self.track, last_report)
        self.policy: PortablePolicy | None = None  # the running release's
        self._candidate: PortablePolicy | None = None  # the release being considered, once it loaded
        self.task_id = (last_report or {}).get("task_id") or ""

    # -- releases ------------------------------------------------------------------------------
    def _load(self, release: Release) -> None:
        if not release.manifest_sha256:
            raise PermissionError("the release pins no checkpoint manifest, so its portable policy cannot be checked")
        model = self.store.get_committed(release.checkpoint, PORTABLE_POLICY_FILE, release.manifest_sha256)
        self._candidate = PortablePolicy(model, self.seed)

    def follow(self) -> PortablePolicy | None:
        """Between episodes: the policy of the release the fleet gives this robot, once it passes the rule
        (None until there is one)."""
        state = self.releases.consider(self.track, self.coordinator.release_for(self.robot_id),
                                       self.track.revision_floor or 0, self._load)
        if state == "running":  # it moved to the release whose policy just loaded
            self.policy = self._candidate
        self._candidate = None
        self.report(state or ("running" if self.track.release else "waiting"))  # also the robot's heartbeat
        return self.policy

    def report(self, state: str) -> None:
        self.coordinator.report(self.robot_id, status_report(self.track, self.task_id, state))

    # -- episodes ------------------------------------------------------------------------------
    def begin(self, task_id: str) -> RobotEpisode:
        if self.policy is None or self.track.release is None:
            raise RuntimeError("no verified release yet: call follow() until it returns a policy")
        task = get_task(task_id)
        self.task_id = task.task_id
        recorder = EpisodeRecorder(robot_id=self.robot_id, task_id=task.task_id, instruction=task.instruction,
                                   policy_version=self.track.release.version, source="rollout")
        return RobotEpisode(recorder, task, self.policy)

    def finish(self, episode: RobotEpisode) -> Episode:
        """The episode to the spool (on disk before this returns), its outcome to the coordinator."""
        recorded = episode.recorder.episode()
        self.edge.spool(recorded)
        self.track.count(recorded)
        self.report("running")
        return recorded

    # -- uploads -------------------------------------------------------------------------------
    def start(self) -> None:
        self.edge.flush()  # whatever a previous run left behind goes first
        self.edge.start()

    def stop(self, drain: bool = True) -> Any:
        return self.edge.stop(drain=drain)

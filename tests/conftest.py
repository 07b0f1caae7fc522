from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import numpy as np
import pytest

from flows.service_defaults import apply_service_defaults
from infra.local_stack import free_port as _free_port

# No network here: keep every service quiet and offline before anything imports them, as `lwd` does.
apply_service_defaults()
os.environ.setdefault("MUJOCO_GL", "disable")
# One compilation cache for the session: the many `lwd` processes the tests start compile each program once.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="lwd-test-jax-cache-")
os.environ.setdefault("LWD_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)

from lwd_core.algo.compilation import use_compilation_cache  # noqa: E402
from lwd_core.data.episode import Episode  # noqa: E402
from lwd_core.store import ObjectStore  # noqa: E402
from lwd_core.suite import (  # noqa: E402
    OBS_DIM,
    SCENE_OBS_DIMS,
    TASKS_BY_ID,
    pad_observation,
    sparse_rewards,
)

# This process too: tests that build the same learner (same sizes, other seeds or data) compile once.
use_compilation_cache(os.environ["LWD_COMPILATION_CACHE_DIR"])


# The longest test files (minutes each) first: `make test` hands each of its two workers a whole file at
# a time, and one of these starting last would leave the other worker idle for its whole length.
LONGEST_FIRST = ("test_flows.py", "test_faults.py", "test_experiment.py", "test_learner.py",
                 "test_production_stack.py", "test_qam.py", "test_deployments.py", "test_distributed.py")


def pytest_addoption(parser):
    parser.addoption("--lerobot-python", default="",
                     help="a Python with the lerobot package (its own environment: it pulls torch), for the "
                          "interop test that opens our export with LeRobotDataset")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


def make_episode(
    steps: int = 12,
    obs_dim: int = 7,
    action_dim: int = 5,
    robot_id: str = "robot-0",
    task_id: str = "cube-single-task1",
    seed: int = 0,
    success: bool = True,
    **overrides,
) -> Episode:
    """A small valid episode with deterministic content (laid out as the suite's observations and with
    its instruction when ``task_id`` is a suite task)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(steps + 1, obs_dim)).astype(np.float32)
    task = TASKS_BY_ID.get(task_id)
    if task is not None and obs_dim == OBS_DIM:
        obs = np.stack([pad_observation(row[: SCENE_OBS_DIMS[task.scene]], task) for row in obs])
    successes = np.zeros(steps, dtype=bool)
    if success:
        successes[-1] = True
    source = overrides.get("source", "rollout")
    # A person takes over now and then in a rollout, one step at a time (chunk_pos 0); never in a demo.
    interventions = overrides.get("interventions", (np.arange(steps) % 5 == 3) & (source == "rollout"))
    fields = dict(
        robot_id=robot_id,
        task_id=task_id,
        instruction=task.instruction if task is not None else "put the red cube on the shelf",
        policy_version="v0",
        source=source,
        outcome="success" if success else "failure",
        observations=obs[:-1],
        actions=rng.uniform(-1, 1, size=(steps, action_dim)),
        rewards=sparse_rewards(successes),
        successes=successes,
        interventions=interventions,
        terminals=successes,
        chunk_pos=np.where(interventions, 0, np.arange(steps) % 5),
        timestamps_us=1_780_000_000_000_000 + np.arange(steps) * 50_000,
        next_observations=obs[1:],
    )
    fields.update(overrides)
    return Episode(**fields)


def lwd(env: dict, *args: str, timeout: float = 900):
    """``lwd ARGS`` in a fresh process from the repository root, as an operator runs it."""
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


def last_json(stdout: str):
    """The JSON document a command printed last."""
    import json

    return json.loads(stdout[stdout.rindex("\n{") + 1 :] if "\n{" in stdout else stdout[stdout.index("{"):])


def make_keyring(root, robots: int = 8):
    """Key pairs for robot-00.. and the release, as `lwd keys generate` makes them."""
    from lwd_core.security import Keyring

    keyring = Keyring(root)
    keyring.generate([f"robot-{index:02d}" for index in range(robots)])
    return keyring


@pytest.fixture
def keyring(tmp_path):
    return make_keyring(tmp_path / "keys")


def publisher(store, keyring):
    """A coordinator that can publish: it holds the release key, as the rollout flow does."""
    from lwd_core.fleet.coordinator import Coordinator
    from lwd_core.security import release_signer

    return Coordinator(store, sign_release=release_signer(keyring))


@pytest.fixture
def episode_factory():
    return make_episode


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on loopback; clients talk to it over sockets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    host, port = server.get_host_and_port()
    yield {
        "endpoint_url": f"http://{host}:{port}",
        "key": "testing",
        "secret": "testing",
        "region": "us-east-1",
    }
    server.stop()


@pytest.fixture
def s3_store(s3_server, request):
    from lwd_core.config import StorageConfig

    # One bucket per test (parametrized cases included): tests never see each other's objects.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    bucket = "lwd-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    bucket = "".join(ch for ch in bucket if ch.isalnum() or ch == "-").strip("-") + "-" + digest
    config = StorageConfig(url=f"s3://{bucket}/root", **{k: s3_server[k] for k in ("endpoint_url", "key", "secret", "region")})
    store = ObjectStore.from_config(config)
    store.ensure_bucket()
    return store


@pytest.fixture
def local_store(tmp_path):
    return ObjectStore((tmp_path / "store").as_uri())


@pytest.fixture(params=["local", "s3"])
def any_store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect API server (`prefect server start`, SQLite) on loopback for the session."""
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"prefect server did not start; see {home / 'server.log'}")
        time.sleep(0.5)
    yield {"url": url, "home": str(home)}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()

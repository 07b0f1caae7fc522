"""One flywheel round on the production stack, configured as infra/ configures it: a Prefect server on
PostgreSQL with two API workers and its services in a separate process, sharing Redis for messaging,
event ordering and concurrency leases (infra/prefect-server.env), and an MLflow tracking server on
PostgreSQL. Uses this machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379), in databases
made for the run and dropped after it; skips, saying which is missing, where they are not running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from conftest import _free_port, last_json, lwd

ROOT = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT = "127.0.0.1", 5432, "127.0.0.1", 6379


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose's env_file reads them (no interpolation in ours)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def postgres(database: str = "postgres"):
    """An autocommit connection (CREATE/DROP DATABASE cannot run in a transaction): close it with
    contextlib.closing, since psycopg2's own `with` opens a transaction."""
    import psycopg2

    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=database)
    connection.autocommit = True
    return connection


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory):
    if not reachable(PG_HOST, PG_PORT):
        pytest.skip(f"no PostgreSQL on {PG_HOST}:{PG_PORT}: the production-stack round needs it")
    if not reachable(REDIS_HOST, REDIS_PORT):
        pytest.skip(f"no Redis on {REDIS_HOST}:{REDIS_PORT}: the production-stack round needs it")
    import redis

    home = tmp_path_factory.mktemp("production-stack")
    run = uuid.uuid4().hex[:10]
    prefect_db, mlflow_db = f"lwd_prefect_{run}", f"lwd_mlflow_{run}"
    with closing(postgres()) as admin, admin.cursor() as cursor:
        for database in (prefect_db, mlflow_db):
            cursor.execute(f"CREATE DATABASE {database}")
    with closing(postgres(prefect_db)) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # as infra/postgres-init.sql does
    # A Redis database of its own (its streams and keys are dropped after the run).
    redis_db = 1 + int(run, 16) % 15
    cache = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db)
    cache.flushdb()

    prefect_port, mlflow_port = _free_port(), _free_port()
    server_env = {**os.environ, **env_file(ROOT / "infra" / "prefect-server.env"),
                  "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{prefect_db}",
                  "PREFECT_REDIS_MESSAGING_HOST": REDIS_HOST, "PREFECT_REDIS_MESSAGING_PORT": str(REDIS_PORT),
                  "PREFECT_REDIS_MESSAGING_DB": str(redis_db), "PREFECT_HOME": str(home / "prefect"),
                  "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    server_env.pop("PREFECT_API_URL", None)
    prefect = [sys.executable, "-m", "prefect"]
    # As compose does: migrate and register block types once, then the API workers (no services) and
    # the services process.
    migrated = subprocess.run([sys.executable, str(ROOT / "infra" / "prefect_server_setup.py")], env=server_env,
                              capture_output=True, text=True, timeout=600)
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    commands = {
        "prefect-api": [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port),
                        "--workers", "2", "--no-services"],
        "prefect-services": [*prefect, "server", "services", "start"],
        "mlflow": [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                   "--backend-store-uri", f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{mlflow_db}",
                   "--artifacts-destination", str(home / "mlartifacts"), "--serve-artifacts", "--workers", "1"],
    }
    processes, logs = {}, {}
    try:
        for name, argv in commands.items():
            logs[name] = home / f"{name}.log"
            processes[name] = subprocess.Popen(argv, env=server_env, stdout=logs[name].open("wb"),
                                               stderr=subprocess.STDOUT)
        wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", processes["prefect-api"], logs["prefect-api"])
        wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", processes["mlflow"], logs["mlflow"])
        yield {"prefect_api": f"http://127.0.0.1:{prefect_port}/api", "mlflow": f"http://127.0.0.1:{mlflow_port}",
               "prefect_db": prefect_db, "mlflow_db": mlflow_db, "redis": cache, "home": home, "logs": logs}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        cache.flushdb()
        with closing(postgres()) as admin, admin.cursor() as cursor:
            for database in (prefect_db, mlflow_db):
                cursor.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_one_flywheel_round_on_prefect_and_mlflow_servers_backed_by_postgres_and_redis(production_stack, tmp_path):
    stack = production_stack
    env = {**os.environ, "PREFECT_API_URL": stack["prefect_api"], "PREFECT_HOME": str(stack["home"] / "client"),
           "LWD_CONFIG": str(ROOT / "configs" / "tiny.yaml"), "LWD_DATA_DIR": str(tmp_path / "data"),
           "LWD_TRACKING__MLFLOW_URI": stack["mlflow"], "PREFECT_CLIENT_MAX_RETRIES": "15"}
    result = lwd(env, "flywheel", "--rounds", "1", "--auto-approve", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = last_json(result.stdout)
    assert [row["round"] for row in summary["rounds"]] == [0, 1] and summary["champion"]

    # Prefect kept the runs in PostgreSQL, all finished green.
    with closing(postgres(stack["prefect_db"])) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id")
        runs = cursor.fetchall()
        cursor.execute("SELECT count(*) FROM block_type")
        block_types = cursor.fetchone()[0]
    assert block_types > 0, "prefect_server_setup.py registered the block types the workers skip"
    assert {"flywheel", "ingest", "train", "evaluate-gate", "review", "rollout"} <= {name for name, _ in runs}
    assert all(state == "COMPLETED" for _, state in runs), runs

    # Events travel through Redis to the services process, which stores them: the rollout's event arrives.
    def rollout_events() -> int:
        with closing(postgres(stack["prefect_db"])) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM events WHERE event = 'lwd.rollout.completed'")
            return cursor.fetchone()[0]

    deadline = time.monotonic() + 180
    while rollout_events() == 0:
        assert time.monotonic() < deadline, "no lwd.rollout.completed event persisted: " + \
            stack["logs"]["prefect-services"].read_text()[-2000:]
        time.sleep(1)
    assert stack["redis"].dbsize() > 0, "the server shares nothing through Redis"

    # MLflow kept runs and the registry in PostgreSQL; the champion is what the fleet was given.
    with closing(postgres(stack["mlflow_db"])) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM model_versions")
        assert cursor.fetchone()[0] >= 2
        cursor.execute("SELECT version FROM registered_model_aliases WHERE alias = 'champion'")
        assert str(cursor.fetchone()[0]) == str(summary["champion"])

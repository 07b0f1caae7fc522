"""The production stack on one machine, as infra/compose.yaml wires it: a Prefect server on PostgreSQL
with two API workers and its services in a separate process, sharing Redis (infra/prefect-server.env),
and an MLflow tracking server on PostgreSQL.

PostgreSQL and Redis are either the machine's (``PrivateServices=False``: databases made for the run
and dropped after it, a Redis database of its own) or private instances of the same binaries on free
ports, which a fault may stop, restart or kill without touching anything shared. Every process can be
killed and started again on the same port, which is what the chaos bench and tests do.

Used by tests/test_production_stack.py, tests/test_chaos.py and bench/chaos.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MACHINE_POSTGRES, MACHINE_REDIS = ("127.0.0.1", 5432), ("127.0.0.1", 6379)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wait_for(ready, what: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until ``ready()`` (its progress, however loaded the machine), the process exits, or the deadline."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} did not come up" + (f"; log:\n{tail}" if tail else ""))
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Process:
    """One long-running server process that can be killed and started again with the same command."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, ready, user: str | None = None):
        self.name, self.argv, self.env, self.log, self.ready, self.user = name, argv, env, log, ready, user
        self.process: subprocess.Popen | None = None
        self.stop_signal = signal.SIGTERM

    def start(self, timeout: float = 300) -> None:
        argv = ["runuser", "-u", self.user, "--", *self.argv] if self.user else self.argv
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for(self.ready, self.name, timeout, self.process, self.log)

    def stop(self, sig: int | None = None, timeout: float = 60) -> None:
        """Stop it (SIGKILL: as a crash would) and wait until it is gone, its children too."""
        sig = self.stop_signal if sig is None else sig
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)
        try:  # children the server forked (API workers) go with it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def restart(self, down_s: float = 0.0, sig: int | None = None) -> None:
        self.stop(sig)
        time.sleep(down_s)
        self.start()


class PrivatePostgres(Process):
    """A PostgreSQL cluster of its own (initdb as the ``postgres`` user when run as root: the server
    refuses to run as root), trust auth on loopback."""

    def __init__(self, port: int):
        # Its own directory right under the temporary root: the server's user must reach it, and a
        # test's temporary directories are private to root.
        root = Path(tempfile.mkdtemp(prefix="lwd-postgres-"))
        self.root, self.data, self.port = root, root / "pgdata", port
        user = "postgres" if os.geteuid() == 0 else None
        binaries = Path(shutil.which("initdb") or "initdb").resolve().parent
        if user:
            shutil.chown(root, user)
        init = ["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]
        subprocess.run(["runuser", "-u", user, "--", *init] if user else init, check=True, capture_output=True)
        super().__init__("postgresql", [str(binaries / "postgres"), "-D", str(self.data), "-p", str(port),
                                        "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                         dict(os.environ), root / "postgresql.log", lambda: self.accepts(), user)
        # Fast shutdown, as `pg_ctl restart -m fast`: SIGTERM (smart) waits for every pooled connection.
        self.stop_signal = signal.SIGINT

    def accepts(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres").close()
            return True
        except psycopg2.OperationalError:
            return False


class PrivateRedis(Process):
    """A Redis server of its own that keeps nothing on disk (as the machine's)."""

    def __init__(self, root: Path, port: int):
        root.mkdir(parents=True, exist_ok=True)
        super().__init__("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(root)],
                         dict(os.environ), root / "redis.log", lambda: reachable("127.0.0.1", port))


class LocalStack:
    """``with LocalStack(home) as stack:`` starts everything; ``stack.lwd_env(...)`` is the environment
    an `lwd` process needs to use it; leaving the block stops it and drops what the run made."""

    def __init__(self, home: Path, private_services: bool = True):
        self.home, self.private_services = home, private_services
        self.run = uuid.uuid4().hex[:10]
        self.prefect_db, self.mlflow_db = f"lwd_prefect_{self.run}", f"lwd_mlflow_{self.run}"
        self.postgres: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.servers: dict[str, Process] = {}

    # -- where things are ----------------------------------------------------------------------
    @property
    def pg_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.postgres.port) if self.postgres else MACHINE_POSTGRES

    @property
    def redis_address(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self.redis.argv[2])) if self.redis else MACHINE_REDIS

    @property
    def redis_db(self) -> int:
        return 0 if self.redis else 1 + int(self.run, 16) % 15

    def connect(self, database: str = "postgres"):
        """An autocommit connection (CREATE/DROP DATABASE cannot run in a transaction): close it with
        contextlib.closing, since psycopg2's own `with` opens a transaction."""
        import psycopg2

        host, port = self.pg_address
        connection = psycopg2.connect(host=host, port=port, user="postgres", dbname=database)
        connection.autocommit = True
        return connection

    def query(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        with closing(self.connect(database)) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    def redis_client(self):
        import redis

        host, port = self.redis_address
        return redis.Redis(host=host, port=port, db=self.redis_db)

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def lwd_env(self, data_dir: Path, config: Path, **extra: str) -> dict[str, str]:
        return {**os.environ, "PREFECT_API_URL": self.prefect_api, "PREFECT_HOME": str(self.home / "client"),
                "LWD_CONFIG": str(config), "LWD_DATA_DIR": str(data_dir), "LWD_TRACKING__MLFLOW_URI": self.mlflow_url,
                "PREFECT_CLIENT_MAX_RETRIES": "15", **extra}

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.private_services:
            self.postgres = PrivatePostgres(free_port())
            self.postgres.start()
            self.redis = PrivateRedis(self.home / "redis", free_port())
            self.redis.start()
        with closing(self.connect()) as admin, admin.cursor() as cursor:
            for database in (self.prefect_db, self.mlflow_db):
                cursor.execute(f"CREATE DATABASE {database}")
        with closing(self.connect(self.prefect_db)) as connection, connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # as infra/postgres-init.sql does
        self.redis_client().flushdb()

        (pg_host, pg_port), (redis_host, redis_port) = self.pg_address, self.redis_address
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        server_env = {**os.environ, **env_file(ROOT / "infra" / "prefect-server.env"),
                      "PREFECT_API_DATABASE_CONNECTION_URL":
                          f"postgresql+asyncpg://postgres@{pg_host}:{pg_port}/{self.prefect_db}",
                      "PREFECT_REDIS_MESSAGING_HOST": redis_host, "PREFECT_REDIS_MESSAGING_PORT": str(redis_port),
                      "PREFECT_REDIS_MESSAGING_DB": str(self.redis_db), "PREFECT_HOME": str(self.home / "prefect"),
                      "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
        server_env.pop("PREFECT_API_URL", None)
        # As compose does: migrate and register block types once, then the API workers (no services)
        # and the services process.
        migrated = subprocess.run([sys.executable, str(ROOT / "infra" / "prefect_server_setup.py")], env=server_env,
                                  capture_output=True, text=True, timeout=600)
        if migrated.returncode != 0:
            raise RuntimeError("prefect database set-up failed:\n" + migrated.stdout[-2000:] + migrated.stderr[-2000:])
        prefect = [sys.executable, "-m", "prefect"]
        commands = {
            "prefect-api": ([*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port),
                             "--workers", "2", "--no-services"], lambda: http_ok(f"{self.prefect_api}/health")),
            "prefect-services": ([*prefect, "server", "services", "start"], lambda: True),
            "mlflow": ([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
                        "--backend-store-uri", f"postgresql+psycopg2://postgres@{pg_host}:{pg_port}/{self.mlflow_db}",
                        "--artifacts-destination", str(self.home / "mlartifacts"), "--serve-artifacts",
                        "--workers", "1"], lambda: http_ok(f"{self.mlflow_url}/health")),
        }
        for name, (argv, ready) in commands.items():
            self.servers[name] = Process(name, argv, server_env, self.home / f"{name}.log", ready)
            self.servers[name].start()

    def __exit__(self, *exc_info) -> None:
        for server in self.servers.values():
            server.stop()
        try:
            if not self.private_services:  # the machine's Redis: only the database this run used
                self.redis_client().flushdb()
            with closing(self.connect()) as admin, admin.cursor() as cursor:
                for database in (self.prefect_db, self.mlflow_db):
                    cursor.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        except Exception:  # noqa: BLE001 - a private cluster goes with its directory anyway
            if self.postgres is None:
                raise
        for service in (self.redis, self.postgres):
            if service is not None:
                service.stop()
        if self.postgres is not None:
            shutil.rmtree(self.postgres.root, ignore_errors=True)

"""One flywheel round on the production stack, configured as infra/ configures it: a Prefect server on
PostgreSQL with two API workers and its services in a separate process, sharing Redis for messaging,
event ordering and concurrency leases (infra/prefect-server.env), and an MLflow tracking server on
PostgreSQL. Uses this machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379), in databases
made for the run and dropped after it; skips, saying which is missing, where they are not running.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import last_json, lwd

from infra.local_stack import MACHINE_POSTGRES, MACHINE_REDIS, LocalStack, reachable

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory):
    for service, (host, port) in (("PostgreSQL", MACHINE_POSTGRES), ("Redis", MACHINE_REDIS)):
        if not reachable(host, port):
            pytest.skip(f"no {service} on {host}:{port}: the production-stack round needs it")
    with LocalStack(tmp_path_factory.mktemp("production-stack"), private_services=False) as stack:
        yield stack


def test_one_flywheel_round_on_prefect_and_mlflow_servers_backed_by_postgres_and_redis(production_stack, tmp_path):
    stack = production_stack
    env = stack.lwd_env(tmp_path / "data", ROOT / "configs" / "tiny.yaml")
    result = lwd(env, "flywheel", "--rounds", "1", "--auto-approve", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = last_json(result.stdout)
    assert [row["round"] for row in summary["rounds"]] == [0, 1] and summary["champion"]

    # Prefect kept the runs in PostgreSQL, all finished green.
    runs = stack.query(stack.prefect_db, "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id")
    block_types = stack.query(stack.prefect_db, "SELECT count(*) FROM block_type")[0][0]
    assert block_types > 0, "prefect_server_setup.py registered the block types the workers skip"
    assert {"flywheel", "ingest", "train", "evaluate-gate", "review", "rollout"} <= {name for name, _ in runs}
    assert all(state == "COMPLETED" for _, state in runs), runs

    # Events travel through Redis to the services process, which stores them: the rollout's event arrives.
    def rollout_events() -> int:
        return stack.query(stack.prefect_db, "SELECT count(*) FROM events WHERE event = 'lwd.rollout.completed'")[0][0]

    deadline = time.monotonic() + 180
    while rollout_events() == 0:
        assert time.monotonic() < deadline, "no lwd.rollout.completed event persisted: " + \
            stack.servers["prefect-services"].log.read_text()[-2000:]
        time.sleep(1)
    assert stack.redis_client().dbsize() > 0, "the server shares nothing through Redis"

    # MLflow kept runs and the registry in PostgreSQL; the champion is what the fleet was given.
    assert stack.query(stack.mlflow_db, "SELECT count(*) FROM model_versions")[0][0] >= 2
    champion = stack.query(stack.mlflow_db, "SELECT version FROM registered_model_aliases WHERE alias = 'champion'")
    assert str(champion[0][0]) == str(summary["champion"])

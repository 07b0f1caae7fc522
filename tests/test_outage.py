"""Object-store outage: the S3 server on loopback stops mid-run and comes back on the same port.
Uploads stay spooled and retry; the ingest flow's task retries carry it through; nothing is lost."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from conftest import _free_port, make_keyring, publisher
from corpus import VERSION, fleet_episode

from lwd_core.config import LWDConfig, StorageConfig
from lwd_core.fleet.coordinator import Release
from lwd_core.fleet.edge import EdgeClient
from lwd_core.security import episode_signer
from lwd_core.store import ObjectStore, now_us


@pytest.fixture
def flaky_s3():
    """A moto server we can stop and restart on the same port (its data lives in-process)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    state = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port)}
    state["server"].start()

    def stop():
        state["server"].stop()

    def restart():
        state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        state["server"].start()

    # moto keeps buckets in-process across servers: one bucket per test keeps tests apart.
    # One attempt per request: what is under test is our retries (the uploader's, the flow's tasks'),
    # not s3fs's, which would add seconds of backoff to every failed call while the server is down.
    config = StorageConfig(url=f"s3://lwd-outage-{uuid.uuid4().hex[:8]}/root", endpoint_url=f"http://127.0.0.1:{port}", key="testing",
                           secret="testing", region="us-east-1", request_retries=1)
    store = ObjectStore.from_config(config)
    store.ensure_bucket()
    yield {"store": store, "config": config, "stop": stop, "restart": restart}
    state["server"].stop()


def _restart_later(flaky, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), flaky["restart"]()), daemon=True)
    thread.start()
    return thread


def test_uploads_wait_out_an_outage_without_loss(flaky_s3, tmp_path):
    store = flaky_s3["store"]
    edge = EdgeClient(tmp_path / "spool", store, retries=1, backoff_s=0.05, max_backoff_s=0.2)
    flaky_s3["stop"]()
    episodes = [fleet_episode(seed=i) for i in range(5)]
    for episode in episodes:
        edge.spool(episode)  # the robot keeps working: spooling never touches the network
    report = edge.flush()
    assert len(report.failed) == 5 and len(edge.pending()) == 5, "failed uploads stay spooled"
    restarted = _restart_later(flaky_s3, 1.0)
    edge.start(interval_s=0.2)
    deadline = time.monotonic() + 300
    while edge.pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    edge.stop()
    restarted.join()
    assert not edge.pending(), "the spool did not drain after the store came back"
    ids = sorted(k.rsplit("/", 1)[1].removesuffix(".parquet") for k in store.list("raw", ".parquet"))
    assert ids == sorted(e.episode_id for e in episodes)


def test_ingest_flow_retries_through_an_outage(flaky_s3, prefect_server, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    store = flaky_s3["store"]
    monkeypatch.delenv("LWD_CONFIG", raising=False)
    config = LWDConfig(data_dir=tmp_path / "data", storage=flaky_s3["config"])
    keyring = make_keyring(tmp_path / "data" / "keys")  # an S3 deployment's keys come from `lwd keys generate`
    publisher(store, keyring).publish_all(Release(version=VERSION, checkpoint="checkpoints/none", policy_sha256="0" * 64))
    recent = now_us() - 10**8 + np.arange(20) * 50_000  # inside ingestion's timestamp window
    episodes = [fleet_episode(seed=20 + i, timestamps_us=recent) for i in range(4)]
    for episode in episodes:
        store.put_atomic(f"raw/2026-11-24/robot-00/{episode.episode_id}.parquet",
                         episode.to_parquet_bytes(episode_signer(keyring)(episode)))

    from flows.ingest import ingest

    flaky_s3["stop"]()
    restarted = _restart_later(flaky_s3, 3.0)  # within the task's retry schedule (1 s, 5 s, 20 s)
    with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
        result = ingest(config=config)  # the listing task fails, retries after 1 s and 5 s, then succeeds
    restarted.join()
    assert result.accepted == 4 and result.quarantined == 0
    buffered = sorted(k.rsplit("/", 1)[1].removesuffix(".parquet") for k in store.list("buffer/online", ".parquet"))
    assert buffered == sorted(e.episode_id for e in episodes)

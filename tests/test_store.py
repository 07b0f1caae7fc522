from __future__ import annotations

import os
import threading
import time

import pytest

from lwd_core.store import (
    COMMIT_MANIFEST,
    IntegrityError,
    ObjectStore,
    StoreError,
    validate_key,
)


def test_put_get_list_delete(any_store: ObjectStore):
    any_store.put_atomic("raw/day/robot-1/a.parquet", b"aaa")
    any_store.put_atomic("raw/day/robot-2/b.parquet", b"bb")
    any_store.put_json("fleet/desired.json", {"version": "v3"})
    assert any_store.get("raw/day/robot-1/a.parquet") == b"aaa"
    assert any_store.list("raw", suffix=".parquet") == ["raw/day/robot-1/a.parquet", "raw/day/robot-2/b.parquet"]
    assert any_store.get_json("fleet/desired.json") == {"version": "v3"}
    assert any_store.size("raw/day/robot-2/b.parquet") == 2
    any_store.delete("raw/day/robot-1/a.parquet")
    assert not any_store.exists("raw/day/robot-1/a.parquet")
    assert any_store.list("raw") == ["raw/day/robot-2/b.parquet"]
    assert any_store.list("nothing-here") == []
    with pytest.raises(FileNotFoundError, match="no object"):
        any_store.get("raw/day/robot-1/a.parquet")


def test_overwrite_replaces_whole_object(any_store: ObjectStore):
    any_store.put_atomic("k/obj", b"x" * 1000)
    any_store.put_atomic("k/obj", b"short")
    assert any_store.get("k/obj") == b"short"


def test_move_keeps_content(any_store: ObjectStore):
    any_store.put_atomic("raw/x.parquet", b"payload")
    any_store.move("raw/x.parquet", "quarantine/x.parquet")
    assert any_store.get("quarantine/x.parquet") == b"payload"
    assert not any_store.exists("raw/x.parquet")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.tmp-x", "a\\b"])
def test_rejects_unsafe_keys(key):
    with pytest.raises(ValueError):
        validate_key(key)


def test_committed_artifact_checks_hashes(any_store: ObjectStore):
    manifest = any_store.put_committed("checkpoints/v1", {"params.msgpack": b"weights"}, extra={"step": 7})
    assert manifest["step"] == 7
    assert any_store.get_committed("checkpoints/v1", "params.msgpack") == b"weights"
    any_store.put_atomic("checkpoints/v1/params.msgpack", b"tampered")
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        any_store.get_committed("checkpoints/v1", "params.msgpack")


def test_uncommitted_artifact_is_not_trusted(any_store: ObjectStore):
    any_store.put_atomic("checkpoints/v2/params.msgpack", b"half-written set")
    assert not any_store.is_committed("checkpoints/v2")
    with pytest.raises(StoreError, match="not committed"):
        any_store.get_committed("checkpoints/v2", "params.msgpack")
    with pytest.raises(StoreError, match="not part"):
        any_store.put_committed("checkpoints/v3", {"a": b"1"})
        any_store.get_committed("checkpoints/v3", "b")
    assert COMMIT_MANIFEST in any_store.list("checkpoints/v3")[0]


def test_local_reader_never_sees_partial_object(local_store: ObjectStore):
    """A concurrent reader polling during large rewrites only ever sees complete payloads."""
    payloads = [bytes([i]) * 4_000_000 for i in range(1, 6)]
    local_store.put_atomic("big/obj", payloads[0])
    seen: set[int] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            data = local_store.get("big/obj")
            assert len(data) == 4_000_000 and data.count(data[:1]) == len(data)
            seen.add(data[0])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for payload in payloads[1:]:
            local_store.put_atomic("big/obj", payload)
    finally:
        stop.set()
        thread.join()
    assert local_store.get("big/obj") == payloads[-1]
    # No temp files left behind, and listings never show them.
    root = os.path.join(local_store.root, "big")
    assert os.listdir(root) == ["obj"]


def test_local_writes_never_go_through_a_link_out_of_the_root(local_store: ObjectStore, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(local_store.root, "quarantine"))
    writes = [lambda: local_store.put_atomic("quarantine/a.parquet", b"a"),
              lambda: local_store.put_atomic("quarantine/deeper/b.parquet", b"b"),  # makedirs would go outside
              lambda: local_store.put_many_atomic([("buffer/c.parquet", b"c"), ("quarantine/d.parquet", b"d")]),
              lambda: local_store.put_json_if("quarantine/pointer.json", {"n": 1}, None)]
    for write in writes:
        with pytest.raises(StoreError, match="outside the store root"):
            write()
    assert list(outside.iterdir()) == [], "nothing appears outside"
    assert local_store.list("buffer") == [], "a refused group commit renames none of its objects"
    os.mkdir(os.path.join(local_store.root, "inside"))
    os.symlink(os.path.join(local_store.root, "inside"), os.path.join(local_store.root, "alias"))
    local_store.put_atomic("alias/e.parquet", b"e")  # a link that stays inside the root is no escape
    assert local_store.get("inside/e.parquet") == b"e"


def test_listing_with_times_names_what_list_names_with_when_it_was_written(any_store: ObjectStore):
    before = time.time()
    any_store.put_atomic("raw/day/robot-1/a.parquet", b"aaa")
    any_store.put_atomic("raw/day/robot-2/b.json", b"{}")
    modified = any_store.list_modified("raw", suffix=".parquet")
    assert list(modified) == any_store.list("raw", suffix=".parquet") == ["raw/day/robot-1/a.parquet"]
    # S3 keeps whole seconds, and its clock is the server's (here this machine's).
    assert before - 2 <= modified["raw/day/robot-1/a.parquet"] <= time.time() + 2
    assert any_store.list_modified("nothing-here") == {}


def test_temp_files_hidden_from_listing(local_store: ObjectStore):
    local_store.put_atomic("raw/a.parquet", b"1")
    # Simulate a writer that died mid-write: its temp file stays on disk.
    with open(os.path.join(local_store.root, "raw", ".tmp-dead-b.parquet"), "wb") as handle:
        handle.write(b"partial")
    assert local_store.list("raw") == ["raw/a.parquet"]
    assert list(local_store.list_modified("raw")) == ["raw/a.parquet"]


def test_s3_objects_are_visible_to_a_second_client(s3_store: ObjectStore, s3_server):
    """Through the real HTTP server, not an in-process mock: a fresh client sees what the first wrote."""
    s3_store.put_atomic("raw/r/e.parquet", b"episode")
    other = ObjectStore(s3_store.url, s3_store.storage_options)
    assert other.get("raw/r/e.parquet") == b"episode"
    # Listing is not cached: a new object shows up for a client that listed before.
    assert other.list("raw") == ["raw/r/e.parquet"]
    s3_store.put_atomic("raw/r/f.parquet", b"episode2")
    assert other.list("raw") == ["raw/r/e.parquet", "raw/r/f.parquet"]


def test_compare_and_swap_refuses_a_stale_generation(any_store: ObjectStore):
    assert any_store.put_json_if("fleet/pointer.json", {"n": 1}, None)
    assert not any_store.put_json_if("fleet/pointer.json", {"n": 99}, None), "it exists now"
    value, generation = any_store.get_json_versioned("fleet/pointer.json")
    assert value == {"n": 1}
    assert any_store.put_json_if("fleet/pointer.json", {"n": 2}, generation, durable=False)
    assert not any_store.put_json_if("fleet/pointer.json", {"n": 3}, generation), "that generation is gone"
    assert any_store.get_json("fleet/pointer.json") == {"n": 2}


def test_racing_read_modify_writes_lose_no_update(any_store: ObjectStore):
    import threading

    def add(count: int) -> None:
        for _ in range(count):
            any_store.update_json("fleet/counter.json", lambda current: {"n": (current or {"n": 0})["n"] + 1})

    racers = [threading.Thread(target=add, args=(10,)) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert any_store.get_json("fleet/counter.json") == {"n": 20}


def test_put_many_is_a_group_commit_of_whole_objects(any_store):
    items = [(f"buffer/online/task=t/{i}.parquet", bytes([i]) * (1000 + i)) for i in range(5)]
    any_store.put_many_atomic(items, workers=3)
    assert [any_store.get(key) for key, _ in items] == [data for _, data in items]
    assert any_store.list("buffer") == sorted(key for key, _ in items), "no temp file is left"
    assert any_store.get_bounded(items[0][0], 10) == 1000 and any_store.get_bounded(items[0][0], 5000) == items[0][1]


def test_put_many_makes_the_last_object_visible_after_all_others(any_store, monkeypatch):
    items = [(f"buffer/online/task=t/{i}.parquet", bytes([i]) * 100) for i in range(6)]
    index = ("labels/online/1.parquet", b"names them")
    order: list[str] = []
    real_replace, real_put = os.replace, any_store.put_atomic
    monkeypatch.setattr(os, "replace", lambda src, dst: (order.append(any_store.key_of(dst)), real_replace(src, dst))[1])
    monkeypatch.setattr(any_store, "put_atomic", lambda key, data: (order.append(key), real_put(key, data))[1])
    any_store.put_many_atomic(items, workers=3, last=index)
    assert order[-1] == index[0] and sorted(order[:-1]) == sorted(key for key, _ in items)
    assert any_store.get(index[0]) == index[1]


def test_request_retries_bound_both_retry_layers_of_an_s3_store():
    from lwd_core.config import StorageConfig

    store = ObjectStore.from_config(StorageConfig(url="s3://bucket/root", endpoint_url="http://127.0.0.1:9",
                                                  request_retries=2))
    assert store.fs.retries == 2
    assert store.storage_options["config_kwargs"] == {"retries": {"mode": "standard", "max_attempts": 2}}
    default = ObjectStore.from_config(StorageConfig(url="s3://bucket/root", endpoint_url="http://127.0.0.1:9"))
    assert "config_kwargs" not in default.storage_options and default.fs.retries == 5

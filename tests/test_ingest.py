"""Ingestion over a real store: validation (GX), quarantine with reasons, exactly-once buffering."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
from corpus import ROBOT, TASK, TELEOPERATOR, VERSION, bad_corpus, fleet_episode

from lwd_core.data.ingest import (
    MIN_CLAIM,
    claim_uploads,
    ingest_batch,
    ingest_next,
    pending_raw,
    release_claim,
    shard_of,
)
from lwd_core.data.layout import (
    INGEST_LEASES_KEY,
    buffer_prefix,
    get_episode,
    quarantine_reason_key,
    raw_key,
)
from lwd_core.data.validation import Expectations
from lwd_core.store import StoreError
from lwd_core.suite import ACTION_DIM, OBS_DIM

MAX_STEPS = 60
EXPECT = Expectations(obs_dim=OBS_DIM, action_dim=ACTION_DIM, tasks=frozenset({TASK, "swap-pair"}),
                      robots=frozenset({ROBOT, "robot-01"}), policy_versions=frozenset({VERSION}), max_steps=MAX_STEPS,
                      teleoperators=frozenset({TELEOPERATOR}), max_age_s=20 * 365 * 86400.0)  # fixture episodes carry fixed 2026 timestamps


def upload(store, name: str, data: bytes) -> str:
    key = f"raw/2026-11-24/{ROBOT}/{name}.parquet"
    store.put_atomic(key, data)
    return key


def buffer_ids(store) -> list[str]:
    return [k.rsplit("/", 1)[1].removesuffix(".parquet") for k in store.list(buffer_prefix("online"), ".parquet")]


def test_bad_corpus_is_quarantined_with_reasons_and_good_episodes_go_through(any_store):
    good = [fleet_episode(seed=i) for i in range(3)]
    for episode in good:
        any_store.put_atomic(raw_key(ROBOT, episode.episode_id), episode.to_parquet_bytes())
    cases = bad_corpus(MAX_STEPS)
    keys = {upload(any_store, case.name, case.data): case for case in cases}
    report = ingest_batch(any_store, pending_raw(any_store), EXPECT)
    by_key = {o.raw_key: o for o in report.outcomes}
    for key, case in keys.items():
        outcome = by_key[key]
        assert outcome.status == "quarantined", case.name
        assert any(case.reason in reason for reason in outcome.reasons), (case.name, outcome.reasons)
        name = outcome.destination.rsplit("/", 1)[1].removesuffix(".parquet")
        stored = any_store.get_json(quarantine_reason_key(name))
        assert stored["raw_key"] == key and stored["reasons"] == outcome.reasons
    assert sorted(buffer_ids(any_store)) == sorted(e.episode_id for e in good)
    assert report.count("accepted") == 3 and report.count("quarantined") == len(cases)
    assert pending_raw(any_store) == [], "every raw object was consumed"


def test_oversized_objects_are_quarantined_unread(local_store):
    episode = fleet_episode(seed=1)
    upload(local_store, "big", episode.to_parquet_bytes())
    report = ingest_batch(local_store, pending_raw(local_store), EXPECT, max_bytes=1000)
    assert report.outcomes[0].status == "quarantined" and "oversized" in report.outcomes[0].reasons[0]


def _signed_with(episode, signature: str) -> bytes:
    from lwd_core.security import SIGNATURE_KEY, SIGNER_KEY

    return episode.to_parquet_bytes({SIGNATURE_KEY: signature, SIGNER_KEY: episode.robot_id})


def test_one_hostile_object_never_stops_the_batch_or_later_ones(local_store, keyring):
    """Each of these failed the whole batch, and every later one, before objects were isolated."""
    from lwd_core.security import episode_signature_check, episode_signer

    good = [fleet_episode(seed=40 + i) for i in range(3)]
    for episode in good:
        local_store.put_atomic(raw_key(ROBOT, episode.episode_id), episode.to_parquet_bytes(episode_signer(keyring)(episode)))
    hostile = fleet_episode(seed=50)
    upload(local_store, "non-ascii-signature", _signed_with(hostile, "sïgnature-ünicode"))
    root = local_store.root
    day = os.path.join(root, "raw", "2026-11-24", ROBOT)
    os.mkfifo(os.path.join(day, "a-named-pipe.parquet"))  # reading it would block forever
    outside = os.path.join(os.path.dirname(root), "outside.parquet")
    with open(outside, "wb") as handle:
        handle.write(fleet_episode(seed=51).to_parquet_bytes())
    os.symlink(outside, os.path.join(day, "b-link-out.parquet"))
    with open(os.path.join(day, "c\\back\\slash.parquet"), "wb") as handle:
        handle.write(fleet_episode(seed=52).to_parquet_bytes())

    report = ingest_batch(local_store, pending_raw(local_store), EXPECT, check_signature=episode_signature_check(keyring))
    assert sorted(buffer_ids(local_store)) == sorted(e.episode_id for e in good)
    reasons = {o.raw_key.rsplit("/", 1)[1]: " ".join(o.reasons) for o in report.outcomes if o.status == "quarantined"}
    assert "unauthenticated" in reasons["non-ascii-signature.parquet"]
    assert "not a regular file" in reasons["a-named-pipe.parquet"]
    assert "not a regular file" in reasons["b-link-out.parquet"]
    assert "invalid store key" in reasons["c\\back\\slash.parquet"]
    assert pending_raw(local_store) == [], "nothing is left to block the next batch"
    assert os.path.exists(outside), "a link is removed, never what it points to"


def test_an_object_the_store_refuses_to_read_is_quarantined_and_ingest_goes_on(local_store, monkeypatch):
    """A PermissionError on one object (a 0000-mode file, S3 AccessDenied) is that object's alone; a
    connection error is the store's, and stops the batch with nothing discarded."""
    good = _upload_fleet(local_store, range(30, 33))
    refused = upload(local_store, "refused", fleet_episode(seed=33).to_parquet_bytes())
    real_get = local_store.get_bounded

    def get_refusing(key, max_bytes):
        if key == refused:
            raise PermissionError(13, "Permission denied", key)
        return real_get(key, max_bytes)

    monkeypatch.setattr(local_store, "get_bounded", get_refusing)
    report = ingest_batch(local_store, pending_raw(local_store), EXPECT)
    outcome = next(o for o in report.outcomes if o.raw_key == refused)
    assert outcome.status == "quarantined" and outcome.reasons[0].startswith("unreadable, left in raw/: error: PermissionError")
    assert local_store.get_json(outcome.destination)["raw_key"] == refused
    assert sorted(buffer_ids(local_store)) == sorted(e.episode_id for e in good)
    assert pending_raw(local_store) == [refused], "not deleted: a permission may be fixed and the episode recovered"

    later = _upload_fleet(local_store, range(34, 36))  # the next run is not held up by it
    assert ingest_next(local_store, "worker-a", EXPECT).count("accepted") == 2
    assert sorted(buffer_ids(local_store)) == sorted(e.episode_id for e in good + later)
    # Refused alone, it is not told apart from a store that refuses us (S3 answers a HEAD with a bare
    # 403): the batch stops, to be retried, and nothing is written or removed.
    with pytest.raises(StoreError, match="refused every object"):
        ingest_batch(local_store, [refused], EXPECT)
    assert pending_raw(local_store) == [refused]
    local_store.delete(refused)

    def unreachable_store(key, max_bytes):
        raise ConnectionError(f"no route to the store for {key}")

    unreachable = upload(local_store, "unreachable", b"-")
    monkeypatch.setattr(local_store, "get_bounded", unreachable_store)
    with pytest.raises(ConnectionError):
        ingest_batch(local_store, [unreachable], EXPECT)
    assert pending_raw(local_store) == [unreachable], "an unreachable store discards nothing"


def test_an_object_whose_quarantine_write_is_refused_is_reported_and_the_batch_goes_on(local_store, tmp_path):
    """quarantine/ linked out of the store root: the local store refuses to write through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(local_store.root, "quarantine"))
    good = _upload_fleet(local_store, range(36, 38))
    bad = upload(local_store, "not-parquet", b"not a parquet file")
    report = ingest_batch(local_store, pending_raw(local_store), EXPECT)
    outcome = next(o for o in report.outcomes if o.raw_key == bad)
    assert outcome.status == "quarantined" and outcome.destination is None
    assert "not quarantined: StoreError" in outcome.reasons[-1] and "outside the store root" in outcome.reasons[-1]
    assert sorted(buffer_ids(local_store)) == sorted(e.episode_id for e in good)
    assert list(outside.iterdir()) == [], "nothing was written through the link"
    assert pending_raw(local_store) == [bad], "its raw copy stays: it was parked nowhere"


def test_buffer_holds_a_canonical_re_encoding(local_store):
    from lwd_core.data.episode import read_parquet_metadata

    episode = fleet_episode(seed=70)
    upload(local_store, "extra", episode.to_parquet_bytes({"smuggled": "x" * 10_000}))
    assert ingest_batch(local_store, pending_raw(local_store), EXPECT).count("accepted") == 1
    (key,) = local_store.list(buffer_prefix("online"), ".parquet")
    assert "smuggled" not in read_parquet_metadata(local_store.get(key))
    assert get_episode(local_store, key).episode_id == episode.episode_id


def test_signature_fields_longer_than_a_signature_are_quarantined(local_store):
    """They are what the buffer copy keeps of the uploader's footer, so they are kept only at a
    signature's size."""
    upload(local_store, "long-signature", fleet_episode(seed=71).to_parquet_bytes({"lwd.signature": "ab" * 10_000}))
    (outcome,) = ingest_batch(local_store, pending_raw(local_store), EXPECT).outcomes
    assert outcome.status == "quarantined" and "['lwd.signature'] over 256 characters" in outcome.reasons[0]
    assert buffer_ids(local_store) == []


def test_quarantine_reasons_are_bounded(local_store):
    from lwd_core.data.ingest import MAX_REASON_CHARS, MAX_REASONS

    def rejects_loudly(episode, metadata):
        return "x" * 262_921

    upload(local_store, "loud", fleet_episode(seed=60).to_parquet_bytes())
    outcome = ingest_batch(local_store, pending_raw(local_store), EXPECT, check_signature=rejects_loudly).outcomes[0]
    assert outcome.status == "quarantined"
    assert len(outcome.reasons) <= MAX_REASONS + 1 and all(len(r) <= MAX_REASON_CHARS + 40 for r in outcome.reasons)


def test_duplicates_and_replays_are_buffered_once(local_store):
    episode = fleet_episode(seed=2)
    data = episode.to_parquet_bytes()
    upload(local_store, "first", data)
    upload(local_store, "same-batch-copy", data)
    first = ingest_batch(local_store, pending_raw(local_store), EXPECT)
    assert sorted(o.status for o in first.outcomes) == ["accepted", "duplicate"]
    upload(local_store, "replayed-later", data)
    later = ingest_batch(local_store, pending_raw(local_store), EXPECT)
    assert [o.status for o in later.outcomes] == ["duplicate"]
    assert buffer_ids(local_store) == [episode.episode_id]
    assert get_episode(local_store, f"buffer/online/task={TASK}/{episode.episode_id}.parquet").num_steps == 20


_INGEST = """
import json, os, sys
sys.path.insert(0, "tests")
from test_ingest import EXPECT, label_for_crash_tests
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.store import ObjectStore
store = ObjectStore(os.environ["STORE_URL"], json.loads(os.environ["STORE_OPTIONS"]))
ingest_batch(store, pending_raw(store), EXPECT, workers=1, label=label_for_crash_tests)
"""


def label_for_crash_tests(episode):  # importable by the killed process
    from lwd_core.data.labels import label_episode
    from lwd_core.data.nstep import NStepSchedule

    return label_episode(episode, 0.99, NStepSchedule())


@pytest.mark.parametrize("nth", [1, 3])
def test_ingest_killed_after_buffering_is_exactly_once_on_rerun(s3_store, nth):
    episodes = [fleet_episode(seed=10 + i) for i in range(4)]
    for episode in episodes:
        s3_store.put_atomic(raw_key(ROBOT, episode.episode_id), episode.to_parquet_bytes())
    env = {**os.environ, "STORE_URL": s3_store.url, "STORE_OPTIONS": json.dumps(s3_store.storage_options),
           "LWD_FAILPOINTS": f"ingest.after_buffer_put={nth}"}
    killed = subprocess.run([sys.executable, "-c", _INGEST], env=env, timeout=300)
    assert killed.returncode == 137
    # The batch's buffer objects are written together (group commit); nth - 1 raw copies were removed.
    assert len(buffer_ids(s3_store)) == 4 and len(pending_raw(s3_store)) == 4 - nth + 1
    report = ingest_batch(s3_store, pending_raw(s3_store), EXPECT, label=label_for_crash_tests)
    assert report.count("duplicate") == 4 - nth + 1 and report.count("accepted") == 0
    assert sorted(buffer_ids(s3_store)) == sorted(e.episode_id for e in episodes)
    assert pending_raw(s3_store) == []
    # Labelled exactly once: the labels table was committed with the episodes, before the crash.
    from lwd_core.data.labels import read_labels, unlabelled_keys
    from lwd_core.data.layout import labels_prefix

    labels = read_labels(s3_store, s3_store.list(labels_prefix("online"), suffix=".parquet"))
    assert sorted(labels["episode_id"]) == sorted(e.episode_id for e in episodes)
    assert unlabelled_keys(s3_store, "online") == []


def test_ingest_labels_what_it_buffers(local_store):
    from lwd_core.data.labels import label_episode, read_labels, unlabelled_keys
    from lwd_core.data.nstep import NStepSchedule

    episodes = [fleet_episode(seed=80 + i) for i in range(3)]
    for episode in episodes:
        local_store.put_atomic(raw_key(ROBOT, episode.episode_id), episode.to_parquet_bytes())
    schedule = NStepSchedule()
    report = ingest_batch(local_store, pending_raw(local_store), EXPECT,
                          label=lambda episode: label_episode(episode, 0.99, schedule))
    assert report.count("accepted") == 3 and unlabelled_keys(local_store, "online") == []
    labels = read_labels(local_store, [report.labels_key])
    assert sorted(labels["episode_id"]) == sorted(e.episode_id for e in episodes)
    assert report.summary().intervention_steps == sum(int(e.interventions.sum()) for e in episodes)


def test_an_episode_the_labeller_fails_on_is_buffered_unlabelled_with_the_reason(local_store):
    from lwd_core.data.labels import label_episode, read_labels, unlabelled_keys
    from lwd_core.data.nstep import NStepSchedule

    episodes = [fleet_episode(seed=90 + i) for i in range(3)]
    for episode in episodes:
        local_store.put_atomic(raw_key(ROBOT, episode.episode_id), episode.to_parquet_bytes())
    schedule = NStepSchedule()

    def label(episode):
        if episode.episode_id == episodes[1].episode_id:
            raise ValueError("no horizon for this task")
        return label_episode(episode, 0.99, schedule)

    report = ingest_batch(local_store, pending_raw(local_store), EXPECT, label=label)
    assert report.count("accepted") == 3
    failed = next(o for o in report.outcomes if o.episode_id == episodes[1].episode_id)
    assert failed.reasons == ["not labelled: error: ValueError: no horizon for this task"]
    assert sorted(read_labels(local_store, [report.labels_key])["episode_id"]) == sorted(
        e.episode_id for e in (episodes[0], episodes[2]))
    assert [key.rsplit("/", 1)[1] for key in unlabelled_keys(local_store, "online")] == [
        f"{episodes[1].episode_id}.parquet"]


def _upload_fleet(store, seeds) -> list:
    episodes = [fleet_episode(seed=seed) for seed in seeds]
    for episode in episodes:
        store.put_atomic(raw_key(ROBOT, episode.episode_id), episode.to_parquet_bytes())
    return episodes


def test_claims_lease_disjoint_shards_and_release_them(any_store):
    _upload_fleet(any_store, range(300, 340))
    first = claim_uploads(any_store, "worker-a", batch_size=8)
    second = claim_uploads(any_store, "worker-b", batch_size=8)
    assert len(first.keys) == 8 and len(second.keys) == 8
    assert not set(first.shards) & set(second.shards), "a shard is held by one worker at a time"
    assert {shard_of(k) for k in first.keys} <= set(first.shards)
    release_claim(any_store, first)
    held = [int(shard) for shard, lease in any_store.get_json(INGEST_LEASES_KEY)["shards"].items() if lease["owner"]]
    assert sorted(held) == sorted(second.shards)


def test_a_claim_never_takes_shards_another_worker_claimed_after_its_listing(local_store, monkeypatch):
    """worker-b claims, ingests and hands back its shards between worker-a's listing of raw/ and its
    lease update: worker-a must not re-claim the keys its stale listing still names, and, left with
    nothing else, it lists again and finds what was uploaded meanwhile."""
    taken = [raw_key(ROBOT, episode.episode_id) for episode in _upload_fleet(local_store, range(360, 370))]
    real_list = local_store.list_modified
    other: dict = {}

    def list_then_another_worker_runs(*args, **kwargs):
        listing = real_list(*args, **kwargs)
        if not other:  # once, and not for worker-b's own listing
            other["claim"] = None
            other["claim"] = claim_uploads(local_store, "worker-b", batch_size=64)
            for key in other["claim"].keys:  # ingested
                local_store.discard(key)
            other["uploaded"] = _upload_fleet(local_store, range(370, 373))
            release_claim(local_store, other["claim"])
        return listing

    monkeypatch.setattr(local_store, "list_modified", list_then_another_worker_runs)
    claim = claim_uploads(local_store, "worker-a", batch_size=64)
    assert sorted(other["claim"].keys) == sorted(taken)
    assert not set(claim.keys) & set(taken), "no object was claimed twice"
    assert claim.keys == sorted(raw_key(ROBOT, episode.episode_id) for episode in other["uploaded"])
    release_claim(local_store, claim)


def test_shards_are_served_in_turn_so_no_upload_waits_behind_busier_ones(local_store):
    _upload_fleet(local_store, range(800, 840))
    waiting = {shard_of(key) for key in pending_raw(local_store)}
    served: list[int] = []
    while set(served) != waiting:  # claimed and handed back unprocessed: every shard stays busy
        claim = claim_uploads(local_store, "worker-a", batch_size=4)
        assert claim.keys and not set(claim.shards) & set(served), "a shard comes round again only after the rest"
        served += claim.shards
        release_claim(local_store, claim)


def test_claims_take_the_longest_waiting_uploads_first(local_store):
    """First come, first served, whatever the names, also for a shard with more uploads than a claim
    takes: it keeps its place in line. (Claiming only lists raw/, so the uploads need no content.)"""
    names = [f"upload-{index}" for index in range(1000)]
    crowded = [name for name in names if shard_of(f"{name}.parquet") == shard_of("upload-0.parquet")][:10]
    assert len(crowded) == 10
    keys = [raw_key(ROBOT, name) for name in crowded + names[1:40]]
    order = random.Random(7).sample(keys, len(keys))
    uploaded_at = {key: time.time() - 600 + position for position, key in enumerate(order)}
    for key, when in uploaded_at.items():
        local_store.put_atomic(key, b"-")
        os.utime(os.path.join(local_store.root, key), (when, when))
    while waiting := pending_raw(local_store):
        claim = claim_uploads(local_store, "worker-a", batch_size=4)
        assert min(waiting, key=uploaded_at.get) in claim.keys, "the oldest upload goes first"
        for shard in claim.shards:  # a shard taken in part gives its oldest uploads
            taken = sorted(key for key in claim.keys if shard_of(key) == shard)
            in_shard = sorted((key for key in waiting if shard_of(key) == shard), key=uploaded_at.get)
            assert sorted(in_shard[: len(taken)]) == taken
        for key in claim.keys:  # ingested
            local_store.discard(key)
        release_claim(local_store, claim)


def test_ingest_reports_how_long_each_episode_waited_in_raw(local_store):
    _upload_fleet(local_store, range(950, 953))
    uploaded = time.time() - 30
    for key in pending_raw(local_store):
        os.utime(os.path.join(local_store.root, key), (uploaded, uploaded))
    before = time.time()
    report = ingest_next(local_store, "worker-a", EXPECT)
    after = time.time()
    assert report.count("accepted") == 3
    # Bounded by the clock around the call, however long a loaded machine takes over it.
    assert all(before - uploaded - 0.01 <= outcome.queued_s <= after - uploaded + 0.01 for outcome in report.outcomes)
    assert report.summary().queued_s == sorted(outcome.queued_s for outcome in report.outcomes)


def test_a_dead_workers_leases_lapse_and_others_take_over(local_store):
    _upload_fleet(local_store, range(340, 350))
    dead = claim_uploads(local_store, "worker-dead", batch_size=64, lease_s=0.0)  # lapses at once
    assert len(dead.keys) == 10
    taken = claim_uploads(local_store, "worker-alive", batch_size=64)
    assert taken.keys == dead.keys
    release_claim(local_store, dead)  # too late: the shards are worker-alive's now
    assert claim_uploads(local_store, "worker-late", batch_size=64).keys == [], "worker-alive keeps its shards"


def test_a_claim_takes_a_fair_share_of_what_is_free_while_others_work(local_store):
    _upload_fleet(local_store, range(500, 600))
    busy = claim_uploads(local_store, "worker-a", batch_size=4)
    held = sum(shard_of(key) in busy.shards for key in pending_raw(local_store))  # its shards' every upload
    share = claim_uploads(local_store, "worker-b", batch_size=64)
    assert len(share.keys) == max(MIN_CLAIM, -(-(100 - held) // 2)), "half of what worker-a does not hold"
    release_claim(local_store, busy)
    release_claim(local_store, share)


def test_a_worker_that_found_nothing_no_longer_counts(local_store):
    _upload_fleet(local_store, range(600, 700))
    everything = claim_uploads(local_store, "worker-a", batch_size=100)
    assert len(everything.keys) == 100, "alone, a claim takes a full batch"
    assert claim_uploads(local_store, "worker-b", batch_size=100).keys == [], "worker-b stops, done"
    release_claim(local_store, everything)
    # Sharing with worker-a (it may claim again) but not with worker-b: half, not a third.
    assert len(claim_uploads(local_store, "worker-c", batch_size=100).keys) == 50


def test_a_claim_leaves_no_runt_batch_behind(local_store):
    _upload_fleet(local_store, range(700, 740))
    busy = claim_uploads(local_store, "worker-a", batch_size=4)
    rest = claim_uploads(local_store, "worker-b", batch_size=64)
    held = sum(shard_of(key) in busy.shards for key in pending_raw(local_store))
    assert len(rest.keys) == 40 - held, "a fair share would leave under MIN_CLAIM behind: it takes it all"


_SHARING_WORKER = """
import json, os, sys, time
sys.path.insert(0, "tests")
from test_ingest import EXPECT
from lwd_core.data.ingest import claim_uploads, ingest_batch, release_claim
from lwd_core.data.layout import INGEST_LEASES_KEY
from lwd_core.store import ObjectStore
store = ObjectStore(os.environ["STORE_URL"])
owner = sys.argv[1]
keys, accepted, deadline = [], 0, time.monotonic() + 600
while True:
    claim = claim_uploads(store, owner, batch_size=8, lease_s=900)  # outlasts the wait below
    # Hold the first claim until the other worker has claimed too: both take a share on any machine.
    while not keys and len(store.get_json(INGEST_LEASES_KEY)["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    if not claim.keys:
        break
    keys += claim.keys
    accepted += ingest_batch(store, claim.keys, EXPECT).count("accepted")
    release_claim(store, claim)
print(json.dumps({"keys": keys, "accepted": accepted}))
"""


def test_two_ingest_workers_share_the_uploads_without_duplicates(local_store):
    """Two worker processes over one raw/ at the same time, claiming leased shards: every episode is
    buffered and labelled once, including one uploaded twice (its copies share a shard)."""
    episodes = _upload_fleet(local_store, range(200, 224))
    again = episodes[0]
    local_store.put_atomic(f"raw/2026-11-25/{ROBOT}/{again.episode_id}.parquet", again.to_parquet_bytes())
    env = {**os.environ, "STORE_URL": local_store.url}
    workers = [subprocess.Popen([sys.executable, "-c", _SHARING_WORKER, owner], env=env, stdout=subprocess.PIPE,
                                text=True) for owner in ("worker-a", "worker-b")]
    results = [json.loads(worker.communicate(timeout=600)[0].strip().splitlines()[-1]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    assert not set(results[0]["keys"]) & set(results[1]["keys"]), "no object was claimed twice"
    assert all(r["accepted"] > 0 for r in results), "both workers took a share"
    assert sum(r["accepted"] for r in results) == 24
    assert sorted(buffer_ids(local_store)) == sorted(e.episode_id for e in episodes)
    assert pending_raw(local_store) == []


def test_a_teleoperators_demonstration_is_no_robots_success_in_the_fleet_numbers(local_store):
    from lwd_core.suite import TELEOP_POLICY_VERSION

    demo = fleet_episode(seed=301, robot_id=TELEOPERATOR, source="demo", policy_version=TELEOP_POLICY_VERSION)
    rollout = fleet_episode(seed=302, success=False)
    for name, episode in (("demo", demo), ("rollout", rollout)):
        upload(local_store, name, episode.to_parquet_bytes())
    summary = ingest_batch(local_store, pending_raw(local_store), EXPECT).summary()
    assert summary.accepted == 2 and summary.rollouts == 1 and summary.rollout_steps == rollout.num_steps
    outcomes = summary.fleet_outcomes
    assert (outcomes.episodes, outcomes.autonomous_successes) == (1, 0)  # the demo's success is a person's
    assert summary.describe() == ("2 seen, 2 accepted (1 robot rollouts, 20 steps), 0 quarantined, 0 duplicates; "
                                  "rollouts: autonomous success 0%, assisted 0%, 4 takeovers")

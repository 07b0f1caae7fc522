from __future__ import annotations

import io

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus import frame_bytes, layout_2_file, with_footer, with_string_columns

from lwd_core.data.episode import (
    EPISODE_SCHEMA,
    LAYOUT_KEY,
    MAX_ROW_VALUES,
    STEP_COLUMNS,
    Episode,
    EpisodeFormatError,
    decode_episode,
    footer_key,
    read_parquet_metadata,
)
from lwd_core.data.layout import (
    buffer_key,
    get_episode,
    put_episode,
    raw_key,
    safe_name,
)


def assert_same_episode(a: Episode, b: Episode):
    assert a.episode_id == b.episode_id
    assert a.metadata() == b.metadata()
    for name in ("observations", "actions", "rewards", "successes", "interventions", "terminals",
                 "chunk_pos", "timestamps_us", "next_observations"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_id_is_content_hash(episode_factory):
    a, b = episode_factory(seed=1), episode_factory(seed=1)
    assert a.episode_id == b.episode_id and len(a.episode_id) == 64
    assert episode_factory(seed=2).episode_id != a.episode_id
    assert a.replace(robot_id="robot-9").episode_id != a.episode_id
    flipped = a.interventions.copy()
    flipped[0] = not flipped[0]
    assert a.replace(interventions=flipped).episode_id != a.episode_id


def test_frame_matches_schema(episode_factory):
    episode = episode_factory(steps=9)
    frame = episode.to_frame()
    assert dict(frame.schema) == dict(pl.from_arrow(pa.schema(EPISODE_SCHEMA.items()).empty_table()).schema)
    assert frame.height == 9
    assert frame["done"].to_list() == [False] * 8 + [True]
    assert frame["timestamp"].dt.epoch("us").to_list() == episode.timestamps_us.tolist()


@pytest.mark.parametrize("store_name", ["local_store", "s3_store"])
def test_round_trip_through_store(store_name, request, episode_factory):
    store = request.getfixturevalue(store_name)
    episode = episode_factory(steps=30, obs_dim=11)
    key = raw_key(episode.robot_id, episode.episode_id)
    uri = put_episode(store, key, episode, extra_metadata={"lwd.note": "hello"})
    assert uri.startswith("file://" if store_name == "local_store" else "s3://")
    back = get_episode(store, key)
    assert_same_episode(episode, back)
    meta = read_parquet_metadata(store.get(key))
    assert meta["lwd.episode_id"] == episode.episode_id and meta["lwd.note"] == "hello"
    # Same episode lands on the same buffer key: the basis of exactly-once appends.
    assert buffer_key("online", episode.task_id, episode.episode_id) == buffer_key("online", back.task_id, back.episode_id)


def test_altered_content_detected(episode_factory):
    episode = episode_factory()
    frame = episode.to_frame().with_columns(pl.col("reward") + 1.0)
    with pytest.raises(EpisodeFormatError, match="does not match its content"):
        Episode.from_frame(frame)


def test_truncated_parquet_is_a_format_error(episode_factory):
    data = episode_factory().to_parquet_bytes()
    with pytest.raises(EpisodeFormatError, match="unreadable Parquet"):
        Episode.from_parquet_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.drop("reward"), "missing columns"),
        (lambda f: f.with_columns(pl.lit(1).alias("extra")), "unexpected columns"),
        (lambda f: f.with_columns(pl.col("reward").cast(pl.Float64)), "wrong column types"),
        (lambda f: f.with_columns(pl.when(pl.col("step") == 2).then(pl.lit("other")).otherwise(pl.col("robot_id")).alias("robot_id")), "one value"),
        (lambda f: f.filter(pl.col("step") != 3), "no gaps"),
        (lambda f: f.with_columns(pl.lit(True).alias("done")), "last step only"),
        (lambda f: f.head(0), "no rows"),
    ],
)
def test_malformed_frames_rejected_with_reason(episode_factory, mutate, message):
    frame = mutate(episode_factory().to_frame())
    with pytest.raises(EpisodeFormatError, match=message):
        Episode.from_frame(frame)


def test_ragged_observations_rejected(episode_factory):
    frame = episode_factory().to_frame()
    ragged = frame.with_columns(
        pl.when(pl.col("step") == 1).then(pl.col("obs").list.head(3)).otherwise(pl.col("obs")).alias("obs")
    )
    with pytest.raises(EpisodeFormatError, match="different lengths"):
        Episode.from_frame(ragged, verify_id=False)


def test_inconsistent_arrays_rejected(episode_factory):
    good = episode_factory(steps=6)
    with pytest.raises(EpisodeFormatError, match="actions has 5 steps"):
        good.replace(actions=good.actions[:5])
    with pytest.raises(EpisodeFormatError, match="unknown source"):
        good.replace(source="teleport")


def test_parquet_is_plain_columns_not_pickle(episode_factory):
    data = episode_factory().to_parquet_bytes()
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    assert b"pickle" not in data.lower()
    assert pl.read_parquet(io.BytesIO(data)).height == 12


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 200, ".hidden"])
def test_ids_in_keys_are_safe(bad):
    with pytest.raises(ValueError):
        safe_name(bad, "id")


def test_files_from_other_writers_decode(episode_factory):
    """Several row groups (each with its own string dictionary), as another Parquet writer may make."""
    episode = episode_factory()
    buffer = io.BytesIO()
    episode.to_frame().write_parquet(buffer, row_group_size=5)
    assert Episode.from_parquet_bytes(buffer.getvalue()).episode_id == episode.episode_id


def _layout_1_bytes(episode: Episode) -> bytes:
    """A file as this project wrote them before layout 2: the per-episode strings as columns."""
    sink = pa.BufferOutputStream()
    table = episode.to_arrow().replace_schema_metadata({LAYOUT_KEY: "1", "lwd.episode_id": episode.episode_id})
    pq.write_table(table, sink, compression="lz4", use_dictionary=["episode_id", "robot_id"])
    return sink.getvalue().to_pybytes()


def test_files_keep_per_episode_strings_once_in_the_footer(episode_factory):
    episode = episode_factory(steps=7)
    data = episode.to_parquet_bytes({"lwd.signature": "sig"})
    assert tuple(pl.read_parquet(io.BytesIO(data)).columns) == STEP_COLUMNS
    meta = read_parquet_metadata(data)
    assert meta[LAYOUT_KEY] == "2" and meta["lwd.signature"] == "sig"
    assert {name: meta[footer_key(name)] for name in ("episode_id", *episode.metadata())} == episode.strings()
    back, metadata = decode_episode(data, max_rows=100)
    assert_same_episode(episode, back)
    assert metadata == meta


def test_layout_1_files_still_decode_to_the_same_episode(episode_factory):
    episode = episode_factory(steps=9)
    assert_same_episode(episode, Episode.from_parquet_bytes(_layout_1_bytes(episode)))
    assert Episode.from_parquet_bytes(episode.to_parquet_bytes()).episode_id == episode.episode_id


def test_decoded_episodes_re_encode_to_the_canonical_bytes(episode_factory):
    """Ingest re-encodes what it decoded: the bytes are those built from the arrays, however the file
    was written (the decoded columns are reused only when they are exactly those)."""
    episode = episode_factory(steps=12)
    canonical = episode.to_parquet_bytes({"lwd.signature": "sig"})
    shuffled = episode.to_frame().sample(fraction=1.0, shuffle=True, seed=3)
    several_groups = io.BytesIO()
    episode.to_frame().write_parquet(several_groups, row_group_size=5)
    for data in (canonical, _layout_1_bytes(episode), frame_bytes(shuffled), several_groups.getvalue()):
        assert decode_episode(data)[0].to_parquet_bytes({"lwd.signature": "sig"}) == canonical
    # Changed content is encoded from its own arrays, never from the columns it was decoded from.
    changed = decode_episode(canonical)[0].replace(chunk_pos=episode.chunk_pos + 1)
    np.testing.assert_array_equal(Episode.from_parquet_bytes(changed.to_parquet_bytes()).chunk_pos,
                                  episode.chunk_pos + 1)
    # A null inside a vector decodes to NaN, and is re-encoded as NaN, never as a null.
    obs = pa.array([[None if (row, col) == (2, 0) else 0.5 for col in range(episode.obs_dim)]
                    for row in range(12)], pa.list_(pa.float32()))
    holed = pq.read_table(io.BytesIO(canonical)).set_column(STEP_COLUMNS.index("obs"), "obs", obs)
    sink = pa.BufferOutputStream()
    pq.write_table(holed, sink)
    decoded = decode_episode(sink.getvalue().to_pybytes(), verify_id=False)[0]
    assert np.isnan(decoded.observations[2, 0])
    assert pq.read_table(io.BytesIO(decoded.to_parquet_bytes()))["obs"].combine_chunks().values.null_count == 0


def test_extra_metadata_cannot_set_the_episodes_own_keys(episode_factory):
    with pytest.raises(ValueError, match="lwd.robot_id"):
        episode_factory().to_parquet_bytes({"lwd.robot_id": "robot-99"})


@pytest.mark.parametrize("change, message", [
    (lambda m: {k: v for k, v in m.items() if k != "lwd.task_id"}, "footer metadata missing"),
    (lambda m: m | {"lwd.instruction": "x" * 100_000}, "footer values over 4096 characters"),
    (lambda m: m | {"lwd.robot_id": "robot-99"}, "does not match its content"),
    (lambda m: m | {"lwd.episode_id": ""}, "does not match its content"),  # not recomputed and taken
    (lambda m: m | {LAYOUT_KEY: "3"}, "unknown file layout '3'"),
])
def test_hostile_footers_rejected_with_reason(episode_factory, change, message):
    with pytest.raises(EpisodeFormatError, match=message):
        decode_episode(with_footer(episode_factory(), change), max_rows=100)


def test_layout_2_file_with_string_columns_rejected(episode_factory):
    """A layout-2 file may not carry the strings twice (the columns would be what a reader of the
    file's rows sees, unchecked against the id)."""
    episode = episode_factory()
    with pytest.raises(EpisodeFormatError, match="unexpected columns"):
        decode_episode(with_string_columns(episode), max_rows=100)


def test_layout_2_file_without_rows_rejected(episode_factory):
    episode = episode_factory()
    with pytest.raises(EpisodeFormatError, match="no rows"):
        decode_episode(layout_2_file(episode._step_table().slice(0, 0), episode), max_rows=100)


def test_vectors_with_more_values_than_rows_can_hold_are_refused_from_the_footer(episode_factory):
    """Dictionary-encoded zeros store a huge vector in a few bytes; the footer's count of values
    gives it away before anything is decoded."""
    episode = episode_factory(steps=10)
    width = MAX_ROW_VALUES + 1
    zeros = pa.ListArray.from_arrays(pa.array(np.arange(0, 11 * width, width, dtype=np.int32)),
                                     pa.array(np.zeros(10 * width, np.float32)))
    table = episode._step_table().set_column(STEP_COLUMNS.index("obs"), "obs", zeros)
    with pytest.raises(EpisodeFormatError, match=f"holds {10 * width} values, over {10 * MAX_ROW_VALUES}"):
        decode_episode(layout_2_file(table, episode, use_dictionary=True), max_rows=100)


def test_layout_1_strings_stored_once_are_not_expanded_onto_every_row(episode_factory):
    """A 1 MB instruction stored once, in a dictionary page, over 1,000 rows: read as plain strings
    that would be 1 GB; it is read as the one-entry dictionary it is."""
    episode = episode_factory(steps=1000)
    table = episode.to_arrow()
    once = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1000, np.int32)), pa.array(["x" * 2**20]))
    table = table.set_column(table.schema.get_field_index("instruction"), "instruction", once)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, store_schema=False)  # no Arrow schema: nothing says "dictionary"
    pool = pa.default_memory_pool()
    peak_before = pool.max_memory()
    with pytest.raises(EpisodeFormatError, match="does not match its content"):
        decode_episode(sink.getvalue().to_pybytes(), max_rows=1000)
    assert pool.max_memory() - peak_before < 100 * 2**20

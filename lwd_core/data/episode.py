"""Episode schema: one Parquet file per episode, one row per environment step.

Why per environment step rather than per policy decision: the training action chunk (h) and n-step
horizon are learner settings, so the learner cuts chunks as windows of consecutive executed actions;
``chunk_pos`` keeps where each action sat in the chunk the actor emitted, so acting-time chunks are
recoverable too. The per-episode strings (id, robot, task, instruction, policy version, source,
outcome) are file-level facts: a file keeps them once, in its footer's key-value metadata (layout 2),
and the frame form (:meth:`Episode.to_frame`) repeats them on every row, so that frames of several
episodes concatenate and filter with plain column predicates. Files of layout 1, which kept them as
columns repeated on every row, are still read.

``episode_id`` is the sha256 of the episode's canonical content (metadata + arrays), so the same episode
uploaded twice has the same id (exactly-once ingestion) and a corrupted or altered file no longer
matches its id.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import polars as pl

# The content hash's domain tag: part of every episode id, so it is not the file layout's version.
CONTENT_HASH_VERSION = "1"
# The footer key naming a file's layout, and the layout this module writes ("1": per-episode strings as
# columns, what files without the key are read as; "2": per-episode strings in the footer).
LAYOUT_KEY = "lwd.schema_version"
FILE_LAYOUT = "2"
SOURCES = ("demo", "play", "rollout")
OUTCOMES = ("success", "failure")
Source = Literal["demo", "play", "rollout"]
Outcome = Literal["success", "failure"]

# Arrow types, so that writing an episode needs no polars (a robot's process has none).
EPISODE_SCHEMA: dict[str, pa.DataType] = {
    "episode_id": pa.string(),
    "robot_id": pa.string(),
    "task_id": pa.string(),
    "instruction": pa.string(),
    "policy_version": pa.string(),
    "source": pa.string(),
    "outcome": pa.string(),
    "step": pa.int32(),
    "obs": pa.list_(pa.float32()),
    "action": pa.list_(pa.float32()),
    "chunk_pos": pa.int16(),
    "reward": pa.float32(),
    "success": pa.bool_(),
    "intervention": pa.bool_(),
    "terminal": pa.bool_(),
    "done": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "next_obs": pa.list_(pa.float32()),
}
METADATA_KEYS = ("robot_id", "task_id", "instruction", "policy_version", "source", "outcome")
_STRING_COLUMNS = ["episode_id", *METADATA_KEYS]
STEP_COLUMNS = tuple(name for name in EPISODE_SCHEMA if name not in _STRING_COLUMNS)
# Footer bounds checked before anything is decoded (:func:`check_footer_bounds`). An honest row is
# under 1 kB uncompressed (two observations and an action of float32, flags; in layout 1 also short
# strings, stored once per file in a dictionary page and read as one); these allow 4x that, plus a
# fixed allowance per column.
MAX_ROW_BYTES = 4096
COLUMN_ALLOWANCE_BYTES = 64 * 1024
# Values per row of one column (a vector of float32 in MAX_ROW_BYTES): dictionary and run-length
# encodings make decoded size independent of the bytes stored, so the count of values is bounded too.
MAX_ROW_VALUES = MAX_ROW_BYTES // 4
# A per-episode string in a layout-2 footer (an honest instruction is under 200 characters).
MAX_FOOTER_VALUE_CHARS = 4096


class EpisodeFormatError(ValueError):
    """The bytes or frame are not an episode of this schema; the message says why."""


@dataclass(frozen=True, eq=False)
class Episode:
    """A finished episode. Arrays are indexed by environment step t = 0..T-1.

    ``observations[t]`` is seen before ``actions[t]``; ``next_observations[t]`` after it (kept per step
    so the final observation, needed to bootstrap a truncated episode, is never lost). ``terminals[t]``
    means the environment ended the episode (no bootstrap); the last step of a time-limited episode has
    ``done`` but not ``terminal``. ``timestamps_us`` are UTC microseconds when each step finished.
    """

    robot_id: str
    task_id: str
    instruction: str
    policy_version: str
    source: Source
    outcome: Outcome
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray
    interventions: np.ndarray
    terminals: np.ndarray
    chunk_pos: np.ndarray
    timestamps_us: np.ndarray
    next_observations: np.ndarray
    episode_id: str = ""
    # The per-step Arrow columns this episode was decoded from, when they are exactly what
    # :meth:`_step_table` builds (canonical types, no nulls inside vectors): re-encoding reuses them.
    # Not an init field, so that :meth:`replace` never carries them to changed content.
    _decoded_steps: pa.Table | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        canon = {
            "observations": np.float32,
            "actions": np.float32,
            "rewards": np.float32,
            "successes": np.bool_,
            "interventions": np.bool_,
            "terminals": np.bool_,
            "chunk_pos": np.int16,
            "timestamps_us": np.int64,
            "next_observations": np.float32,
        }
        for name, dtype in canon.items():
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        self._check_shapes()
        if not self.episode_id:
            object.__setattr__(self, "episode_id", self.content_hash())

    def _check_shapes(self) -> None:
        steps = self.num_steps
        if steps == 0:
            raise EpisodeFormatError("episode has no steps")
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise EpisodeFormatError("observations and actions must be 2-D (steps, dim)")
        for name in ("actions", "rewards", "successes", "interventions", "terminals", "chunk_pos",
                     "timestamps_us", "next_observations"):
            if len(getattr(self, name)) != steps:
                raise EpisodeFormatError(f"{name} has {len(getattr(self, name))} steps, expected {steps}")
        if self.next_observations.shape != self.observations.shape:
            raise EpisodeFormatError("next_observations must have the shape of observations")
        if self.source not in SOURCES:
            raise EpisodeFormatError(f"unknown source {self.source!r}; expected one of {SOURCES}")
        if self.outcome not in OUTCOMES:
            raise EpisodeFormatError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")

    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def metadata(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in METADATA_KEYS}

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"lwd-episode-v{CONTENT_HASH_VERSION}".encode())
        digest.update(json.dumps(self.metadata(), sort_keys=True).encode())
        for name in ("observations", "actions", "rewards", "successes", "interventions", "terminals",
                     "chunk_pos", "timestamps_us", "next_observations"):
            array = getattr(self, name)
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.reshape(-1).view(np.uint8))  # the C-order bytes, without a copy
        return digest.hexdigest()

    def replace(self, **changes: Any) -> Episode:
        """A copy with changes; the id is recomputed from the new content."""
        return dataclasses.replace(self, episode_id="", **changes)

    # -- tabular form ------------------------------------------------------------------------------
    def strings(self) -> dict[str, str]:
        """The per-episode strings: the id and :meth:`metadata`."""
        return {name: getattr(self, name) for name in _STRING_COLUMNS}

    def to_arrow(self) -> pa.Table:
        """Every column of :data:`EPISODE_SCHEMA`, the per-episode strings repeated on every row."""
        steps = self.num_steps
        columns = {name: pa.repeat(pa.scalar(value, pa.string()), steps) for name, value in self.strings().items()}
        step_table = self._step_table()
        columns.update(zip(step_table.column_names, step_table.columns, strict=True))
        return pa.table({name: columns[name] for name in EPISODE_SCHEMA})

    def _step_table(self) -> pa.Table:
        """The per-step columns (:data:`STEP_COLUMNS`) straight from the arrays (no per-row Python
        objects): the vectors become list columns over one flat values buffer."""
        if self._decoded_steps is not None:
            return self._decoded_steps
        steps = self.num_steps
        done = np.zeros(steps, dtype=bool)
        done[-1] = True
        columns = {
            "step": pa.array(np.arange(steps, dtype=np.int32)),
            "obs": _list_array(self.observations),
            "action": _list_array(self.actions),
            "chunk_pos": pa.array(self.chunk_pos),
            "reward": pa.array(self.rewards),
            "success": pa.array(self.successes),
            "intervention": pa.array(self.interventions),
            "terminal": pa.array(self.terminals),
            "done": pa.array(done),
            "timestamp": pa.array(self.timestamps_us, type=pa.timestamp("us", tz="UTC")),
            "next_obs": _list_array(self.next_observations),
        }
        return pa.table({name: columns[name] for name in STEP_COLUMNS})

    def to_frame(self) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    @classmethod
    def from_arrow(cls, table: pa.Table, verify_id: bool = True) -> Episode:
        """From every column of :data:`EPISODE_SCHEMA` (a frame, or a layout-1 file): the per-episode
        strings must hold one value each for the whole episode."""
        check_arrow_schema(table.schema)
        if table.num_rows == 0:
            raise EpisodeFormatError("episode has no rows")
        return cls._from_steps(table, {key: _constant(table[key], key) for key in _STRING_COLUMNS}, verify_id)

    @classmethod
    def _from_steps(cls, table: pa.Table, strings: dict[str, str], verify_id: bool) -> Episode:
        """The one decoding path (Parquet bytes and frames both come here): step order and vector
        widths are checked on the column buffers, and the id is recomputed from the arrays those
        buffers hold. ``table`` has the per-step columns (its schema already checked)."""
        if table.num_rows == 0:
            raise EpisodeFormatError("episode has no rows")
        columns = {name: _single_chunk(table[name]) for name in STEP_COLUMNS}
        nulls = [name for name, column in columns.items() if column.null_count]
        if nulls:
            also = f" (so do {nulls[1:]})" if len(nulls) > 1 else ""
            raise EpisodeFormatError(f"column {nulls[0]!r} has nulls{also}")
        steps = columns["step"].to_numpy()
        order = np.arange(len(steps))
        if not np.array_equal(steps, order):
            if not np.array_equal(np.sort(steps), order):
                raise EpisodeFormatError("steps must be 0..T-1 with no gaps or repeats")
            columns = {name: column.take(np.argsort(steps, kind="stable")) for name, column in columns.items()}
        done = columns["done"].to_numpy(zero_copy_only=False)
        if not done[-1] or done[:-1].any():
            raise EpisodeFormatError("'done' must be set on the last step only")
        episode = cls(
            **{key: strings[key] for key in METADATA_KEYS},
            observations=_stack(columns["obs"], "obs"),
            actions=_stack(columns["action"], "action"),
            rewards=columns["reward"].to_numpy(),
            successes=columns["success"].to_numpy(zero_copy_only=False),
            interventions=columns["intervention"].to_numpy(zero_copy_only=False),
            terminals=columns["terminal"].to_numpy(zero_copy_only=False),
            chunk_pos=columns["chunk_pos"].to_numpy(),
            timestamps_us=columns["timestamp"].view(pa.int64()).to_numpy(),
            next_observations=_stack(columns["next_obs"], "next_obs"),
            episode_id=strings["episode_id"],
        )
        if verify_id and episode.content_hash() != strings["episode_id"]:  # an empty id was recomputed above
            raise EpisodeFormatError(
                f"episode_id {strings['episode_id'][:16]!r}... does not match its content (altered or corrupted)"
            )
        written = _canonical_schemas()[STEP_COLUMNS][1]
        if table.schema.equals(written) and not any(
                columns[name].values.null_count for name in ("obs", "action", "next_obs")):
            # Typed as written (a list's value field is named as this module names it), so that the
            # re-encoding is byte for byte the one built from the arrays.
            object.__setattr__(episode, "_decoded_steps", pa.Table.from_arrays(list(columns.values()), schema=written))
        return episode

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, verify_id: bool = True) -> Episode:
        return cls.from_arrow(frame.to_arrow(), verify_id=verify_id)

    # -- Parquet bytes -----------------------------------------------------------------------------
    def to_parquet_bytes(self, extra_metadata: dict[str, str] | None = None) -> bytes:
        """Layout 2: the per-step columns, and the per-episode strings in the footer beside
        ``extra_metadata`` (a signature, say), which must not name them."""
        content = {LAYOUT_KEY: FILE_LAYOUT, **{footer_key(name): value for name, value in self.strings().items()}}
        clash = sorted(set(extra_metadata or ()) & set(content))
        if clash:
            raise ValueError(f"extra metadata may not set the episode's own footer keys {clash}")
        sink = pa.BufferOutputStream()
        pq.write_table(self._step_table().replace_schema_metadata({**content, **(extra_metadata or {})}), sink,
                       **_WRITE_OPTIONS)
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_parquet_bytes(cls, data: bytes, verify_id: bool = True) -> Episode:
        return decode_episode(data, verify_id=verify_id)[0]


def decode_episode(data: bytes, max_rows: int | None = None, verify_id: bool = True) -> tuple[Episode, dict[str, str]]:
    """Parquet bytes of either layout -> (episode, key-value metadata), parsing the footer once. With
    ``max_rows`` the footer's bounds (:func:`check_footer_bounds`) are checked before any data page
    is decoded."""
    parquet = _open_parquet(data)
    if max_rows is not None:
        check_footer_bounds(parquet.metadata, max_rows)
    metadata = _key_value_metadata(parquet.metadata)
    strings = footer_strings(metadata)
    if strings is not None:
        check_arrow_schema(parquet.schema_arrow, STEP_COLUMNS)
    else:
        # Layout 1: the string columns read as dictionaries, so that a value stored once (a megabyte
        # instruction, say) is not expanded onto every row.
        present = [name for name in _STRING_COLUMNS if name in parquet.schema_arrow.names]
        parquet = pq.ParquetFile(pa.BufferReader(data), metadata=parquet.metadata, read_dictionary=present)
    try:
        table = parquet.read(use_threads=False)
    except Exception as exc:  # pyarrow raises several types for corrupt pages
        raise EpisodeFormatError(f"unreadable Parquet: {type(exc).__name__}: {exc}") from exc
    if strings is None:
        return Episode.from_arrow(table, verify_id=verify_id), metadata
    return Episode._from_steps(table, strings, verify_id), metadata


def footer_key(name: str) -> str:
    """Where a layout-2 file's footer keeps a per-episode string (``lwd.robot_id``, say)."""
    return f"lwd.{name}"


def footer_strings(metadata: dict[str, str]) -> dict[str, str] | None:
    """The per-episode strings of a layout-2 footer, checked (present, bounded); None for layout 1."""
    layout = metadata.get(LAYOUT_KEY, "1")
    if layout == "1":
        return None
    if layout != FILE_LAYOUT:
        raise EpisodeFormatError(f"unknown file layout {layout[:40]!r}; this reader knows '1' and {FILE_LAYOUT!r}")
    missing = [footer_key(name) for name in _STRING_COLUMNS if footer_key(name) not in metadata]
    if missing:
        raise EpisodeFormatError(f"footer metadata missing: {missing}")
    strings = {name: metadata[footer_key(name)] for name in _STRING_COLUMNS}
    long = {footer_key(name): len(value) for name, value in strings.items() if len(value) > MAX_FOOTER_VALUE_CHARS}
    if long:
        raise EpisodeFormatError(f"footer values over {MAX_FOOTER_VALUE_CHARS} characters: {long}")
    return strings


# Small files written on the hot path (robots upload, ingest re-encodes): LZ4, and no dictionaries or
# statistics (float pages gain nothing from them), cost a fraction of zstd with dictionary attempts,
# for ~10% more bytes.
_WRITE_OPTIONS: dict[str, Any] = {"compression": "lz4", "use_dictionary": False, "write_statistics": False}


def _list_array(rows: np.ndarray) -> pa.Array:
    steps, width = rows.shape
    offsets = pa.array(np.arange(0, (steps + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1)))


def _constant(column: pa.ChunkedArray, name: str) -> str:
    if column.null_count:
        raise EpisodeFormatError(f"column {name!r} must hold one value for the whole episode")
    if pa.types.is_dictionary(column.type):
        chunks = column.chunks
        if len(chunks) == 1 and len(chunks[0].dictionary) == 1:
            return chunks[0].dictionary[0].as_py()  # every row indexes the one value: nothing to compare
        column = column.cast(column.type.value_type)  # several row groups: compare the values
    first = column[0].as_py()
    if not pc.all(pc.equal(column, first)).as_py():
        raise EpisodeFormatError(f"column {name!r} must hold one value for the whole episode")
    return first


def _arrow_type_ok(name: str, kind: pa.DataType) -> bool:
    """``kind`` is the column's type, or an equivalent encoding of it (a frame's categorical or view)."""
    expected = EPISODE_SCHEMA[name]
    if pa.types.is_string(expected):
        if pa.types.is_dictionary(kind):  # a frame's categorical, or a layout-1 file written from one
            kind = kind.value_type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    if pa.types.is_list(expected):
        return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and kind.value_type == pa.float32()
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(kind) and kind.unit == "us" and kind.tz == "UTC"
    return kind == expected


@functools.cache
def _canonical_schemas() -> dict[tuple[str, ...], tuple[pa.Schema, ...]]:
    """Per set of columns, the schemas this module makes: a file's per-step columns as read back (what
    ingest and training compare most) and as written, and a frame's columns."""
    one_step = Episode(robot_id="r", task_id="t", instruction="i", policy_version="v", source="rollout",
                       outcome="failure", observations=np.zeros((1, 1)), actions=np.zeros((1, 1)), rewards=[-1.0],
                       successes=[False], interventions=[False], terminals=[False], chunk_pos=[0], timestamps_us=[1],
                       next_observations=np.zeros((1, 1)))
    read_back = _open_parquet(one_step.to_parquet_bytes()).schema_arrow
    return {STEP_COLUMNS: (read_back, one_step._step_table().schema), tuple(EPISODE_SCHEMA): (one_step.to_arrow().schema,)}


def check_arrow_schema(schema: pa.Schema, columns: tuple[str, ...] = tuple(EPISODE_SCHEMA)) -> None:
    """``schema`` has exactly ``columns`` (every column of :data:`EPISODE_SCHEMA` by default), each of
    its type."""
    if any(schema.equals(canonical) for canonical in _canonical_schemas().get(columns, ())):
        return  # what this module writes, or reads back from what it writes
    missing = [name for name in columns if name not in schema.names]
    if missing:
        raise EpisodeFormatError(f"missing columns: {missing}")
    extra = [name for name in schema.names if name not in columns]
    if extra:
        raise EpisodeFormatError(f"unexpected columns: {extra}")
    if len(set(schema.names)) != len(schema.names):
        raise EpisodeFormatError("repeated column names")
    wrong = {name: f"{schema.field(name).type} (expected {EPISODE_SCHEMA[name]})"
             for name in columns if not _arrow_type_ok(name, schema.field(name).type)}
    if wrong:
        raise EpisodeFormatError(f"wrong column types: {wrong}")


def _open_parquet(data: bytes) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(pa.BufferReader(data))
    except Exception as exc:
        raise EpisodeFormatError(f"unreadable Parquet footer: {type(exc).__name__}: {exc}") from exc


def check_footer_bounds(meta: pq.FileMetaData, max_rows: int) -> None:
    """Reject from the footer alone, before any data page is decoded: more rows than an episode can
    have (the file's count, and its row groups' must agree), more columns than the schema, or a column
    whose uncompressed size (a multi-megabyte instruction string, say) or count of values (a vector
    of a million dictionary-encoded zeros per row, say) exceeds what that many rows can honestly take.
    These are the footer's figures as written; a footer hand-patched to understate them is not caught
    here."""
    rows = sum(meta.row_group(group).num_rows for group in range(meta.num_row_groups))
    if max(meta.num_rows, rows) > max_rows:
        raise EpisodeFormatError(f"too many rows: {max(meta.num_rows, rows)} > {max_rows} (from the footer; "
                                 "nothing decoded)")
    if rows != meta.num_rows:
        raise EpisodeFormatError(f"the footer counts {meta.num_rows} rows but its row groups {rows}")
    if meta.num_columns > len(EPISODE_SCHEMA):
        raise EpisodeFormatError(f"too many columns: {meta.num_columns} > {len(EPISODE_SCHEMA)}")
    sizes: dict[str, int] = {}
    values: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            sizes[column.path_in_schema] = sizes.get(column.path_in_schema, 0) + column.total_uncompressed_size
            values[column.path_in_schema] = values.get(column.path_in_schema, 0) + column.num_values
    limit = max(rows, 1) * MAX_ROW_BYTES + COLUMN_ALLOWANCE_BYTES
    for name, size in sizes.items():
        if size > limit:
            raise EpisodeFormatError(f"column {name!r} is {size} bytes uncompressed, over {limit} for {rows} rows")
    value_limit = max(rows, 1) * MAX_ROW_VALUES
    for name, count in values.items():
        if count > value_limit:
            raise EpisodeFormatError(f"column {name!r} holds {count} values, over {value_limit} for {rows} rows")


def _key_value_metadata(meta: pq.FileMetaData) -> dict[str, str]:
    try:
        return {key.decode(): value.decode() for key, value in (meta.metadata or {}).items()}
    except UnicodeDecodeError as exc:
        raise EpisodeFormatError(f"footer metadata is not UTF-8: {exc}") from exc


def read_parquet_metadata(data: bytes) -> dict[str, str]:
    return _key_value_metadata(_open_parquet(data).metadata)


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _stack(lists: pa.Array, name: str) -> np.ndarray:
    """(steps, width) float32 from a list column's offsets and values, without per-row objects."""
    offsets = lists.offsets.to_numpy()
    lengths = offsets[1:] - offsets[:-1]
    width = int(lengths[0])
    if (lengths != width).any():
        raise EpisodeFormatError(f"column {name!r} has rows of different lengths {np.unique(lengths).tolist()}")
    if width == 0:
        raise EpisodeFormatError(f"column {name!r} has empty rows")
    values = lists.values.slice(int(offsets[0]), len(lists) * width)
    # Nulls inside a row become NaN (not finite, so validation rejects them).
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(lists), width)

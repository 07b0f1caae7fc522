"""A snapshot's n-step transitions per buffer, built once and kept between rounds.

Transitions are built from each episode and the rewards its label table gives (never the reward column a
robot wrote), under one set of n-step settings. A cache holds what it last loaded per buffer, so the next
round reads only the episodes it does not hold; episodes an earlier process built come from the store's
replay segments (keys are content hashes, so a segment names exactly the episode and label table it was
built from); only the rest are read and built, and they become a new segment. Host memory is bounded by
``replay_capacity`` transitions per buffer, not by how large the buffers have grown.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lwd_core.algo.text import tokenize
from lwd_core.data.episode import Episode
from lwd_core.data.labels import label_rewards
from lwd_core.data.layout import (
    BufferKind,
    get_episode,
    replay_segment_key,
    replay_segments_prefix,
)
from lwd_core.data.nstep import NStepSchedule, RunKind, build_transitions
from lwd_core.data.snapshot import Snapshot, SnapshotEpisode
from lwd_core.store import ObjectStore, StoreError, now_us
from lwd_core.suite import KNOWN_TASKS, TASK_INDEX, sparse_rewards

log = logging.getLogger(__name__)

Transitions = dict[str, np.ndarray]
BUFFER_KINDS: tuple[BufferKind, ...] = ("offline", "online")


@dataclass(frozen=True)
class TransitionSettings:
    """What the rows of a transition depend on besides the episode and its labels."""

    stage: RunKind
    chunk: int
    discount: float
    schedule: NStepSchedule

    @classmethod
    def of(cls, algo, stage: RunKind) -> TransitionSettings:
        return cls(stage, algo.action_chunk, algo.discount, NStepSchedule.from_config(algo))

    @property
    def digest(self) -> str:
        return hashlib.blake2b(repr(self).encode(), digest_size=8).hexdigest()


def build_episode_transitions(episodes: Sequence[Episode], rewards: Sequence[np.ndarray],
                              settings: TransitionSettings) -> Transitions:
    """The suite's tasks (index, instruction tokens, n for their horizon) over these episodes."""
    return build_transitions(
        episodes, rewards, chunk=settings.chunk, gamma=settings.discount,
        n_for_task={t.task_id: settings.schedule.n_for(t.horizon, settings.stage) for t in KNOWN_TASKS},
        task_index=TASK_INDEX, tokens_for_task={t.task_id: tokenize(t.instruction) for t in KNOWN_TASKS},
    )


def within_capacity(entries: list[SnapshotEpisode], capacity: int) -> list[SnapshotEpisode]:
    """All entries if their steps fit ``capacity`` (0: no cap), else the whole episodes whose ids hash
    lowest (a uniform choice that is the same in every round: an episode once chosen stays chosen
    unless newer ones outrank it), in manifest order."""
    steps = [max(1, entry.steps) for entry in entries]
    if not capacity or sum(steps) <= capacity:
        return entries
    rank = sorted(range(len(entries)),
                  key=lambda i: hashlib.blake2b(entries[i].episode_id.encode(), digest_size=8).digest())
    chosen, total = [], 0
    for index in rank:
        if total + steps[index] <= capacity:
            chosen.append(index)
            total += steps[index]
    return [entries[index] for index in sorted(chosen)]


def chosen_episodes(snapshot: Snapshot, kind: BufferKind, capacity: int) -> list[SnapshotEpisode]:
    """The labelled episodes of one buffer that a training run holds (see :func:`within_capacity`)."""
    return within_capacity(snapshot.labelled(kind), capacity)


def piece_id(entry: SnapshotEpisode) -> str:
    """An episode as built: its key and the label table its rewards came from."""
    return f"{entry.key}#{entry.label_table}"


@dataclass
class LoadedBuffer:
    """One buffer's transitions as last loaded, with each episode's rows."""

    settings: TransitionSettings
    rows: dict[str, tuple[int, int]]  # piece id -> (start, stop)
    data: Transitions


@dataclass(frozen=True)
class Buffers:
    offline: Transitions | None
    online: Transitions | None

    @property
    def demonstrations(self) -> Transitions | None:
        """The demonstration rows of both buffers: what pretraining learns from."""
        parts = [{key: value[data["demo"]] for key, value in data.items()} for data in (self.offline, self.online)
                 if data is not None and data["demo"].any()]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else None


class TransitionCache:
    """The transitions of the snapshots one learner process trains on, kept between its runs."""

    # Segments a buffer may have before a load writes them as one (the current choice of episodes).
    compact_after_segments = 8

    def __init__(self) -> None:
        self._loaded: dict[BufferKind, LoadedBuffer] = {}

    def load(self, store: ObjectStore, snapshot: Snapshot, algo, stage: RunKind, write_segments: bool = True) -> Buffers:
        """Both buffers' transitions of ``snapshot`` under ``algo``'s n-step settings for ``stage``."""
        settings = TransitionSettings.of(algo, stage)
        loaded = {kind: self._load_buffer(store, chosen_episodes(snapshot, kind, algo.replay_capacity), kind,
                                          settings, write_segments) for kind in BUFFER_KINDS}
        return Buffers(loaded["offline"], loaded["online"])

    def _load_buffer(self, store: ObjectStore, entries: list[SnapshotEpisode], kind: BufferKind,
                     settings: TransitionSettings, write_segments: bool) -> Transitions | None:
        if not entries:
            self._loaded.pop(kind, None)
            return None
        previous = self._loaded.get(kind)
        held = previous.rows if previous is not None and previous.settings == settings else {}
        pieces: dict[str, Transitions] = {
            piece: {name: values[begin:end] for name, values in previous.data.items()}
            for piece, (begin, end) in held.items()}
        wanted = {piece_id(entry) for entry in entries} - set(pieces)
        segments: list[str] = []
        if wanted:
            segments = sorted(store.list(replay_segments_prefix(kind, settings.digest), ".npz"))
            pieces.update(_segment_pieces(store, segments, wanted))
        built = _build_pieces(store, [entry for entry in entries if piece_id(entry) not in pieces], settings)
        pieces.update(built)
        rows, offset = {}, 0
        for entry in entries:
            size = len(pieces[piece_id(entry)]["obs"])
            rows[piece_id(entry)] = (offset, offset + size)
            offset += size
        data = {name: np.concatenate([pieces[piece_id(entry)][name] for entry in entries])
                for name in pieces[piece_id(entries[0])]}
        self._loaded[kind] = LoadedBuffer(settings, rows, data)
        if write_segments and built:
            key = replay_segment_key(kind, settings.digest, now_us())
            if len(segments) + 1 > self.compact_after_segments:  # one segment of what this load chose instead
                _write_segment(store, key, data, {piece: end - begin for piece, (begin, end) in rows.items()})
                for old in segments:
                    store.delete(old)
            else:
                arrays = {name: np.concatenate([piece[name] for piece in built.values()]) for name in data}
                _write_segment(store, key, arrays, {piece: len(values["obs"]) for piece, values in built.items()})
        return data


def _build_pieces(store: ObjectStore, entries: list[SnapshotEpisode], settings: TransitionSettings
                  ) -> dict[str, Transitions]:
    """Read and build these episodes, with the rewards their label tables give."""
    rewards: dict[str, np.ndarray] = {}
    for table in sorted({entry.label_table for entry in entries if entry.label_table}):
        rewards.update(label_rewards(store, table, {e.episode_id for e in entries if e.label_table == table}))
    pieces = {}
    for entry in entries:
        if entry.episode_id not in rewards:
            raise StoreError(f"label table {entry.label_table} has no row for episode {entry.episode_id}")
        episode = get_episode(store, entry.key)
        # Whoever can write to the store could swap a buffer file or a label table: the episode must be
        # the one the snapshot names, and its rewards the suite's rule applied to its success flags.
        if episode.episode_id != entry.episode_id:
            raise StoreError(f"{entry.key} holds episode {episode.episode_id}, not {entry.episode_id}: replaced in the store")
        if not np.array_equal(rewards[entry.episode_id], sparse_rewards(episode.successes)):
            raise StoreError(f"label table {entry.label_table} gives episode {entry.episode_id} rewards the suite's "
                             f"reward rule does not: the table was altered in the store, not trusted")
        pieces[piece_id(entry)] = build_episode_transitions([episode], [rewards[entry.episode_id]], settings)
    return pieces


def _write_segment(store: ObjectStore, key: str, arrays: Transitions, rows: dict[str, int]) -> None:
    """An ``.npz`` of plain arrays (read back without pickle): transitions of consecutive episodes, with
    each one's piece id and row count (``rows``, in order)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, segment_episode_keys=np.asarray(list(rows)),
             segment_episode_rows=np.asarray(list(rows.values()), np.int64))
    store.put_atomic(key, buffer.getvalue())


def _segment_pieces(store: ObjectStore, segments: list[str], wanted: set[str]) -> dict[str, Transitions]:
    """The wanted pieces found in these segments (newest first). A segment that is gone (compacted
    meanwhile) or unreadable is skipped: its episodes are built from the buffer instead."""
    found: dict[str, Transitions] = {}
    for segment in reversed(segments):
        if not wanted - set(found):
            break
        try:
            with np.load(io.BytesIO(store.get(segment)), allow_pickle=False) as data:
                keys = [str(key) for key in data["segment_episode_keys"]]
                if not set(keys) & (wanted - set(found)):
                    continue
                ends = np.cumsum(data["segment_episode_rows"])
                arrays = {name: data[name] for name in data.files if not name.startswith("segment_")}
        except (StoreError, OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            log.warning("replay segment %s skipped (%s): its episodes are read from the buffer", segment, error)
            continue
        for index, key in enumerate(keys):
            if key in wanted and key not in found:
                begin = int(ends[index - 1]) if index else 0
                found[key] = {name: values[begin:int(ends[index])] for name, values in arrays.items()}
    return found

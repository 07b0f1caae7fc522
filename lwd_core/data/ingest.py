"""Ingestion: uploaded episodes (``raw/``) -> validated, deduplicated ``buffer/online/`` or ``quarantine/``.

Exactly-once: the buffer key is the episode id (content hash). An episode already in either buffer is
a duplicate and only its raw copy is removed. Each raw object is removed only after its destination
(buffer or quarantine) is written, so a crash at any point leaves the raw copy to be processed again,
with the same result. Nothing malformed can reach the buffer: it must parse, match its id, pass the
signature check (when configured) and the GX suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from lwd_core.data.episode import Episode, EpisodeFormatError, read_parquet_metadata
from lwd_core.data.layout import (
    RAW_PREFIX,
    buffer_key,
    ingest_log_key,
    quarantine_key,
    quarantine_reason_key,
)
from lwd_core.data.validation import Expectations, validate_episodes
from lwd_core.faults import failpoint
from lwd_core.store import ObjectStore, now_us, sha256_hex

Status = Literal["accepted", "quarantined", "duplicate"]
# (episode, parquet key-value metadata) -> None if trusted, else the reason it is not.
SignatureCheck = Callable[[Episode, dict[str, str]], str | None]


@dataclass
class Outcome:
    raw_key: str
    status: Status
    episode_id: str | None = None
    task_id: str | None = None
    robot_id: str | None = None
    reasons: list[str] = field(default_factory=list)
    destination: str | None = None
    steps: int = 0
    finished_us: int | None = None
    ingested_us: int | None = None

    @property
    def latency_s(self) -> float | None:
        if self.finished_us is None or self.ingested_us is None:
            return None
        return (self.ingested_us - self.finished_us) / 1e6


@dataclass
class IngestReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for outcome in self.outcomes:
            for reason in outcome.reasons:
                head = reason.split(":")[0]
                reasons[head] = reasons.get(head, 0) + 1
        latencies = sorted(o.latency_s for o in self.outcomes if o.status == "accepted" and o.latency_s is not None)
        return {"seen": len(self.outcomes), "accepted": self.count("accepted"),
                "quarantined": self.count("quarantined"), "duplicates": self.count("duplicate"),
                "transitions_accepted": sum(o.steps for o in self.outcomes if o.status == "accepted"),
                "quarantine_reasons": reasons, "latency_s": latencies}


def pending_raw(store: ObjectStore, limit: int = 0) -> list[str]:
    """Uploaded episodes waiting for ingestion, oldest day first."""
    keys = store.list(RAW_PREFIX, suffix=".parquet")
    return keys[:limit] if limit else keys


def in_buffer(store: ObjectStore, task_id: str, episode_id: str) -> str | None:
    for kind in ("online", "offline"):
        key = buffer_key(kind, task_id, episode_id)
        if store.exists(key):
            return key
    return None


def quarantine(store: ObjectStore, raw: str, data: bytes, reasons: list[str], episode_id: str | None) -> str:
    name = episode_id or f"unparsed-{sha256_hex(data)}"
    key = quarantine_key(name)
    store.put_atomic(key, data)
    store.put_json(quarantine_reason_key(name), {"raw_key": raw, "reasons": reasons, "bytes": len(data),
                                                  "quarantined_us": now_us()})
    store.delete(raw)
    return key


def ingest_batch(
    store: ObjectStore,
    keys: list[str],
    expectations: Expectations,
    *,
    max_bytes: int = 64 * 2**20,
    check_signature: SignatureCheck | None = None,
) -> IngestReport:
    report = IngestReport()
    parsed: list[tuple[str, bytes, Episode, dict[str, str]]] = []
    for raw in keys:
        try:
            size = store.size(raw)
        except FileNotFoundError:
            continue  # taken by a concurrent ingest run
        if size > max_bytes:
            data = store.get(raw)
            report.outcomes.append(Outcome(raw, "quarantined", reasons=[f"oversized: {size} bytes > {max_bytes}"],
                                           destination=quarantine(store, raw, data, [f"oversized: {size} bytes"], None)))
            continue
        data = store.get(raw)
        try:
            metadata = read_parquet_metadata(data)
            episode = Episode.from_parquet_bytes(data, verify_id=True)
        except EpisodeFormatError as exc:
            reasons = [f"malformed: {exc}"]
            report.outcomes.append(Outcome(raw, "quarantined", reasons=reasons,
                                           destination=quarantine(store, raw, data, reasons, None)))
            continue
        if check_signature is not None:
            problem = check_signature(episode, metadata)
            if problem:
                reasons = [f"unauthenticated: {problem}"]
                report.outcomes.append(Outcome(raw, "quarantined", episode.episode_id, episode.task_id,
                                               episode.robot_id, reasons,
                                               quarantine(store, raw, data, reasons, episode.episode_id)))
                continue
        parsed.append((raw, data, episode, metadata))

    validation = validate_episodes([episode for _, _, episode, _ in parsed], expectations)
    seen: set[str] = set()
    for raw, data, episode, metadata in parsed:
        outcome = Outcome(raw, "accepted", episode.episode_id, episode.task_id, episode.robot_id,
                          steps=episode.num_steps, finished_us=int(episode.timestamps_us[-1]))
        reasons = validation.reasons(episode.episode_id)
        existing = None if reasons else in_buffer(store, episode.task_id, episode.episode_id)
        if reasons:
            outcome.status, outcome.reasons = "quarantined", [f"invalid: {r}" for r in reasons]
            outcome.destination = quarantine(store, raw, data, outcome.reasons, episode.episode_id)
        elif existing or episode.episode_id in seen:
            outcome.status, outcome.destination = "duplicate", existing
            outcome.reasons = ["duplicate: episode id already ingested"]
            store.delete(raw)
        else:
            outcome.destination = buffer_key("online", episode.task_id, episode.episode_id)
            store.put_atomic(outcome.destination, data)
            failpoint("ingest.after_buffer_put")
            outcome.ingested_us = now_us()
            store.delete(raw)
        seen.add(episode.episode_id)
        report.outcomes.append(outcome)
    return report


def write_ingest_log(store: ObjectStore, report: IngestReport, run_name: str) -> str:
    """Per-batch record (counts, reasons, per-episode latency): the audit trail and latency source."""
    key = ingest_log_key(now_us(), run_name)
    store.put_json(key, {"summary": report.summary(), "outcomes": [asdict(o) for o in report.outcomes]})
    return key

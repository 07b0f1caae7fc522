"""Ingestion: uploaded episodes (``raw/``) -> validated, deduplicated ``buffer/online/`` or ``quarantine/``.

Isolation: every object is settled on its own. Whatever one hostile object does (a decoder error, a
signature field that breaks the check, a pipe or link in a local store, a key no store would write),
it is quarantined with a bounded reason and the batch goes on; an unreachable store is the one error
that stops a batch, so that the task retries and nothing is discarded.

Exactly-once: the buffer key is the episode id (content hash). An episode already in either buffer is
a duplicate and only its raw copy is removed. Each raw object is removed only after its destination
(buffer or quarantine) is written, so a crash at any point leaves the raw copy to be processed again,
with the same result. Nothing malformed can reach the buffer: it must parse, match its id, pass the
signature check (when configured) and the GX suite.

Speed: each object is decoded once (:func:`~lwd_core.data.episode.decode_episode`), the micro-batch is
validated in one pass, the batch's buffer objects share one durability barrier
(:meth:`~lwd_core.store.ObjectStore.put_many_atomic`), and the appended episodes are labelled here,
their labels table the last object of the same commit.
Several workers share ``raw/`` by leasing shards of it for one micro-batch at a time
(:func:`ingest_next`).
"""

from __future__ import annotations

import errno
import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel

from lwd_core.data.episode import Episode, EpisodeFormatError, decode_episode
from lwd_core.data.labels import labels_table
from lwd_core.data.layout import (
    INGEST_LEASES_KEY,
    RAW_PREFIX,
    BufferKind,
    buffer_key,
    ingest_log_key,
    quarantine_key,
    quarantine_reason_key,
)
from lwd_core.data.outcomes import OutcomeCounts, takeovers
from lwd_core.data.validation import Expectations, validate_episodes
from lwd_core.faults import failpoint
from lwd_core.security import SIGNATURE_KEY, SIGNER_KEY
from lwd_core.store import ObjectStore, StoreError, now_us, sha256_hex

Status = Literal["accepted", "quarantined", "duplicate"]
# (episode, parquet key-value metadata) -> None if trusted, else the reason it is not.
SignatureCheck = Callable[[Episode, dict[str, str]], str | None]
# episode -> its labels row (lwd_core.data.labels.label_episode with the learner's settings).
Labeller = Callable[[Episode], dict]


@dataclass
class Outcome:
    raw_key: str
    status: Status
    episode_id: str | None = None
    task_id: str | None = None
    robot_id: str | None = None
    reasons: list[str] = field(default_factory=list)
    source: str | None = None  # rollout, demo or play
    destination: str | None = None
    steps: int = 0
    success: bool | None = None
    intervention_steps: int = 0
    takeovers: int = 0
    finished_us: int | None = None
    uploaded_us: int | None = None  # as the store's listing dated it
    ingested_us: int | None = None

    @property
    def latency_s(self) -> float | None:
        """Episode end to buffer."""
        if self.finished_us is None or self.ingested_us is None:
            return None
        return (self.ingested_us - self.finished_us) / 1e6

    @property
    def queued_s(self) -> float | None:
        """Upload to buffer: the part of the latency spent waiting in raw/ (the rest is the robot's)."""
        if self.uploaded_us is None or self.ingested_us is None:
            return None
        return (self.ingested_us - self.uploaded_us) / 1e6


class IngestSummary(BaseModel):
    """Counts of one ingest batch, or of a whole ingest run (:meth:`total`)."""

    seen: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    transitions_accepted: int = 0
    # Of the accepted rollouts (a teleoperator's demonstration or play is no robot's success;
    # lwd_core.data.outcomes): their steps, successes without a takeover, episodes and successes with
    # one, and takeovers.
    rollouts: int = 0
    rollout_steps: int = 0
    autonomous_successes: int = 0
    assisted_episodes: int = 0
    assisted_successes: int = 0
    takeovers: int = 0
    intervention_steps: int = 0
    quarantine_reasons: dict[str, int] = {}  # reason (up to its first ':') -> episodes
    latency_s: list[float] = []  # episode end -> buffer, per accepted episode, sorted
    queued_s: list[float] = []  # upload -> buffer, per accepted episode, sorted

    @classmethod
    def total(cls, parts: list[IngestSummary]) -> IngestSummary:
        counts = ("seen", "accepted", "quarantined", "duplicates", "transitions_accepted", "rollouts", "rollout_steps",
                  "autonomous_successes", "assisted_episodes", "assisted_successes", "takeovers", "intervention_steps")
        reasons: dict[str, int] = {}
        for part in parts:
            for reason, count in part.quarantine_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        return cls(**{name: sum(getattr(part, name) for part in parts) for name in counts},
                   quarantine_reasons=reasons, latency_s=sorted(x for part in parts for x in part.latency_s),
                   queued_s=sorted(x for part in parts for x in part.queued_s))

    def describe(self) -> str:
        """The run's counts as a log line a person reads."""
        rates = self.fleet_outcomes.rates()
        text = (f"{self.seen} seen, {self.accepted} accepted ({self.rollouts} robot rollouts, {self.rollout_steps} steps), "
                f"{self.quarantined} quarantined, {self.duplicates} duplicates")
        if self.rollouts:
            text += (f"; rollouts: autonomous success {rates['autonomous_success']:.0%}, assisted "
                     f"{rates['assisted_success']:.0%}, {self.takeovers} takeovers")
        if self.quarantine_reasons:
            text += "; quarantined for " + ", ".join(f"{reason} ({n})" for reason, n in self.quarantine_reasons.items())
        return text

    @property
    def fleet_outcomes(self) -> OutcomeCounts:
        return OutcomeCounts(episodes=self.rollouts, steps=self.rollout_steps,
                             autonomous_successes=self.autonomous_successes, assisted_episodes=self.assisted_episodes,
                             assisted_successes=self.assisted_successes, takeovers=self.takeovers)


class QuarantinedEpisode(BaseModel):
    raw_key: str
    reasons: list[str]


class IngestBatch(BaseModel):
    """What one micro-batch did, for the ingest flow: counts, its log's key, what was quarantined."""

    summary: IngestSummary
    log: str
    quarantined: list[QuarantinedEpisode]


@dataclass
class IngestReport:
    outcomes: list[Outcome] = field(default_factory=list)
    labels_key: str | None = None  # the labels table of this batch's accepted episodes

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    def summary(self) -> IngestSummary:
        reasons: dict[str, int] = {}
        for outcome in self.outcomes:
            for reason in outcome.reasons:
                head = reason.split(":")[0]
                reasons[head] = reasons.get(head, 0) + 1
        accepted = [o for o in self.outcomes if o.status == "accepted"]
        rollouts = [o for o in accepted if o.source == "rollout"]
        latencies = sorted(o.latency_s for o in accepted if o.latency_s is not None)
        queued = sorted(o.queued_s for o in accepted if o.queued_s is not None)
        return IngestSummary(seen=len(self.outcomes), accepted=self.count("accepted"),
                             quarantined=self.count("quarantined"), duplicates=self.count("duplicate"),
                             transitions_accepted=sum(o.steps for o in accepted),
                             rollouts=len(rollouts), rollout_steps=sum(o.steps for o in rollouts),
                             autonomous_successes=sum(bool(o.success) and not o.takeovers for o in rollouts),
                             assisted_episodes=sum(bool(o.takeovers) for o in rollouts),
                             assisted_successes=sum(bool(o.success) and bool(o.takeovers) for o in rollouts),
                             takeovers=sum(o.takeovers for o in rollouts),
                             intervention_steps=sum(o.intervention_steps for o in accepted),
                             quarantine_reasons=reasons, latency_s=latencies, queued_s=queued)

    def batch(self, log_key: str) -> IngestBatch:
        return IngestBatch(summary=self.summary(), log=log_key,
                           quarantined=[QuarantinedEpisode(raw_key=o.raw_key, reasons=o.reasons)
                                        for o in self.outcomes if o.status == "quarantined"])


def pending_raw(store: ObjectStore, limit: int = 0) -> list[str]:
    """Uploaded episodes waiting for ingestion, oldest day first."""
    keys = store.list(RAW_PREFIX, suffix=".parquet")
    return keys[:limit] if limit else keys


# -- several workers: leased shards of raw/ -----------------------------------------------------------
# raw/ splits into RAW_SHARDS by episode id, and a worker ingests from a shard only while it holds the
# shard's lease: two workers never handle one episode (its copies all fall in one shard), the work
# follows the backlog instead of a fixed split that one slow or dead worker holds up, and the leases of
# a worker that died lapse after ``lease_s`` for the others to take over. The leases are one small
# table object, so a claim is one read and one conditional write however many shards it takes.
RAW_SHARDS = 64
# With others at work, a claim takes its fair share of the unleased backlog (guided self-scheduling:
# shares shrink as the backlog drains, so the workers finish together), but never less than this, and
# never leaves less than this behind: a micro-batch has fixed costs (its durability barrier, the suite
# run) that small batches multiply.
MIN_CLAIM = 32


def shard_of(raw: str) -> int:
    """The shard of raw/ an upload is in: by its name (the episode id), so copies of one episode share it."""
    return int.from_bytes(hashlib.blake2b(raw.rsplit("/", 1)[-1].encode(), digest_size=8).digest(), "big") % RAW_SHARDS


@dataclass
class Claim:
    owner: str
    keys: list[str]
    shards: list[int]
    claimed_us: int
    uploaded_us: dict[str, int] = field(default_factory=dict)  # per key, from the listing


# A claim lists raw/ before it takes its leases. A shard another worker claims in between may be ingested
# and handed back before this claim's lease update, leaving this listing stale there: such a shard waits
# for a fresh listing, up to this many; the last attempt trusts its listing (a key already taken is only
# skipped by ingest, never buffered twice), so that a claim always ends.
CLAIM_ATTEMPTS = 3


def claim_uploads(store: ObjectStore, owner: str, batch_size: int = 64, lease_s: float = 120.0) -> Claim:
    """Lease shards of raw/ for one micro-batch: free shards, longest waiting first, up to
    ``batch_size`` uploads (oldest first), or to a fair share of the free backlog among the workers
    still at work. A shard claimed by another worker since raw/ was listed is not free to this claim;
    when that leaves it empty, raw/ is listed again, so that an empty claim means nothing is waiting:
    it marks its worker done, so the others stop counting it."""
    for attempt in range(1, CLAIM_ATTEMPTS + 1):
        claim, passed_over = _claim_from_one_listing(store, owner, batch_size, lease_s,
                                                     trust_listing=attempt == CLAIM_ATTEMPTS)
        if claim.keys or not passed_over:
            break
    return claim


def _claimed_us(table: object) -> dict[str, int | None]:
    return {shard: lease.get("claimed_us") for shard, lease in _section(table, "shards").items()}


def _claim_from_one_listing(store: ObjectStore, owner: str, batch_size: int, lease_s: float, trust_listing: bool
                            ) -> tuple[Claim, bool]:
    """One claim from one listing of raw/, and whether shards were passed over as claimed by others since
    that listing. The lease table is written without an fsync (a crash that loses it loses claims, never
    an episode) and compact (it is rewritten twice per micro-batch)."""
    # The leases as of the listing (read just before it): a claim after it changes its shard's claimed_us,
    # with no clock compared across machines.
    as_listed = _claimed_us(store.get_json_versioned(INGEST_LEASES_KEY)[0])
    uploaded = store.list_modified(RAW_PREFIX, suffix=".parquet")
    pending: dict[int, list[str]] = {}
    for key in sorted(uploaded, key=lambda key: (uploaded[key], key)):
        pending.setdefault(shard_of(key), []).append(key)
    claim = Claim(owner, [], [], 0)
    first = shard_of(owner)  # ties go round from a different shard per worker
    passed_over = False

    def take(table: dict | None) -> dict:
        nonlocal passed_over
        now = now_us()
        shards = _section(table, "shards")
        held = {name for name, lease in shards.items() if lease.get("expires_us", 0) > now and lease.get("owner") != owner}
        since = set() if trust_listing else {
            str(shard) for shard in pending if shards.get(str(shard), {}).get("claimed_us") != as_listed.get(str(shard))}
        passed_over = bool(since - held)
        held |= since
        workers = {name: seen for name, seen in _section(table, "workers").items()
                   if not seen.get("done") and seen.get("seen_us", 0) > now - lease_s * 1e6 and name != owner}

        def last_whole_turn_us(shard: int) -> int:
            return shards.get(str(shard), {}).get("served_us", 0)

        def waiting_since(shard: int) -> float:
            # Since its oldest upload (first come, first served: the backlog drains in order), or since
            # its last whole turn if later: what a whole turn left behind, an upload that cannot be
            # removed say, queues again behind the others instead of heading every claim.
            return max(uploaded[pending[shard][0]] * 1e6, last_whole_turn_us(shard))

        free = sorted((shard for shard in pending if str(shard) not in held),
                      key=lambda shard: (waiting_since(shard), (shard - first) % RAW_SHARDS))
        backlog = sum(len(pending[shard]) for shard in free)
        share = min(batch_size, max(MIN_CLAIM, math.ceil(backlog / (len(workers) + 1))))
        if backlog - share < MIN_CLAIM:
            share = min(batch_size, backlog)
        claim.keys, claim.shards, claim.claimed_us = [], [], now
        for shard in free:  # whole shards while they fit (a part left behind would be a runt batch)
            room = share - len(claim.keys)
            if room <= 0:
                break
            if len(pending[shard]) > room and claim.keys:
                continue
            claim.shards.append(shard)
            claim.keys += pending[shard][:room]
            # A shard too big for this claim keeps its place in line for the rest of its uploads.
            served = now if len(pending[shard]) <= room else last_whole_turn_us(shard)
            shards[str(shard)] = {"owner": owner, "claimed_us": now, "expires_us": now + int(lease_s * 1e6),
                                  "served_us": served}
        workers[owner] = {"seen_us": now, "done": not claim.keys and not passed_over}  # passed over: it lists again
        return {"shards": shards, "workers": workers}

    store.update_json(INGEST_LEASES_KEY, take, durable=False, indent=None)
    claim.keys.sort()
    claim.uploaded_us = {key: int(uploaded[key] * 1e6) for key in claim.keys}
    return claim, passed_over


def _section(table: object, name: str) -> dict[str, dict]:
    """One section of the lease table, whatever an older or damaged table holds there."""
    section = table.get(name) if isinstance(table, dict) else None
    return {key: value for key, value in section.items() if isinstance(value, dict)} if isinstance(section, dict) else {}


def release_claim(store: ObjectStore, claim: Claim) -> None:
    """Hand the claim's shards back; a lease that lapsed and was taken over is left to its new holder."""
    if not claim.shards:
        return

    def give_back(table: dict | None) -> dict:
        table = dict(table) if isinstance(table, dict) else {}
        shards = _section(table, "shards")
        for shard in claim.shards:
            lease = shards.get(str(shard), {})
            if lease.get("owner") == claim.owner and lease.get("claimed_us") == claim.claimed_us:
                shards[str(shard)] = lease | {"owner": None, "expires_us": 0}
        return table | {"shards": shards}

    store.update_json(INGEST_LEASES_KEY, give_back, durable=False, indent=None)


def ingest_next(store: ObjectStore, owner: str, expectations: Expectations, *, batch_size: int = 64,
                lease_s: float = 120.0, **options) -> IngestReport | None:
    """Claim, ingest (:func:`ingest_batch` with ``options``) and release one micro-batch; None when
    nothing is waiting that another worker does not hold. ``lease_s`` must outlast a micro-batch."""
    claim = claim_uploads(store, owner, batch_size, lease_s)
    try:
        if not claim.keys:
            return None
        report = ingest_batch(store, claim.keys, expectations, **options)
    finally:
        release_claim(store, claim)
    for outcome in report.outcomes:
        outcome.uploaded_us = claim.uploaded_us.get(outcome.raw_key)
    return report


def in_buffer(store: ObjectStore, task_id: str, episode_id: str) -> str | None:
    for kind in ("online", "offline"):
        key = buffer_key(kind, task_id, episode_id)
        if store.exists(key):
            return key
    return None


# Quarantine reasons are bounded: a hostile object must not write megabytes of "reason".
MAX_REASONS = 8
MAX_REASON_CHARS = 400


def bounded(reasons: list[str]) -> list[str]:
    kept = [r if len(r) <= MAX_REASON_CHARS else f"{r[:MAX_REASON_CHARS]}... ({len(r)} chars)" for r in reasons[:MAX_REASONS]]
    return kept + ([f"... and {len(reasons) - MAX_REASONS} more"] if len(reasons) > MAX_REASONS else [])


def quarantine(store: ObjectStore, raw: str, data: bytes | None, reasons: list[str], episode_id: str | None,
               keep_raw: bool = False) -> str:
    """Park the object (``data`` None: too big or unreadable, only the reason is kept) and remove the raw
    copy, which is what keeps a bad object from being seen again; ``keep_raw`` leaves it (an object the
    store refuses to hand over may be an operator's to recover)."""
    name = episode_id or f"unparsed-{sha256_hex(data if data is not None else raw.encode(errors='replace'))}"
    if data is not None:
        store.put_atomic(quarantine_key(name), data)
    reason_key = quarantine_reason_key(name)
    store.put_json(reason_key, {"raw_key": raw, "reasons": bounded(reasons),
                                "bytes": None if data is None else len(data), "quarantined_us": now_us()})
    if not keep_raw:
        store.discard(raw)
    return quarantine_key(name) if data is not None else reason_key


def _quarantined(store: ObjectStore, raw: str, data: bytes | None, reasons: list[str],
                 episode: Episode | None = None, keep_raw: bool = False) -> Outcome:
    reasons = bounded(reasons)
    outcome = Outcome(raw, "quarantined", reasons=reasons)
    if episode is not None:
        outcome.episode_id, outcome.task_id, outcome.robot_id = episode.episode_id, episode.task_id, episode.robot_id
    try:
        outcome.destination = quarantine(store, raw, data, reasons, outcome.episode_id, keep_raw)
    except Exception as exc:  # noqa: BLE001 - reported, and the batch goes on without it
        outcome.reasons = bounded([*reasons, f"not quarantined: {type(exc).__name__}: {exc}"])
    return outcome


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {exc}"


def _read_one(store: ObjectStore, raw: str, max_bytes: int, max_rows: int, check_signature: SignatureCheck | None
              ) -> Outcome | tuple[str, bytes, Episode, dict[str, str]]:
    """One raw object parsed and authenticated, with its signature fields, or the outcome that settles
    it (quarantined). Size, then the Parquet footer's bounds, are checked before anything is decoded."""
    data = store.get_bounded(raw, max_bytes)
    if isinstance(data, int) or len(data) > max_bytes:  # grown since the size was read: still too big
        size = data if isinstance(data, int) else len(data)
        return _quarantined(store, raw, None, [f"oversized: {size} bytes > {max_bytes}"])
    try:
        episode, metadata = decode_episode(data, max_rows=max_rows, verify_id=True)
    except EpisodeFormatError as exc:
        return _quarantined(store, raw, data, [f"malformed: {exc}"])
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file does to the decoder
        return _quarantined(store, raw, data, [f"malformed: {_error(exc)}"])
    if check_signature is not None:
        try:
            problem = check_signature(episode, metadata)
        except Exception as exc:  # noqa: BLE001
            problem = _error(exc)
        if problem:
            return _quarantined(store, raw, data, [f"unauthenticated: {problem}"], episode)
    # Only the signature fields go on (to the buffer copy), and only of a signature's size.
    kept = _signature_fields(metadata)
    long = sorted(key for key, value in kept.items() if len(value) > MAX_SIGNATURE_FIELD_CHARS)
    if long:
        return _quarantined(store, raw, data, [f"malformed: footer {long} over {MAX_SIGNATURE_FIELD_CHARS} characters"],
                            episode)
    return raw, data, episode, kept


@dataclass
class _Refused:
    """A read the store refused for this object (settled after the batch's reads: see ingest_batch)."""
    raw: str
    error: OSError


def _settle_read(store: ObjectStore, raw: str, max_bytes: int, max_rows: int, check_signature: SignatureCheck | None
                 ) -> Outcome | _Refused | tuple[str, bytes, Episode, dict[str, str]] | None:
    try:
        return _read_one(store, raw, max_bytes, max_rows, check_signature)
    except FileNotFoundError:
        return None  # taken by a concurrent ingest run
    except (StoreError, ValueError) as exc:  # refused by the store: a pipe, a link, a key it never writes
        return _quarantined(store, raw, None, [f"unreadable: {_error(exc)}"])
    except OSError as exc:
        if not _refused(exc):
            raise
        return _Refused(raw, exc)
    # Anything else (the store unreachable) propagates: the task retries, nothing is discarded.


def _settle_refusals(store: ObjectStore, reads: list) -> list[Outcome]:
    """Reads the store refused. When it refused every object of the batch, the store is refusing us
    (credentials, a policy; on S3 a refused HEAD names no cause): the batch stops, to be retried. Else
    each is reported and left in raw/: a misconfigured permission must not cost the fleet its uploads,
    and its shard's turn still passes, so it waits behind the others instead of heading every claim."""
    refused = [item for item in reads if isinstance(item, _Refused)]
    if refused and len(refused) == sum(item is not None for item in reads):
        raise StoreError(f"the store refused every object of the batch ({len(refused)}), e.g. "
                         f"{refused[0].raw}: {_error(refused[0].error)}") from refused[0].error
    return [_quarantined(store, item.raw, None, [f"unreadable, left in raw/: {_error(item.error)}"], keep_raw=True)
            for item in refused]


# S3 refusals s3fs also raises as PermissionError that are about the credentials, not one object: every
# read would fail the same way, so they stop the batch like an unreachable store.
STORE_WIDE_REFUSALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                                 "RequestTimeTooSkewed", "AccountProblem", "AllAccessDisabled", "NotSignedUp"})


def _refused(exc: OSError) -> bool:
    """Whether the store refused this one object (its file mode, an S3 AccessDenied on it, a link that
    replaced it after the check): settled on its own. Connection errors and timeouts are OSErrors too,
    and are not."""
    if isinstance(exc, PermissionError):
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
        return code not in STORE_WIDE_REFUSALS
    return isinstance(exc, (IsADirectoryError, NotADirectoryError)) or exc.errno == errno.ELOOP


# An Ed25519 signature in hex is 128 characters, a signer a robot id of at most 128.
MAX_SIGNATURE_FIELD_CHARS = 256


def _signature_fields(metadata: dict[str, str]) -> dict[str, str]:
    return {key: metadata[key] for key in (SIGNATURE_KEY, SIGNER_KEY) if key in metadata}


def _validate(episodes: list[Episode], expectations: Expectations) -> dict[str, list[str]]:
    """Failed checks per episode id: one suite run for the batch, or per episode if the batch run
    fails, so that one episode that breaks the suite cannot fail the others."""
    try:
        report = validate_episodes(episodes, expectations)
        return {e.episode_id: report.reasons(e.episode_id) for e in episodes}
    except Exception:  # noqa: BLE001
        reasons = {}
        for episode in episodes:
            try:
                reasons[episode.episode_id] = validate_episodes([episode], expectations).reasons(episode.episode_id)
            except Exception as exc:  # noqa: BLE001
                reasons[episode.episode_id] = [_error(exc)]
        return reasons


def ingest_batch(
    store: ObjectStore,
    keys: list[str],
    expectations: Expectations,
    *,
    max_bytes: int = 16 * 2**20,
    check_signature: SignatureCheck | None = None,
    label: Labeller | None = None,
    workers: int = 4,
    kind: BufferKind = "online",
) -> IngestReport:
    """Every object is settled on its own: an error while handling one quarantines that one, with the
    reason, and the batch goes on. Reads (fetch, decode, hash, signature) and writes (re-encode, put,
    remove the raw copy) run on ``workers`` threads: the store's round trips and the Parquet codec
    release the GIL. With ``label``, the accepted episodes' labels are written as one table for the
    batch, in the buffer objects' group commit and after them (what is not labelled here, after a
    crash say, the label stage picks up). ``kind``: the buffer accepted episodes join (an import of
    demonstrations joins the offline one)."""
    report = IngestReport()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") if workers > 1 else nullcontext() as pool:
        each = pool.map if pool is not None else map
        reads = list(each(lambda raw: _settle_read(store, raw, max_bytes, expectations.max_steps, check_signature),
                              keys))
        parsed = [item for item in reads if isinstance(item, tuple)]
        report.outcomes += [item for item in reads if isinstance(item, Outcome)] + _settle_refusals(store, reads)
        failures = _validate([episode for _, _, episode, _ in parsed], expectations)

        writes = []
        seen: set[str] = set()
        for raw, data, episode, signature in parsed:
            reasons = failures.get(episode.episode_id, [])
            if reasons:
                report.outcomes.append(_quarantined(store, raw, data, [f"invalid: {r}" for r in reasons], episode))
                continue
            outcome = Outcome(raw, "accepted", episode.episode_id, episode.task_id, episode.robot_id,
                              steps=episode.num_steps, success=episode.outcome == "success", source=episode.source,
                              intervention_steps=int(episode.interventions.sum()),
                              takeovers=takeovers(episode.interventions),
                              finished_us=int(episode.timestamps_us[-1]))
            existing = in_buffer(store, episode.task_id, episode.episode_id)
            if existing or episode.episode_id in seen:
                outcome.status, outcome.destination = "duplicate", existing
                outcome.reasons = ["duplicate: episode id already ingested"]
                store.discard(raw)
            else:
                outcome.destination = buffer_key(kind, episode.task_id, episode.episode_id)
                writes.append((outcome, episode, signature))
            seen.add(episode.episode_id)
            report.outcomes.append(outcome)
        # Re-encoded from the parsed episode: the buffer holds exactly what the id (and so the
        # signature) covers, never extra bytes or metadata an uploader slipped in beside it.
        encoded = list(each(lambda item: item[1].to_parquet_bytes(item[2]), writes))
        objects = [(outcome.destination, data) for (outcome, _, _), data in zip(writes, encoded, strict=True)]
        # The labels table shares the episodes' group commit and becomes visible after them.
        labels = (_labels(label, [(outcome, episode) for outcome, episode, _ in writes], kind) if label is not None
                  else None)
        report.labels_key = labels[0] if labels is not None else None
        store.put_many_atomic(objects, workers=workers, last=labels)
        ingested = now_us()

        def settle(outcome: Outcome) -> None:
            failpoint("ingest.after_buffer_put")  # buffered, raw copy not yet removed
            outcome.ingested_us = ingested
            store.discard(outcome.raw_key)

        list(each(settle, [outcome for outcome, _, _ in writes]))
    return report


def _labels(label: Labeller, accepted: list[tuple[Outcome, Episode]], kind: BufferKind) -> tuple[str, bytes] | None:
    """The labels table of the episodes being buffered. One the labeller fails on is buffered
    unlabelled, with the reason on its outcome, for the label stage to retry (``unlabelled_keys``)
    rather than holding back the batch."""
    rows = []
    for outcome, episode in accepted:
        try:
            rows.append(label(episode))
        except Exception as exc:  # noqa: BLE001
            outcome.reasons = bounded([*outcome.reasons, f"not labelled: {_error(exc)}"])
    return labels_table(kind, rows) if rows else None


def write_ingest_log(store: ObjectStore, report: IngestReport, run_name: str) -> str:
    """Per-batch record (counts, reasons, per-episode latency): the audit trail and latency source."""
    key = ingest_log_key(now_us(), run_name)
    store.put_json(key, {"summary": report.summary().model_dump(), "outcomes": [asdict(o) for o in report.outcomes]})
    return key

"""Edge client: a robot's episodes go to local disk first, then to the object store, then an event.

Why a disk spool: the robot must never wait on the network, and nothing may be lost if the uploader,
the network or the process dies. An episode counts as finished once it is durably spooled
(temp file + fsync + rename). Upload is at-least-once and idempotent:

1. put the bytes under ``raw/<day>/<robot>/<episode_id>.parquet`` (day from the episode's own end
   time, so a retry after a crash writes the very same key; the id is the content hash);
2. append the upload to ``uploaded.jsonl`` in the spool (fsync);
3. emit "episode uploaded" through the injected notifier (best effort: ingestion also runs on a
   schedule and lists ``raw/``, so a lost event only delays an episode);
4. delete the spool file.

A crash between 1 and 2 re-uploads the same bytes to the same key; between 2 and 4 the journal says the
upload happened and the file is just removed. Ingestion deduplicates by episode id, so the buffer holds
each episode exactly once either way. A spool file that cannot be read is moved to ``rejected/`` with
the reason and never uploaded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lwd_core.data.episode import Episode, EpisodeFormatError, read_parquet_metadata
from lwd_core.data.layout import raw_key, safe_name
from lwd_core.faults import failpoint
from lwd_core.store import ObjectStore, now_us

log = logging.getLogger(__name__)

Notifier = Callable[[dict[str, Any]], None]
JOURNAL = "uploaded.jsonl"
# Every episode ever spooled here (append-only): what reconciliation and soak tests count as finished.
LEDGER = "finished.jsonl"
OUTBOX = "outbox"
REJECTED = "rejected"
TEMP_SUFFIX = ".partial"


def fsync_write(path: Path, data: bytes) -> None:
    """Atomic and durable on local disk: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{uuid.uuid4().hex}{TEMP_SUFFIX}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a crash mid-append
    return records


@dataclass
class FlushReport:
    uploaded: list[str] = field(default_factory=list)  # episode ids
    already_uploaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file name -> error
    rejected: dict[str, str] = field(default_factory=dict)
    notify_errors: int = 0


class EdgeClient:
    def __init__(
        self,
        spool_dir: str | os.PathLike,
        store: ObjectStore,
        notify: Notifier | None = None,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        sign: Callable[[Episode], dict[str, str]] | None = None,
    ):
        self.root = Path(spool_dir)
        self.outbox = self.root / OUTBOX
        self.rejected = self.root / REJECTED
        for directory in (self.outbox, self.rejected):
            directory.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.notify = notify
        self.retries, self.backoff_s, self.max_backoff_s, self.sleep = retries, backoff_s, max_backoff_s, sleep
        self.sign = sign
        self._lock = threading.Lock()  # one flush at a time per spool
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.totals = FlushReport()
        self._discard_partials()

    # -- spooling (actor side; never touches the network) ------------------------------------------
    def spool(self, episode: Episode) -> Path:
        """Durably keep a finished episode for upload; returns its spool path."""
        robot = safe_name(episode.robot_id, "robot id")
        metadata = {"lwd.finished_us": str(int(episode.timestamps_us[-1])), "lwd.spooled_us": str(now_us())}
        if self.sign:
            metadata.update(self.sign(episode))
        path = self.outbox / f"{robot}__{episode.episode_id}.parquet"
        fsync_write(path, episode.to_parquet_bytes(metadata))
        self._append(LEDGER, {"episode_id": episode.episode_id, "robot_id": robot,
                              "finished_us": int(episode.timestamps_us[-1])})
        self._wake.set()
        return path

    def finished(self) -> list[dict[str, Any]]:
        """The ledger of spooled episodes (a torn last line from a crash is skipped)."""
        return _read_jsonl(self.root / LEDGER)

    def pending(self) -> list[Path]:
        return sorted(p for p in self.outbox.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))

    def _discard_partials(self) -> None:
        # A partial file is an episode whose spooling never completed: it was never "finished".
        for path in self.outbox.glob(f".*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)

    # -- upload (background or explicit) -----------------------------------------------------------
    def _journal(self) -> set[str]:
        return {record["file"] for record in _read_jsonl(self.root / JOURNAL) if "file" in record}

    def _append(self, name: str, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with open(self.root / name, "ab+") as handle:
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = b"\n" + line  # a crash tore the last line: keep this record on its own line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _reject(self, path: Path, reason: str) -> None:
        os.replace(path, self.rejected / path.name)
        (self.rejected / f"{path.name}.reason.json").write_text(json.dumps({"reason": reason, "at_us": now_us()}))

    def _put_with_retries(self, key: str, data: bytes) -> None:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                self.store.put_atomic(key, data)
                return
            except Exception as exc:  # network, auth, outage: retry then give up for this flush
                if attempt == self.retries:
                    raise
                log.warning("upload of %s failed (%s: %s); retry %d in %.1fs", key, type(exc).__name__, exc,
                            attempt + 1, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def upload(self, path: Path, report: FlushReport, journal: set[str]) -> None:
        if path.name in journal:
            path.unlink(missing_ok=True)  # uploaded before a crash; only the cleanup was missing
            report.already_uploaded.append(path.stem.split("__", 1)[-1])
            return
        data = path.read_bytes()
        try:
            meta = read_parquet_metadata(data)
            episode_id, robot = meta["lwd.episode_id"], meta["lwd.robot_id"]
            finished = datetime.fromtimestamp(int(meta["lwd.finished_us"]) / 1e6, UTC)
            key = raw_key(robot, episode_id, finished)
        except (EpisodeFormatError, KeyError, ValueError) as exc:
            self._reject(path, f"unreadable spool file: {exc}")
            report.rejected[path.name] = str(exc)
            return
        self._put_with_retries(key, data)
        failpoint("edge.after_put")
        uploaded = now_us()
        self._append(JOURNAL, {"file": path.name, "episode_id": episode_id, "key": key, "uploaded_us": uploaded})
        failpoint("edge.after_journal")
        event = {"episode_id": episode_id, "robot_id": robot, "key": key, "uri": self.store.uri(key),
                 "bytes": len(data), "finished_us": int(meta["lwd.finished_us"]), "uploaded_us": uploaded}
        if self.notify is not None:
            try:
                self.notify(event)
            except Exception as exc:  # the scheduled ingest still finds the object
                report.notify_errors += 1
                log.warning("episode-uploaded event for %s failed: %s", episode_id, exc)
        path.unlink(missing_ok=True)
        report.uploaded.append(episode_id)

    def flush(self) -> FlushReport:
        """Upload everything spooled now; failures stay spooled for the next flush."""
        report = FlushReport()
        with self._lock:
            journal = self._journal()
            for path in self.pending():
                try:
                    self.upload(path, report, journal)
                except Exception as exc:
                    report.failed[path.name] = f"{type(exc).__name__}: {exc}"
            if not self.pending():
                self._compact_journal()
        for name in ("uploaded", "already_uploaded"):
            getattr(self.totals, name).extend(getattr(report, name))
        self.totals.failed = dict(report.failed)
        self.totals.rejected.update(report.rejected)
        self.totals.notify_errors += report.notify_errors
        return report

    def _compact_journal(self) -> None:
        # With an empty outbox no journal entry can matter any more.
        (self.root / JOURNAL).unlink(missing_ok=True)

    # -- background uploader -----------------------------------------------------------------------
    def start(self, interval_s: float = 1.0) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(interval_s)
                self._wake.clear()
                report = self.flush()
                if report.failed:
                    self._stop.wait(min(self.max_backoff_s, interval_s * 5))

        self._thread = threading.Thread(target=loop, name="edge-uploader", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = True) -> FlushReport | None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None
        return self.flush() if drain else None

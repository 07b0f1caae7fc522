"""Object store over fsspec: ``file://`` by default, ``s3://`` through s3fs.

Keys are relative POSIX paths under the store root (``raw/2026-11-24/robot-3/<id>.parquet``).

Atomicity, so a reader never sees half an object:
- local: write a hidden temp file in the target directory, fsync, then ``os.replace`` (atomic rename);
- S3: a single PUT (or a completed multipart upload) is only visible once whole.
Multi-object artifacts (checkpoints) are written object by object and then committed by writing a
manifest last (:meth:`ObjectStore.put_committed`); readers trust only committed prefixes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec

from lwd_core.config import LWDConfig, StorageConfig, reveal

TEMP_PREFIX = ".tmp-"


def _local_files(base: str) -> Iterator[str]:
    """Every file under a local directory: os.walk costs a fraction of fsspec's per-entry work
    (ingest lists raw/ per claim)."""
    return (os.path.join(directory, name) for directory, _, names in os.walk(base) for name in names)


def _listed(path: str, suffix: str) -> bool:
    """Whether a listing names this path: never an in-flight temp file."""
    name = posixpath.basename(path)
    return not name.startswith(TEMP_PREFIX) and name.endswith(suffix)


def _load_syncfs() -> Callable[[str], None] | None:
    """Linux ``syncfs(2)``: flush one filesystem's dirty data in one go (a group commit); None where
    there is none, and writers fsync file by file."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            if function(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error), directory)
        finally:
            os.close(fd)

    return syncfs


_syncfs = _load_syncfs()
COMMIT_MANIFEST = "_MANIFEST.json"


def commit_manifest_key(prefix: str) -> str:
    """The manifest that commits a multi-object artifact under ``prefix`` (:meth:`ObjectStore.put_committed`)."""
    return f"{prefix.strip('/')}/{COMMIT_MANIFEST}"


class StoreError(RuntimeError):
    pass


class IntegrityError(StoreError):
    """Stored bytes do not match the sha256 their manifest names."""


def now_us() -> int:
    """UTC wall-clock microseconds: the unit of every timestamp the system stores."""
    return time.time_ns() // 1000


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_key(key: str) -> str:
    """Reject keys that could escape the store root or name nothing."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid store key {key!r}: must be a non-empty relative POSIX path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid store key {key!r}: empty, '.' or '..' component")
    if parts[-1].startswith(TEMP_PREFIX):
        raise ValueError(f"invalid store key {key!r}: names starting {TEMP_PREFIX!r} are reserved")
    return key


class ObjectStore:
    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        protocol, _, root = url.partition("://")
        if not root:
            raise ValueError(f"store url {url!r} needs a scheme, e.g. file:///data or s3://bucket/prefix")
        self.url = url.rstrip("/")
        self.protocol = protocol
        self.storage_options = dict(storage_options or {})
        options = dict(self.storage_options)
        if protocol == "s3":
            # A poller must see new objects: never serve listings from cache.
            options.setdefault("use_listings_cache", False)
        self.fs = fsspec.filesystem(protocol, **options)
        attempts = options.get("config_kwargs", {}).get("retries", {}).get("max_attempts")
        if protocol == "s3" and attempts:
            # s3fs retries each call on its own too (a class default of 5); instances are cached per
            # options, so an instance with these options always wants this number.
            self.fs.retries = attempts
        self.root = root.rstrip("/") if protocol != "file" else str(Path(root).resolve())
        if protocol == "file":
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, storage: StorageConfig) -> ObjectStore:
        options: dict[str, Any] = {}
        if storage.url.startswith("s3://"):
            if storage.request_retries:
                # botocore's own attempts; s3fs's wrapper around each call gets the same number below.
                options["config_kwargs"] = {"retries": {"mode": "standard", "max_attempts": storage.request_retries}}
            if storage.key:
                options["key"] = reveal(storage.key)
            if storage.secret:
                options["secret"] = reveal(storage.secret)
            client_kwargs: dict[str, Any] = {}
            if storage.endpoint_url:
                client_kwargs["endpoint_url"] = storage.endpoint_url
            if storage.region:
                client_kwargs["region_name"] = storage.region
            if client_kwargs:
                options["client_kwargs"] = client_kwargs
        return cls(storage.url, options)

    def ensure_bucket(self) -> None:
        """Create the S3 bucket of this store if it is missing (no-op for file://)."""
        if self.protocol == "s3":
            bucket = self.root.split("/", 1)[0]
            if self.fs.exists(bucket):
                return
            region = self.storage_options.get("client_kwargs", {}).get("region_name")
            if region in (None, "us-east-1"):
                # S3 rejects LocationConstraint=us-east-1, which s3fs.mkdir would send.
                self.fs.call_s3("create_bucket", Bucket=bucket)
            else:
                self.fs.mkdir(bucket)

    # -- paths -------------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return posixpath.join(self.root, validate_key(key))

    def uri(self, key: str) -> str:
        return f"{self.protocol}://{self._path(key)}"

    def key_of(self, path: str) -> str:
        path = path.split("://", 1)[-1]
        root = self.root.rstrip("/") + "/"
        if not path.startswith(root):
            raise StoreError(f"{path!r} is outside store root {self.root!r}")
        return path[len(root) :]

    def _local_directory(self, path: str) -> str:
        """The directory a local write of ``path`` goes in, made if missing, but only inside the root: a
        directory linked out of it would take the write (and makedirs) elsewhere. Resolved before it is
        made, so nothing is created outside either; realpath resolves the missing tail as written."""
        directory = os.path.dirname(path)
        resolved = os.path.realpath(directory)
        if resolved != self.root and not resolved.startswith(self.root + os.sep):  # root is resolved at init
            raise StoreError(f"{self.key_of(path)!r}: its directory resolves outside the store root: refused")
        os.makedirs(directory, exist_ok=True)
        return directory

    # -- single objects ----------------------------------------------------------------------------
    def put_atomic(self, key: str, data: bytes, durable: bool = True) -> str:
        """Write ``data`` under ``key`` so that readers see either nothing or all of it; locally,
        ``durable=False`` skips the fsync (state a crash may lose, a lease say, but never tear)."""
        path = self._path(key)
        if self.protocol == "file":
            self._replace_local(self._local_directory(path), path, data, durable)
        else:
            self.fs.pipe_file(path, data)
        return self.uri(key)

    @staticmethod
    def _replace_local(directory: str, path: str, data: bytes, durable: bool) -> None:
        """A temp file in ``directory`` (already checked to lie inside the root), renamed over ``path``."""
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_many_atomic(self, items: list[tuple[str, bytes]], workers: int = 1,
                        last: tuple[str, bytes] | None = None) -> list[str]:
        """:meth:`put_atomic` for many objects with one durability barrier (group commit): locally all
        temp files are written, one ``syncfs`` makes them durable, then each is renamed into place;
        each object is still all-or-nothing. On S3 each PUT is atomic on its own (``workers`` at once).
        ``last`` (an index naming the others, say) becomes visible only after all of them, on any store."""
        if self.protocol != "file" or _syncfs is None or not (items or last):
            if workers <= 1 or len(items) <= 1:
                uris = [self.put_atomic(key, data) for key, data in items]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=workers) as pool:
                    uris = list(pool.map(lambda item: self.put_atomic(*item), items))
            return uris + ([self.put_atomic(*last)] if last is not None else [])
        items = [*items, last] if last is not None else items  # staged and renamed in order
        staged: list[tuple[str, str]] = []
        made: set[str] = set()
        try:
            for key, data in items:
                path = self._path(key)
                directory = os.path.dirname(path)
                if directory not in made:
                    made.add(self._local_directory(path))
                tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
                staged.append((tmp, path))
                with open(tmp, "wb") as handle:
                    handle.write(data)
            _syncfs(self.root)
            for tmp, path in staged:
                os.replace(tmp, path)
        finally:
            for tmp, _ in staged:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return [self.uri(key) for key, _ in items]

    def _readable(self, key: str) -> str:
        """The path of ``key``; locally only a regular file inside the root (never a link, a pipe or a
        device, which could point elsewhere or block a reader forever)."""
        path = self._path(key)
        if self.protocol == "file":
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"no object {key!r} in {self.url}") from exc
            if not stat.S_ISREG(mode):
                raise StoreError(f"{key!r} is not a regular file (a link, pipe or device): refused")
            if not os.path.realpath(path).startswith(self.root + os.sep):  # root is resolved at init
                raise StoreError(f"{key!r} resolves outside the store root: refused")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._readable(key))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no object {key!r} in {self.url}") from exc

    def get_bounded(self, key: str, max_bytes: int) -> bytes | int:
        """The object's bytes, or its size when that is over ``max_bytes`` (nothing read). Locally one
        open (never following a link, never blocking on a pipe) and one fstat, after the same
        containment check as :meth:`get`."""
        if self.protocol != "file":
            size = self.size(key)
            return size if size > max_bytes else self.get(key)
        path = self._readable(key)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StoreError(f"{key!r} is not a regular file (a link, pipe or device): refused")
            if info.st_size > max_bytes:
                return info.st_size
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read(max_bytes + 1)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._readable(key)))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def discard(self, key: str) -> None:
        """Remove an object exactly as :meth:`list` named it, even under a key this store would never
        write (an uploader's backslash, say), so such an object cannot sit at the head of a queue."""
        parts = key.split("/")
        if not key or key.startswith("/") or ".." in parts:
            raise ValueError(f"{key!r} does not name an object inside the store")
        path = posixpath.join(self.root, key)
        if self.protocol == "file":
            try:
                os.unlink(path)  # one syscall: no existence check first
            except FileNotFoundError:
                pass
        elif self.fs.exists(path):
            self.fs.rm_file(path)

    def _listing_root(self, prefix: str) -> str:
        return posixpath.join(self.root, prefix.strip("/")) if prefix else self.root

    def list(self, prefix: str = "", suffix: str = "") -> list[str]:
        """Keys under ``prefix`` (a directory-like prefix), sorted, without in-flight temp files."""
        base = self._listing_root(prefix)
        if self.protocol == "file":
            paths = _local_files(base)
        elif self.fs.exists(base):
            paths = self.fs.find(base)
        else:
            return []
        return sorted(self.key_of(path) for path in paths if _listed(path, suffix))

    def list_modified(self, prefix: str = "", suffix: str = "") -> dict[str, float]:
        """The keys :meth:`list` names, each with when it was last written (seconds since the epoch, by
        the store's clock): S3 returns it in the same listing; locally one ``lstat`` per object."""
        base = self._listing_root(prefix)
        modified: dict[str, float] = {}
        if self.protocol == "file":
            for path in _local_files(base):
                if _listed(path, suffix):
                    try:
                        modified[self.key_of(path)] = os.lstat(path).st_mtime
                    except FileNotFoundError:  # removed since the directory was read
                        continue
        elif self.fs.exists(base):
            for path, info in self.fs.find(base, detail=True).items():
                if _listed(path, suffix):
                    modified[self.key_of(path)] = info["LastModified"].timestamp()
        return modified

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_atomic(key, json.dumps(obj, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    # -- pointers: compare and swap -----------------------------------------------------------------
    def get_json_versioned(self, key: str) -> tuple[Any | None, str | None]:
        """The object and its generation (the MD5 of its bytes, which is its S3 ETag), or (None, None)."""
        try:
            data = self.get(key)
        except FileNotFoundError:
            return None, None
        return json.loads(data), hashlib.md5(data, usedforsecurity=False).hexdigest()

    def put_json_if(self, key: str, obj: Any, generation: str | None, durable: bool = True,
                    indent: int | None = 2) -> bool:
        """Write only if the object is still at ``generation`` (None: only if it does not exist yet);
        False when another writer got there first. S3 conditional writes (If-Match / If-None-Match);
        locally an exclusive lock around the compare and the atomic rename. ``indent`` None writes
        compact JSON (Python's C encoder: a large table rewritten often)."""
        data = json.dumps(obj, indent=indent, sort_keys=True).encode()
        if self.protocol == "file":
            path = self._path(key)
            directory = self._local_directory(path)
            lock = os.path.join(directory, f"{TEMP_PREFIX}lock-{os.path.basename(path)}")
            # Never through a link planted under the lock's name (it would create its target).
            with open(lock, "a", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW)) as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    if self.get_json_versioned(key)[1] != generation:
                        return False
                    self._replace_local(directory, path, data, durable)
                    return True
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        bucket, _, name = self._path(key).partition("/")
        condition = {"IfMatch": f'"{generation}"'} if generation else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=name, Body=data, **condition)
        except OSError as exc:  # s3fs wraps the S3 error; its code says whether the condition failed
            code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def update_json(self, key: str, change: Callable[[Any | None], Any], attempts: int = 50,
                    durable: bool = True, indent: int | None = 2) -> Any:
        """Read-modify-write that never loses a concurrent update: ``change`` (of the current object,
        None if absent) is retried on the newer object until its write lands."""
        for _ in range(attempts):
            current, generation = self.get_json_versioned(key)
            new = change(current)
            if self.put_json_if(key, new, generation, durable, indent):
                return new
            time.sleep(0.01)
        raise StoreError(f"{key!r}: gave up after {attempts} concurrent updates")

    def move(self, src: str, dst: str) -> None:
        """Copy to ``dst`` atomically, then delete ``src``: a crash leaves a copy, never neither."""
        self.put_atomic(dst, self.get(src))
        self.delete(src)

    # -- committed multi-object artifacts ----------------------------------------------------------
    def put_committed(
        self, prefix: str, objects: Mapping[str, bytes], extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write each object under ``prefix`` then a manifest of sha256s; the manifest is the commit."""
        prefix = prefix.strip("/")
        files = {}
        for name, data in objects.items():
            self.put_atomic(f"{prefix}/{name}", data)
            files[name] = {"sha256": sha256_hex(data), "bytes": len(data)}
        manifest = {"files": files, **(dict(extra) if extra else {})}
        self.put_json(commit_manifest_key(prefix), manifest)
        return manifest

    def is_committed(self, prefix: str) -> bool:
        return self.exists(commit_manifest_key(prefix))

    def get_committed(self, prefix: str, name: str, manifest_sha256: str | None = None) -> bytes:
        """Read one object of a committed artifact, checking its sha256 against the manifest (and the
        manifest's own bytes against ``manifest_sha256`` when a signed release names it)."""
        prefix = prefix.strip("/")
        if not self.is_committed(prefix):
            raise StoreError(f"{prefix!r} has no {COMMIT_MANIFEST}: not committed (partial write?)")
        manifest_bytes = self.get(commit_manifest_key(prefix))
        if manifest_sha256 is not None and sha256_hex(manifest_bytes) != manifest_sha256:
            raise IntegrityError(f"{commit_manifest_key(prefix)} does not match the signed release's manifest sha256")
        manifest = json.loads(manifest_bytes)
        if name not in manifest["files"]:
            raise StoreError(f"{name!r} is not part of committed artifact {prefix!r}")
        data = self.get(f"{prefix}/{name}")
        expected = manifest["files"][name]["sha256"]
        if sha256_hex(data) != expected:
            raise IntegrityError(f"{prefix}/{name}: sha256 mismatch with manifest (expected {expected})")
        return data

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"


def open_store(config: LWDConfig) -> ObjectStore:
    """The store named by an :class:`~lwd_core.config.LWDConfig`."""
    return ObjectStore.from_config(config.storage)

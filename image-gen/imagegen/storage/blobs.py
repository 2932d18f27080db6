"""The blob store interface: named bytes under relative keys, as a folder or a bucket holds them.

Keys are `/`-separated relative names (`<job>/001-<image>.png`); storage/layout.py says
which. A whole job is published at once: its blobs are staged, then made visible in one step
(a rename on a filesystem; on S3, every blob first and its `marker`, metadata.json, after
them, so a reader that goes by the marker never sees half a job). Failures other than a
missing key are OSError (ENOSPC or EDQUOT when the store is full); a store that cannot be
reached now (a bucket's service down) is BlobStoreUnavailable, an OSError too.

FileBlobs (storage/fileblobs.py) and S3Blobs (storage/s3blobs.py) implement it;
tests/contract/test_blobs.py holds the contract every implementation passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from imagegen.storage.layout import TMP_PREFIX as _STAGING

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_KEY = 512


class BlobNotFound(KeyError):
    """No blob has this key (or it vanished while being read)."""

    def __str__(self) -> str:
        return f"no blob {self.args[0]!r}" if self.args else "no such blob"


class BlobStoreUnavailable(ConnectionError):
    """The blob store cannot be reached now (network, timeouts, 5xx, bucket or credentials)."""


class BadKey(ValueError):
    """A key that could name something outside the store: absolute, `..`, empty parts."""


@dataclass(frozen=True)
class BlobInfo:
    """What a store tells of one blob without reading it."""

    key: str
    size: int
    modified_ns: int  # when it was written (a file's mtime, an object's Last-Modified)
    etag: str  # changes whenever the bytes do

    @property
    def modified(self) -> float:
        return self.modified_ns / 1e9


def check_key(key: str) -> str:
    """`key` if it is a well-formed relative key; BadKey otherwise.

    Segments are 1-128 of `A-Z a-z 0-9 . _ -`, none `.` or `..` nor a writer's `.tmp-*`;
    no leading or doubled `/`; the first does not start with `.` (the service's own folders).
    """
    if not key or len(key) > MAX_KEY:
        raise BadKey(f"not a blob key: {str(key)[:80]!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT.match(segment) or segment.startswith(_STAGING):
            raise BadKey(f"not a blob key: {key[:80]!r}")
    if segments[0].startswith("."):  # the service's own folders (.index, .jobs, ...)
        raise BadKey(f"not a blob key: {key[:80]!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A prefix to list or delete under: empty (everything), or a key, or a key and `/`."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class Publication(Protocol):
    """A job being published: blobs staged under one prefix, invisible until `commit`."""

    def put(self, name: str, data: bytes) -> None:
        """Stage one blob, `name` relative to the prefix (durable once `seal` returns)."""

    def seal(self) -> None:
        """Wait until every staged blob is durable; raises what a write raised."""

    def commit(self) -> None:
        """Make every staged blob visible at once. On failure nothing is visible."""

    def abort(self) -> None:
        """Take back everything this publication staged or committed (idempotent)."""


class Blobs(Protocol):
    """Named bytes: put, get, stream, stat, delete, list by prefix, publish a job at once."""

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        """Store `data` under `key` atomically (readers see the old or the new bytes)."""

    def get(self, key: str) -> bytes:
        """The blob's bytes; BlobNotFound if there is none."""

    def open(self, key: str) -> BinaryIO:
        """A binary stream of the blob's bytes (close it); BlobNotFound if there is none."""

    def info(self, key: str) -> BlobInfo:
        """Size, write time and etag of the blob; BlobNotFound if there is none."""

    def open_with_info(self, key: str) -> tuple[BinaryIO, BlobInfo]:
        """`open` and `info` of one and the same blob, in one step where the store can
        (one GET on S3 instead of a HEAD and a GET); BlobNotFound if there is none."""

    def touch(self, key: str) -> None:
        """Mark the blob as just used (a cache's LRU order); may do nothing. BlobNotFound."""

    def used_ns(self, key: str) -> int:
        """When the blob was last written or touched; BlobNotFound if there is none."""

    def delete(self, key: str) -> bool:
        """Remove the blob; whether there was one."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under `prefix` (`<job>/`), all at once where the store can;
        how many there were."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """The keys under `prefix` (visible blobs only, in no promised order)."""

    def publish(self, prefix: str, *, marker: str) -> Publication:
        """Begin publishing the blobs of one job under `prefix` (`<job>`). `marker` names
        the blob that says the job exists: it is visible no sooner than every other."""

    def writable(self) -> bool:
        """Whether new blobs can be written now (for /health)."""

    def sweep(self, older_than: float) -> int:
        """Remove what crashed writers left older than `older_than` seconds; how many."""

"""The image index: which job holds an image, the jobs in listing order, their metadata, and
job locks.

    <root>/.index/<image-uuid>  -> ../<job-uuid>/NNN-<image-uuid>.<ext>   (symlink)

ImageIndex is the interface; FileIndex keeps it in the images directory, beside the files of
FileBlobs, and storage/tableindex.py in database tables (SQLite on one node, PostgreSQL for
replicas sharing a bucket). In FileIndex an image lookup is one `readlink`, however many
jobs there are. Jobs are listed newest first by the mtime of their `.lock` file: the index
stages it as the job's last file and nothing writes it again, whereas the directory's own
mtime moves whenever an image in it is deleted. Changes to one job take an exclusive
`flock` on that file, so several Gunicorn worker processes can update one job safely. A
job's metadata is its metadata.json, as the blob store wrote it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from imagegen.storage import durable
from imagegen.storage.blobs import Blobs, Publication
from imagegen.storage.durable import Disk
from imagegen.storage.fileblobs import changed_before
from imagegen.storage.layout import LOCK, Layout, lock_key, metadata_key

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LINK_TARGET = re.compile(
    r"^\.\./(?P<key>(?P<job>[0-9a-f-]{36})/[0-9]{3}-(?P<image>[0-9a-f-]{36})\.(?:png|jpg|webp|gif|svg))$"
)


def normalize_id(value: str) -> str | None:
    """The canonical lower-case form of a well-formed UUID string, or None."""
    lowered = value.lower()
    return lowered if _UUID.match(lowered) else None


class ImageIndex(Protocol):
    """Exact-id lookups of images, the listing order of jobs, their metadata, per-job locks."""

    def stage(self, publication: Publication) -> None:
        """Stage what the index keeps beside a job's blobs, after them (FileIndex: `.lock`)."""

    def add(
        self, job_id: str, entries: list[tuple[str, str]], metadata: dict[str, Any]
    ) -> durable.Pending:
        """Index a job: its (image id, blob key) pairs and its metadata; wait for what this
        returns before relying on them."""

    def find(self, image_id: str) -> tuple[str, str] | None:
        """(job id, blob key) of a canonical image id, None if it is not indexed."""

    def contains(self, image_id: str) -> bool:
        """Whether the image is (still) indexed."""

    def remove(self, image_id: str) -> None:
        """Drop one image (nothing if it is not indexed)."""

    def remove_job(self, job_id: str, image_ids: list[str]) -> None:
        """Drop a job and these images of it (nothing of what is not indexed)."""

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        """A job's metadata by its canonical id; None if there is none (or it is damaged)."""

    def note_kept(self, job_id: str, metadata: dict[str, Any]) -> bool:
        """Note that a replica's spool keeps this copy of the job (storage/spool.py), so that
        every replica can say so, or renew the note; `add` ends it. False if the copy's note
        was abandoned (`abandon_kept`): that copy is never to be stored."""

    def kept(self, job_id: str) -> dict[str, Any] | None:
        """The metadata of a job noted as kept, renewed within spool.KEPT_FOR seconds and
        not stored since; None otherwise."""

    def abandon_kept(self, job_id: str, *, stale: bool) -> bool:
        """Whether no spool is to store a copy of the job: none is noted but abandoned ones
        (with `stale`, first abandoning the notes not renewed for spool.KEPT_FOR seconds)."""

    def forget_kept(self, job_id: str) -> None:
        """End a job's note as kept (its spool entry was set aside, or it is stored)."""

    def update(self, job_id: str, metadata: dict[str, Any]) -> None:
        """Keep the job's changed metadata (an image deleted), with the job's lock held."""

    def locked(self, job_id: str) -> AbstractContextManager[None]:
        """Hold the job's exclusive lock (FileNotFoundError if the job is gone)."""

    def job_order(
        self, at_most: int | None = None
    ) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
        """(stamp_ns, job id, metadata) of every stored job with a stamp of at most `at_most`
        (all: None), newest first. The metadata comes with the order where that costs
        nothing more (a database); None: ask `metadata` for the jobs that are wanted."""

    def stamp(self, job_id: str) -> int | None:
        """The job's listing time in ns, None if there is no such job."""

    def sweep(self, older_than: float, blobs: Blobs) -> int:
        """Drop entries whose image is gone, and blobs of `blobs` that no entry's job
        names, older than `older_than` seconds; how many."""


class FileIndex:
    """The index as symlinks in `<root>/.index`, job order from a scan of `<root>`."""

    def __init__(self, layout: Layout, *, fsync: bool = True) -> None:
        self._layout = layout
        self._dir = layout.index_dir
        self._disk = Disk(fsync=fsync)
        # This process's memory of the last scan (see job_order), shared by a worker's threads.
        self._scan: dict[str, Any] = {"stamps": {}}

    def stage(self, publication: Publication) -> None:
        """The empty `.lock`, last: its write time is the job's listing time."""
        publication.put(LOCK, b"")

    def add(
        self, job_id: str, entries: list[tuple[str, str]], metadata: dict[str, Any]
    ) -> durable.Pending:
        """Links only: the job's metadata is its metadata.json, published with it."""
        links: list[Path] = []
        try:
            for image_id, key in entries:
                link = self._dir / image_id
                os.symlink(f"../{key}", link)
                links.append(link)
        except BaseException:
            for link in links:
                _unlink(link)
            raise
        # So that a power cut cannot lose the links; it runs while the job is published.
        return durable.Pending(self._disk.sync_soon(self._dir))

    def find(self, image_id: str) -> tuple[str, str] | None:
        try:
            target = os.readlink(self._dir / image_id)
        except OSError:
            return None
        match = _LINK_TARGET.match(target)
        if not match or match["image"] != image_id:
            return None
        return match["job"], match["key"]

    def contains(self, image_id: str) -> bool:
        return os.path.lexists(self._dir / image_id)

    def remove(self, image_id: str) -> None:
        _unlink(self._dir / image_id)

    def remove_job(self, job_id: str, image_ids: list[str]) -> None:
        """The links; the job itself goes with its folder."""
        for image_id in image_ids:
            _unlink(self._dir / image_id)

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        try:
            metadata = json.loads(self._layout.path_of(metadata_key(job_id)).read_bytes())
        except (OSError, ValueError):
            return None
        return metadata if isinstance(metadata, dict) else None

    def update(self, job_id: str, metadata: dict[str, Any]) -> None:
        """Nothing: the store has written metadata.json, which is the job's metadata here."""

    # Only a bucket's store spools (storage/spool.py): on disk nothing is ever kept.
    def note_kept(self, job_id: str, metadata: dict[str, Any]) -> bool:
        """Nothing: the filesystem store never keeps a job."""
        return True

    def kept(self, job_id: str) -> dict[str, Any] | None:
        return None

    def abandon_kept(self, job_id: str, *, stale: bool) -> bool:
        """Nothing is kept: nothing to wait for."""
        return True

    def forget_kept(self, job_id: str) -> None:
        """Nothing: the filesystem store never keeps a job."""

    @contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """The flock of the job's `.lock`; FileNotFoundError if its folder is gone, or went
        while we waited for the lock (a delete renames it away)."""
        lock = self._layout.path_of(lock_key(job_id))
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.stat(lock)  # still here once we hold the lock?
            yield
        finally:
            os.close(fd)

    def job_order(
        self, at_most: int | None = None
    ) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
        """From the scan of the root (`scan_order`); metadata is read only when wanted."""
        for stamp, name in self.scan_order():
            if at_most is None or stamp <= at_most:
                yield stamp, name, None

    def scan_order(self) -> list[tuple[int, str]]:
        """Kept per process while the root directory's mtime says no job came or went: every
        save, delete and staging directory changes it. A scan is trusted only once that
        mtime is older than the scan by more than a clock tick, so a change made in the
        same tick as the scan still forces the next request to look again."""
        cache = self._scan
        root = self._layout.root
        changed = os.stat(root).st_mtime_ns
        order: list[tuple[int, str]] | None = cache.get("order")
        if order is not None and cache.get("trusted") == changed:
            return order
        scanned = time.time_ns()
        known: dict[str, int] = cache["stamps"]
        fresh: dict[str, int] = {}
        with os.scandir(root) as entries:
            for entry in entries:
                name = entry.name
                if not _UUID.match(name) or not entry.is_dir(follow_symlinks=False):
                    continue  # .index, .tmp-* staging and trash, stray files
                stamp = known.get(name)
                if stamp is None:
                    stamp = self.stamp(name)
                    if stamp is None:
                        continue
                fresh[name] = stamp
        order = sorted(((stamp, name) for name, stamp in fresh.items()), reverse=True)
        cache.update(
            stamps=fresh,
            order=order,
            trusted=changed if scanned - changed > 100_000_000 else None,
        )
        return order

    def stamp(self, job_id: str) -> int | None:
        """The lock file's mtime, which never changes once written (the directory's, for
        a job from elsewhere that has no lock file)."""
        lock = self._layout.path_of(lock_key(job_id))
        for path in (lock, lock.parent):
            with suppress(OSError):
                return os.stat(path).st_mtime_ns
        return None

    def sweep(self, older_than: float, blobs: Blobs) -> int:
        """Dangling links only: a job's files are renamed into place after its links are
        made, so no file of a job lacks its links (what a crashed writer staged is
        FileBlobs.sweep's). Other workers write and remove links meanwhile (every worker
        sweeps as it boots): a link that is gone by the time it is looked at is skipped."""
        removed = 0
        cutoff = time.time() - older_than
        with os.scandir(self._dir) as entries:
            for entry in entries:
                if (
                    entry.is_symlink()
                    and not os.path.exists(entry.path)
                    and changed_before(entry, cutoff)
                ):
                    _unlink(Path(entry.path))
                    removed += 1
        return removed


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)

"""The image index: which job holds an image, the jobs in listing order, and job locks.

    <root>/.index/<image-uuid>  -> ../<job-uuid>/NNN-<image-uuid>.<ext>   (symlink)

The index makes an image lookup one `readlink`, however many jobs there are. Jobs are listed
newest first by the mtime of their `.lock` file: save_job creates it as the job's last file
and nothing writes it again, whereas the directory's own mtime moves whenever an image in
it is deleted. Changes to one job take an exclusive `flock` on that file, so several
Gunicorn worker processes can update one job safely. ImageIndex is the interface a shared
index (a database) implements; FileIndex keeps it in the images directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from imagegen.storage import durable
from imagegen.storage.durable import Disk
from imagegen.storage.fileblobs import changed_before
from imagegen.storage.layout import Layout, lock_key

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LINK_TARGET = re.compile(
    r"^\.\./(?P<key>(?P<job>[0-9a-f-]{36})/[0-9]{3}-(?P<image>[0-9a-f-]{36})\.(?:png|jpg|webp|gif|svg))$"
)


def normalize_id(value: str) -> str | None:
    """The canonical lower-case form of a well-formed UUID string, or None."""
    lowered = value.lower()
    return lowered if _UUID.match(lowered) else None


class ImageIndex(Protocol):
    """Exact-id lookups of images, the listing order of jobs, and per-job locks."""

    def add(self, entries: list[tuple[str, str]]) -> durable.Pending:
        """Index (image id, blob key) pairs; wait for what this returns before relying on them."""

    def find(self, image_id: str) -> tuple[str, str] | None:
        """(job id, blob key) of a canonical image id, None if it is not indexed."""

    def contains(self, image_id: str) -> bool:
        """Whether the image is (still) indexed."""

    def remove(self, image_id: str) -> None:
        """Drop one image (nothing if it is not indexed)."""

    def locked(self, job_id: str) -> AbstractContextManager[None]:
        """Hold the job's exclusive lock (FileNotFoundError if the job is gone)."""

    def job_order(self) -> list[tuple[int, str]]:
        """(stamp_ns, job id) of every stored job, newest first."""

    def stamp(self, job_id: str) -> int | None:
        """The job's listing time in ns, None if there is no such job."""

    def sweep(self, older_than: float) -> int:
        """Drop entries whose image is gone, older than `older_than` seconds; how many."""


class FileIndex:
    """The index as symlinks in `<root>/.index`, job order from a scan of `<root>`."""

    def __init__(self, layout: Layout, *, fsync: bool = True) -> None:
        self._layout = layout
        self._dir = layout.index_dir
        self._disk = Disk(fsync=fsync)
        # This process's memory of the last scan (see job_order), shared by a worker's threads.
        self._scan: dict[str, Any] = {"stamps": {}}

    def add(self, entries: list[tuple[str, str]]) -> durable.Pending:
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

    @contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        fd = os.open(self._layout.path_of(lock_key(job_id)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def job_order(self) -> list[tuple[int, str]]:
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

    def sweep(self, older_than: float) -> int:
        """Other workers write and remove links meanwhile (every worker sweeps as it boots):
        a link that is gone by the time it is looked at is skipped."""
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

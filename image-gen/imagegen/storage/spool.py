"""The spool: jobs the upstream made (and billed) while the shared store could not take them.

    <images>/.spool/<job-uuid>/metadata.json           the job, exactly as it will be stored
    <images>/.spool/<job-uuid>/NNN-<image-uuid>.<ext>  its images
    <images>/.spool/.tmp-<random>/                     an entry being written (or a crash's)
    <images>/.spool/.damaged/<job-uuid>/               an entry that cannot be read, kept aside
    <images>/.spool/.superseded/<job-uuid>/            an entry another replica made again
    <images>/.spool/.lock                              flock()ed by the one process flushing

With a bucket (S3) and its index in a database, the store or the index may stop answering
after the upstream has answered. The image store (storage/images.py) then keeps the whole job
here instead of losing it: written in a staging folder, every file fsynced, renamed into
place in one step, so an entry is whole or absent (a crash mid-write leaves a `.tmp-*`
folder, swept later, never an entry). A Flusher thread per process writes kept jobs to the
store once it answers again, then removes them; one process of a replica flushes at a time
(the lock), the others wait for it. Flushing is idempotent: the job's id and image ids were
chosen before it was kept, blobs are put again under the same keys, and a job the index
already holds is not indexed twice. An entry survives a restart: the next process flushes it.

An entry is checked before it is flushed (its metadata parses, names its own id, and each
image's bytes match its sha256); one that does not is moved to `.damaged/` and logged, never
stored nor retried, and never stops a process from starting (an asynchronous job waiting for
it sees it there, `damaged`, and fails).

Where the index notes kept jobs for every replica (storage/tableindex.py), each flush renews
the notes of the entries it finds, whether the store answers or not: a note is its keeper's
while renewed. One not renewed for KEPT_FOR seconds (its keeper gone with its disk, say)
may be abandoned by a replica waiting for the job, which then makes it again from its kept
inputs; a keeper that finds its note abandoned (it came back) moves the entry to
`.superseded/` and never stores it, so a job is never stored twice. Only a bucket's store spools:
the filesystem store writes in the same directory, so it has nothing to wait for.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.storage.durable import Disk
from imagegen.storage.layout import METADATA, TMP_PREFIX

log = logging.getLogger(__name__)

DAMAGED = ".damaged"
_LOCK = ".lock"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_IMAGE_FILE = re.compile(r"^[0-9]{3}-[0-9a-f-]{36}\.(?:png|jpg|webp|gif|svg)$")
SUPERSEDED = ".superseded"
# The flusher's pause between tries while the store stays away: doubling, at most this.
# Each try renews the notes of the entries (see KEPT_FOR).
FIRST_PAUSE = 0.5
MAX_PAUSE = 15.0
# A kept job's note not renewed for this long has lost its keeper. Longer than the longest
# gap between two renewals of a live one: a pause (MAX_PAUSE) plus one try at a store that
# hangs instead of refusing (the S3 client's 3 attempts, each up to its 30 s read timeout).
KEPT_FOR = 120.0
_STALE_STAGING = 3600.0  # seconds before a staging folder is taken for a crashed writer's


def copy_of(metadata: dict[str, Any]) -> str:
    """Which copy of a job `metadata` describes: its image ids, in order (each copy made
    has ids of its own). The kept notes' key, with the job id (storage/tableindex.py)."""
    images = metadata.get("images")
    items = images if isinstance(images, list) else []
    ids = [image.get("id") for image in items if isinstance(image, dict)]
    return ",".join(str(image_id) for image_id in ids if image_id is not None)


class DamagedEntry(ValueError):
    """A spool entry that cannot be stored as it is (unreadable, malformed, wrong bytes)."""


class Superseded(Exception):
    """A kept job the store holds with other images (made again elsewhere): never stored."""


@dataclass(frozen=True)
class KeptJob:
    """A job of the spool: its metadata and its images' (file name, bytes)."""

    job_id: str
    metadata: dict[str, Any]
    files: list[tuple[str, bytes]]


class Spool:
    """Whole jobs kept in a local directory until the store takes them."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self._disk = Disk(fsync=fsync)

    # --- keeping ------------------------------------------------------------------------

    def keep(self, job_id: str, metadata: bytes, files: list[tuple[str, bytes]]) -> None:
        """Write a job atomically and durably: staged, fsynced, renamed into place."""
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name, data in [*files, (METADATA, metadata)]:
                self._disk.write_new(staging / name, data)
            self._disk.sync(staging)
            os.rename(staging, self.directory / job_id)
            self._disk.sync(self.directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    # --- reading ------------------------------------------------------------------------

    def entries(self) -> list[str]:
        """The job ids of whole entries, oldest first (a missing spool has none)."""
        found: list[tuple[float, str]] = []
        try:
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    if _UUID.match(entry.name) and entry.is_dir(follow_symlinks=False):
                        with suppress(OSError):
                            found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [name for _, name in sorted(found)]

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        """A kept job's metadata; None if it is not kept here (or cannot be read)."""
        if not _UUID.match(job_id):
            return None
        try:
            metadata = json.loads((self.directory / job_id / METADATA).read_bytes())
        except (OSError, ValueError):
            return None
        return metadata if isinstance(metadata, dict) else None

    def load(self, job_id: str) -> KeptJob:
        """The kept job, checked; DamagedEntry if it is not as its metadata says."""
        folder = self.directory / job_id
        try:
            metadata = json.loads((folder / METADATA).read_bytes())
        except (OSError, ValueError) as exc:
            raise DamagedEntry(f"its metadata cannot be read ({type(exc).__name__})") from None
        if not isinstance(metadata, dict) or metadata.get("job_id") != job_id:
            raise DamagedEntry("its metadata does not describe this job")
        images = metadata.get("images")
        if not isinstance(images, list):
            raise DamagedEntry("its metadata has no list of images")
        files = []
        for image in images:
            name = image.get("file") if isinstance(image, dict) else None
            if not isinstance(name, str) or not _IMAGE_FILE.match(name):
                raise DamagedEntry("its metadata names an image file badly")
            if not isinstance(image.get("id"), str) or not _UUID.match(image["id"]):
                raise DamagedEntry("its metadata names an image without a well-formed id")
            try:
                data = (folder / name).read_bytes()
            except OSError as exc:
                raise DamagedEntry(f"image {name} cannot be read ({type(exc).__name__})") from None
            if hashlib.sha256(data).hexdigest() != image.get("sha256"):
                raise DamagedEntry(f"image {name} does not match its sha256")
            files.append((name, data))
        return KeptJob(job_id, metadata, files)

    # --- after a flush ------------------------------------------------------------------

    def remove(self, job_id: str) -> None:
        """Drop a stored job's entry: renamed out of sight in one step, then removed."""
        trash = self.directory / f"{TMP_PREFIX}done-{uuid.uuid4().hex}"
        try:
            os.rename(self.directory / job_id, trash)
        except FileNotFoundError:
            return
        self._disk.sync(self.directory)
        shutil.rmtree(trash, ignore_errors=True)

    def set_aside(self, job_id: str, folder: str = DAMAGED) -> None:
        """Move an entry never to be stored to `folder` (a damaged one to `.damaged/`, one
        made again elsewhere to `.superseded/`), where it is kept for the operator."""
        aside = self.directory / folder
        aside.mkdir(exist_ok=True)
        target = aside / job_id
        if target.exists():
            target = aside / f"{job_id}-{uuid.uuid4().hex[:8]}"
        with suppress(FileNotFoundError):
            os.rename(self.directory / job_id, target)

    def damaged(self, job_id: str) -> bool:
        """Whether this job's entry was set aside as damaged (so it is never stored)."""
        aside = self.directory / DAMAGED
        if not _UUID.match(job_id) or not aside.is_dir():
            return False
        return (aside / job_id).exists() or any(aside.glob(f"{job_id}-*"))

    def sweep(self, older_than: float = _STALE_STAGING) -> int:
        """Remove staging folders of crashed writers older than `older_than` s; how many."""
        removed = 0
        cutoff = time.time() - older_than
        with suppress(FileNotFoundError, NotADirectoryError), os.scandir(self.directory) as listing:
            for entry in listing:
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                with suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed += 1
        return removed

    @contextmanager
    def flushing(self) -> Iterator[bool]:
        """Whether this process may flush now: the spool's flock, taken without waiting
        (another process of this replica holding it is flushing)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.error("spool %s cannot be locked: %s", self.directory, exc.strerror)
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)


# Writes one kept job to the store (idempotently); raises what the store raised.
StoreKept = Callable[[KeptJob], None]
# Renews the note of a kept job (id, metadata); False if it was abandoned: never store it.
RenewKept = Callable[[str, dict[str, Any]], bool]


class Flusher:
    """One thread per process that writes the spool's jobs to the store once it answers.

    `nudge` starts it when there is something to flush (at start-up, after a job is kept,
    when new work finds the store reachable); it tries at once, then after a pause that
    doubles up to MAX_PAUSE while the store stays away, and ends when the spool is empty.
    """

    def __init__(
        self,
        spool: Spool,
        store: StoreKept,
        *,
        unreachable: tuple[type[BaseException], ...],
        set_aside: Callable[[str], None] | None = None,
        renew: RenewKept | None = None,
    ) -> None:
        self.spool = spool
        self._store = store
        self._renew = renew
        self._set_aside = set_aside  # told the id of each entry set aside, never stored
        self._unreachable = unreachable
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._wake = threading.Event()

    def nudge(self) -> None:
        """Flush soon: start the thread (again, after a fork) if the spool holds a job."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if alive and self._pid == os.getpid():
                self._wake.set()
                return
            if not self.spool.entries():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="imagegen-spool", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        pause = FIRST_PAUSE
        while True:
            try:
                left = self.flush()
            except Exception:
                log.exception("spool: unexpected error while flushing")
                left = True
            if not left:
                with self._lock:  # a job kept meanwhile starts no thread while this one lives
                    if not self.spool.entries():
                        self._thread = None
                        return
            self._wake.wait(pause)
            self._wake.clear()
            pause = min(pause * 2, MAX_PAUSE)

    def flush(self) -> bool:
        """Write every kept job the store takes now; whether any is left. Another process
        holding the spool's lock is flushing: this one leaves it to it."""
        with self.spool.flushing() as mine:
            if not mine:
                return bool(self.spool.entries())
            self._renew_notes()
            for job_id in self.spool.entries():
                try:
                    kept = self.spool.load(job_id)
                except DamagedEntry as exc:
                    log.error("spool: job %s set aside in %s: %s", job_id, DAMAGED, exc)
                    self.spool.set_aside(job_id)
                    if self._set_aside is not None:
                        self._set_aside(job_id)
                    continue
                try:
                    self._store(kept)
                except Superseded as exc:
                    self._supersede(job_id, str(exc))
                    continue
                except self._unreachable:
                    log.warning("spool: the store is still out of reach; %s waits", job_id)
                    return True
                except Exception as exc:  # this job only (refused, say): the next ones go on
                    log.error(
                        "spool: job %s could not be stored (%s); it waits for the next try",
                        job_id,
                        type(exc).__name__,
                    )
                    continue
                self.spool.remove(job_id)
                log.info("spool: job %s stored (%d images)", job_id, len(kept.files))
        return bool(self.spool.entries())

    def _renew_notes(self) -> None:
        """Renew every entry's note, the store reachable or not; an entry whose note was
        abandoned (another replica made the job again) goes to `.superseded/`. An entry
        that cannot be read is left to the flush, which sets it aside."""
        if self._renew is None:
            return
        for job_id in self.spool.entries():
            metadata = self.spool.metadata(job_id)
            if metadata is None:
                continue
            try:
                mine = self._renew(job_id, metadata)
            except self._unreachable:
                return  # the index is away: nobody can read the notes either
            except Exception:
                log.exception("spool: the note of job %s could not be renewed", job_id)
                continue
            if not mine:
                self._supersede(job_id, "its note was abandoned")

    def _supersede(self, job_id: str, why: str) -> None:
        log.warning(
            "spool: job %s was made again by another replica while this one was not heard "
            "from (%s); its images here are never stored (moved to %s)",
            job_id,
            why,
            SUPERSEDED,
        )
        self.spool.set_aside(job_id, SUPERSEDED)
        if self._set_aside is not None:  # its live note, if any, goes too
            self._set_aside(job_id)

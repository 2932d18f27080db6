"""The job book on disk: asynchronous jobs' records, their leases, the slots and previews.

    <root>/.jobs/<job-uuid>/job.json         the job as it goes: queued, running, completed, failed
    <root>/.jobs/<job-uuid>/lock             flock()ed by the process that owns the job
    <root>/.jobs/<job-uuid>/webhook-secret   the caller's webhook signing secret (never served)
    <root>/.jobs/<job-uuid>/inputs/<name>    an edit's input images until the job ends (not served)
    <root>/.jobs/<job-uuid>/p<i>-<n>.<ext>   partial preview n of image i, as the upstream sent it
    <root>/.jobs/<job-uuid>/i<i>.<ext>       image i, finished before the whole job is stored
    <root>/.jobs/.active/<ns>-<job-uuid>     one empty file per unfinished job, in submission order
    <root>/.jobs/.webhooks/<ns>-<job-uuid>   the same file, moved here when the job ends with its
                                             webhook still to deliver
    <root>/.jobs/.slots/<n>                  flock()ed while a job runs: at most N run at once
    <root>/.jobs/.sweep                      flock()ed by the one process clearing out old records
    <root>/.jobs/.queue                      flock()ed by a bounded submission, from counting the
                                             jobs that wait to listing its own

Everything lives under the images directory, so every Gunicorn worker (and every replica
sharing the directory) sees the same jobs, and they survive restarts. A finished job's
images are stored as an ordinary job by ImageStore.save_job under the same id; the record
keeps what only an asynchronous job has (progress, previews, events, the error).

A lease (interfaces.Lease) is an exclusive `flock` on the job's lock file, held for as long
as a process has the job (queued in its memory, running, or delivering its webhook). The
kernel drops the lock when that process dies, however it dies, so "the lock is free but the
job is not finished" means exactly "its owner is gone": no heartbeat to tune, no pid that a
restarted container may reuse. Such a lease never lapses while its process lives, so the
`owner` and `lease_seconds` of the interface are not needed here, and renewing it only says
whether it is still held. The slots work the same way and bound the jobs running at once
across all processes sharing the directory (one host, or a shared filesystem with flock).

The two lists say what is left to do: a job on `.active/` is queued or running and takes a
place in the queue; one on `.webhooks/` has ended and only its webhook is left, so it takes
no place. The marker moves from one to the other in one rename, after the record says the
job ended, so a process that dies at any point leaves the job on a list for another to
adopt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from imagegen import strictjson
from imagegen.books.interfaces import (
    FINAL,
    PREVIEW_NAME,
    ClaimedJob,
    JobCopy,
    Lease,
    QueueLimitReached,
    Record,
    checked_input_name,
)
from imagegen.errors import InsufficientStorage
from imagegen.filelocks import lock_refused
from imagegen.storage.durable import Disk, is_disk_full
from imagegen.storage.fileblobs import mtime_of
from imagegen.storage.index import normalize_id
from imagegen.storage.layout import JOBS, TMP_PREFIX

_ACTIVE = ".active"
_DELIVERING = ".webhooks"
_SLOTS = ".slots"
_RECORD = "job.json"
_LOCK = "lock"
_SWEEP_LOCK = ".sweep"  # flock()ed by the process sweeping
_QUEUE_LOCK = ".queue"  # flock()ed by a bounded submitter from counting to listing its job
_INPUTS = "inputs"
_SECRET = "webhook-secret"  # noqa: S105 - a file name
_TMP_PREFIX = TMP_PREFIX
_MARKER = re.compile(r"^(?P<ns>[0-9]{20})-(?P<job>[0-9a-f-]{36})$")
# A marker whose record is missing this long is a submission that died half-way.
_ABANDONED_MARKER = 60.0


class FileLease:
    """An exclusive flock on one lock file; released by `release()` or by process death."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._mutex = threading.Lock()

    def renew(self) -> bool:
        """Whether the lock is still held: a flock lasts as long as its process."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock; releasing again does nothing. The descriptor is closed exactly
        once even when threads race here: a second close could close an unrelated file
        that reused the number (another holder's lock, say)."""
        with self._mutex:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def _try_flock(path: Path, *, create: bool) -> FileLease | None:
    """The lock on `path` if no other open file holds it; None if held (or missing)."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return FileLease(fd)


# A slot lock is held exclusively by the job running in it and shared, for an instant, by
# whoever counts the busy ones: a slot whose exclusive lock is refused while a shared one is
# granted is being counted, not run, and is free again within microseconds.
_COUNTED_RETRIES = 50
_COUNTED_PAUSE = 0.001


def _slot_held(path: Path) -> bool:
    """Whether a running job holds the slot lock at `path` (exclusively)."""
    return bool(lock_refused(path, fcntl.LOCK_SH))


def _take_slot_lock(path: Path) -> FileLease | None:
    """The slot lock at `path`, unless a running job holds it; a count holding it for an
    instant is waited for (a bounded number of short pauses)."""
    for _ in range(_COUNTED_RETRIES):
        slot = _try_flock(path, create=True)
        if slot is not None or _slot_held(path):
            return slot
        time.sleep(_COUNTED_PAUSE)
    return None


class FileJobBook:
    """The asynchronous jobs under `<root>/.jobs`, shared by every process (a JobBook)."""

    def __init__(self, root: Path, *, fsync: bool = True, max_running: int = 4) -> None:
        self.root = Path(root) / JOBS
        self._disk = Disk(fsync=fsync)
        self.max_running = max_running
        self._active = self.root / _ACTIVE
        self._delivering = self.root / _DELIVERING
        self._slots = self.root / _SLOTS
        self._prepared = False

    def prepare(self) -> None:
        """Create the directories, on the first job: a service never asked for an
        asynchronous job keeps its images directory as it was."""
        if not self._prepared:
            for path in (self.root, self._active, self._delivering, self._slots):
                path.mkdir(parents=True, exist_ok=True)
            self._prepared = True

    # --- records --------------------------------------------------------------------------

    def submit(
        self,
        record: Record,
        *,
        owner: str = "",
        lease_seconds: float = 0.0,
        webhook_secret: str | None = None,
        inputs: Mapping[str, bytes] | None = None,
        max_waiting: int | None = None,
    ) -> FileLease:
        """Write a new job's record and queue it; return its lease, already held.

        The record is written into a staging directory with its lock taken, then renamed
        into place, then listed as active: no other process can take a job before its
        submitter lets go of it, and nobody sees half a record. `inputs` (file name to
        bytes: an edit's uploads) are kept with it until the job ends, so that another
        process can run the job if this one dies. With `max_waiting`, the jobs that wait are
        counted and the staged job put in place under the `.queue` flock, which every
        bounded submitter takes: QueueLimitReached, and the staging removed, when that many
        wait already.
        """
        job_id = record["job_id"]
        staging = self.root / f"{_TMP_PREFIX}{job_id}"
        lease: FileLease | None = None
        try:
            self.prepare()
            staging.mkdir()
            lease = _try_flock(staging / _LOCK, create=True)
            assert lease is not None  # a new file nobody else has opened
            self._disk.write_new(staging / _RECORD, _dump(record))
            if inputs:
                (staging / _INPUTS).mkdir()
                for name, data in inputs.items():
                    self._disk.write_new(staging / _INPUTS / checked_input_name(name), data)
                self._disk.sync(staging / _INPUTS)
            if webhook_secret is not None:
                fd = os.open(staging / _SECRET, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with open(fd, "w", encoding="utf-8") as handle:
                    handle.write(webhook_secret)
            self._disk.sync(staging)
            with self._queue_lock(max_waiting is not None):
                if max_waiting is not None:
                    waiting = self.waiting(max_waiting)
                    if waiting >= max_waiting:
                        raise QueueLimitReached(waiting=waiting, limit=max_waiting)
                os.rename(staging, self.root / job_id)
                self._disk.sync(self.root)
                self._disk.write_new(self._active / record["marker"], b"")
                self._disk.sync(self._active)
        except BaseException as exc:
            if lease is not None:
                lease.release()
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                if (self.root / job_id).is_dir():
                    shutil.rmtree(self.root / job_id, ignore_errors=True)
            if is_disk_full(exc):
                raise InsufficientStorage(
                    "The image store is full; the job was not queued. Free space or delete "
                    "images, then try again."
                ) from None
            raise
        return lease

    @contextlib.contextmanager
    def _queue_lock(self, take: bool) -> Iterator[None]:
        """Hold the bounded submitters' flock (if `take`), waiting for it: its holders only
        count and list, so it is never held for long; a dead holder's lock drops with it."""
        if not take:
            yield
            return
        fd = os.open(self.root / _QUEUE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the flock

    def waiting(self, limit: int) -> int:
        """How many jobs wait, in every process: unended on the active list, less the slots
        held. A marker counts as unended unless the count reaches `limit`; then each record
        is read (a job whose record has just said it ended is still listed for a moment), so
        the count is exact from `limit` up. `submit` counts under the `.queue` flock."""
        busy = self.busy_slots()
        listed = self.active()
        waiting = len(listed) - busy
        if waiting >= limit:
            unended = 0
            for _, job_id in listed:
                record = self.read(job_id)
                if record is not None and record["status"] not in FINAL:
                    unended += 1
            waiting = unended - busy
        return waiting

    def read(self, job_id: str) -> Record | None:
        """The job's record, or None if there is none (or the id is not a UUID)."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        try:
            record = json.loads((self.root / canonical / _RECORD).read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def version(self, job_id: str) -> tuple[int, int] | None:
        """Changes whenever the record is rewritten (inode and mtime: each write is a rename),
        so a follower reads it only when there is something new; None once it is gone (or
        the id is not a UUID, as for `read`)."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        try:
            stat = os.stat(self.root / canonical / _RECORD)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def versions(self, job_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """`version` of each job that exists, by the id as given: one stat each (there is
        no query to save on a filesystem)."""
        found = {}
        for job_id in job_ids:
            version = self.version(job_id)
            if version is not None:
                found[job_id] = version
        return found

    def _changed_at(self, job_id: str) -> int | None:
        """The record's mtime in ns: a cheap "has it changed" for readers that follow it."""
        try:
            return os.stat(self.root / job_id / _RECORD).st_mtime_ns
        except OSError:
            return None

    def write(self, lease: Lease, record: Record, *, durable: bool = False) -> None:
        """Replace the record atomically. Only the holder of the job's `lease` writes it."""
        path = self.root / record["job_id"] / _RECORD
        temp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}")
        try:
            self._disk.write_new(temp, _dump(record), sync=durable)
            os.replace(temp, path)
            if durable:
                self._disk.sync(path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def read_input(self, job_id: str, name: str) -> bytes | None:
        """One of the inputs kept with the job by `create`; None once they are dropped."""
        try:
            return (self.root / job_id / _INPUTS / checked_input_name(name)).read_bytes()
        except OSError:
            return None

    def drop_inputs(self, job_id: str) -> None:
        """Remove the job's inputs: it has ended, and they are no longer needed."""
        shutil.rmtree(self.root / job_id / _INPUTS, ignore_errors=True)

    def webhook_secret(self, job_id: str) -> str | None:
        try:
            return (self.root / job_id / _SECRET).read_text(encoding="utf-8")
        except OSError:
            return None

    def job_ids(self) -> list[str]:
        """The id of every job with a record here (to move them: imagegen.migrate)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if normalize_id(name) == name)

    def export(self, job_id: str) -> JobCopy | None:
        """All this book keeps of the job (imagegen.migrate); None if it has no record."""
        record = self.read(job_id)
        if record is None:
            return None
        marker = str(record.get("marker", ""))
        listed = None
        if marker and (self._active / marker).exists():
            listed = "active"
        elif marker and (self._delivering / marker).exists():
            listed = "delivering"
        folder = self.root / job_id
        inputs = {}
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(folder / _INPUTS)):
                with contextlib.suppress(ValueError, OSError):
                    inputs[checked_input_name(name)] = (folder / _INPUTS / name).read_bytes()
        previews = {}
        for name in sorted(os.listdir(folder)):
            if PREVIEW_NAME.match(name):
                with contextlib.suppress(OSError):
                    previews[name] = (folder / name).read_bytes()
        return JobCopy(record, listed, self.webhook_secret(job_id), inputs, previews)

    # --- leases, the queue and the slots -------------------------------------------------

    def claim(self, owner: str = "", lease_seconds: float = 0.0) -> ClaimedJob | None:
        """Take the oldest listed job nobody holds (its process died, or let go of it).

        On the way, a marker whose record never appeared (a submission that died half-way)
        is dropped once it is old enough."""
        for marker, job_id in self.active() + self.delivering():
            lease = self._own(job_id)
            if lease is None:
                if self._marker_age(marker) > _ABANDONED_MARKER and self.read(job_id) is None:
                    self._drop_marker(marker)
                continue
            record = self.read(job_id)
            if record is None or record.get("marker") != marker:
                lease.release()
                if record is None:
                    self._drop_marker(marker)
                continue
            return ClaimedJob(record, lease)
        return None

    def _own(self, job_id: str) -> FileLease | None:
        """Take the job if nobody holds it (its owner died, or it was never taken)."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        return _try_flock(self.root / canonical / _LOCK, create=False)

    def is_held(self, job_id: str) -> bool:
        """Whether a live process holds the job right now."""
        lease = self._own(job_id)
        if lease is None:
            return (self.root / job_id / _LOCK).exists()
        lease.release()
        return False

    def active(self) -> list[tuple[str, str]]:
        """(marker, job id) of every unfinished job, oldest submission first."""
        return _listed(self._active)

    def delivering(self) -> list[tuple[str, str]]:
        """(marker, job id) of every ended job whose webhook is still to be delivered."""
        return _listed(self._delivering)

    def end(self, lease: Lease, record: Record, *, webhook_pending: bool) -> None:
        """Take an ended job off the active list (its record says so already): onto the
        delivery list while its webhook is pending, else off every list."""
        marker = record["marker"]
        if not webhook_pending:
            self._drop_marker(marker)
            return
        self._delivering.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # moved already: an adopted delivery
            os.rename(self._active / marker, self._delivering / marker)

    def finish(self, lease: Lease, record: Record) -> None:
        """Take a job off every list: it has ended and its webhook is done with."""
        self._drop_marker(record["marker"])

    def _marker_age(self, marker: str) -> float:
        """Seconds since the marker was listed (its name holds the submission time)."""
        match = _MARKER.match(marker)
        return (time.time_ns() - int(match["ns"])) / 1e9 if match else 0.0

    def _drop_marker(self, marker: str) -> None:
        for listing in (self._active, self._delivering):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listing / marker)

    def take_slot(self, owner: str = "", lease_seconds: float = 0.0) -> FileLease | None:
        """One of the `max_running` slots, if one is free."""
        numbers = list(range(self.max_running))
        random.shuffle(numbers)  # spreads processes over the slots
        self._slots.mkdir(parents=True, exist_ok=True)
        for number in numbers:
            slot = _take_slot_lock(self._slots / str(number))
            if slot is not None:
                return slot
        return None

    def busy_slots(self) -> int:
        """How many jobs run right now, in every process. Each slot is asked with a shared
        lock (_slot_held), so counting takes no slot from a job that starts meanwhile, nor
        looks like a running job to a count made at the same moment."""
        if not self._slots.is_dir():
            return 0
        return sum(_slot_held(self._slots / str(number)) for number in range(self.max_running))

    # --- previews -------------------------------------------------------------------------

    def save_preview(self, job_id: str, name: str, data: bytes) -> None:
        """Write a preview image under its final name in one rename."""
        if not PREVIEW_NAME.match(name):
            raise ValueError(f"not a preview name: {name!r}")
        path = self.root / job_id / name
        temp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}")
        try:
            self._disk.write_new(temp, data, sync=False)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def preview(self, job_id: str, name: str) -> bytes | None:
        """The preview's bytes, if the job and the preview exist."""
        canonical = normalize_id(job_id)
        if canonical is None or not PREVIEW_NAME.match(name):
            return None
        try:
            return (self.root / canonical / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    # --- removing -------------------------------------------------------------------------

    def remove(self, job_id: str) -> bool:
        """Remove a job's record and previews in one rename; False if there was none."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return False
        trash = self.root / f"{_TMP_PREFIX}deleted-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(self.root / canonical, trash)
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def sweep(self, retention: float, *, stale: float = 3600.0) -> int:
        """Remove finished records older than `retention` seconds and crash leftovers.

        Leftovers: staging directories and markers without a record (a submission that died
        half-way, never answered), and records of unfinished jobs that are on no list.
        One process sweeps at a time; the others skip it (and return 0).
        """
        sweeping = _try_flock(self.root / _SWEEP_LOCK, create=True)
        if sweeping is None:  # another process is sweeping, or there are no records yet
            return 0
        try:
            return self._sweep(retention, stale)
        finally:
            sweeping.release()

    def _sweep(self, retention: float, stale: float) -> int:
        removed = 0
        now = time.time()
        markers = self.active() + self.delivering()
        listed = {job for _, job in markers}
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            name = entry.name
            mtime = mtime_of(entry)
            if mtime is None:  # removed by another process since the listing
                continue
            age = now - mtime
            if name.startswith(_TMP_PREFIX):
                if age > stale:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
                continue
            if normalize_id(name) != name or name in listed:
                continue
            record = self.read(name)
            changed = self._changed_at(name)
            quiet = now - (changed / 1e9 if changed else mtime)
            finished = record is not None and record.get("status") in FINAL
            expired = quiet > retention if finished else quiet > stale
            if expired and not self.is_held(name) and self.remove(name):
                removed += 1
        for marker, job_id in markers:
            if not (self.root / job_id).is_dir() and self._marker_age(marker) > stale:
                self._drop_marker(marker)
                removed += 1
        return removed

    # --- files ----------------------------------------------------------------------------


def _listed(directory: Path) -> list[tuple[str, str]]:
    """(marker, job id) of the markers in a list's directory, oldest submission first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _MARKER.match(name)
        if match:
            found.append((name, match["job"]))
    found.sort()
    return found


def _dump(record: Record) -> bytes:
    return strictjson.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

"""The files /metrics counts in: where they live, how they are read, archived and cleared.

They are prometheus_client's multiprocess files: `counter_<pid>-<token>.db` and
`histogram_<pid>-<token>.db` (a name no later process reuses), `gauge_livesum_<pid>.db` (the
name `mark_process_dead` removes), each written only by its process, which holds a shared
`flock` on it while it lives. A scrape merges them all under the directory's lock, and folds
the files of dead processes into `counter_archive.db` and `histogram_archive.db`: the new
archive, which names the files it holds, replaces the old in one rename before they are
deleted, so a scrape killed half-way never loses or doubles a count. Every file's blocks are
allocated before they are mapped: writing a page of a sparse file on a full disk is SIGBUS.

gunicorn.conf.py uses this module in the master, which never loads the app: it needs only
the standard library and prometheus_client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from imagegen.filelocks import lock_refused

SUFFIX = ".db"
STAGING_PREFIX = ".tmp-"
LIVE_GAUGE_PREFIX = "gauge_live"  # a live gauge counts its process only while it runs
INITIAL_SIZE = 1 << 16  # prometheus_client's first size of a file; it doubles from there
LOCK = ".lock"  # scrapes take turns on it
_ARCHIVED = ("counter", "histogram")  # the kinds whose dead files an archive keeps
_ARCHIVES = {f"{kind}_archive{SUFFIX}": kind for kind in _ARCHIVED}
_HELD = "imagegen_archived_file"  # an archive's record of a file it holds
_USED = struct.Struct("i")  # prometheus_client's file header: bytes in use
_LENGTH = struct.Struct("i")  # each entry: key length, key (padded to 8), value, timestamp
_ENTRY_TAIL = 16

log = logging.getLogger(__name__)


def is_count_file(name: str) -> bool:
    """A process's count file or an archive (not a staging file, nor anything else)."""
    return name.endswith(SUFFIX) and not name.startswith(".") and "_" in name


def clear(path: Path) -> None:
    """Start the counts at zero: remove every count file and staging file in `path`."""
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in entries]
    except FileNotFoundError:
        return
    for name in names:
        staging = name.startswith(STAGING_PREFIX) and name.endswith(SUFFIX)
        if is_count_file(name) or staging or _is_of_the_last_release(name):
            # A file another uid left is the workers' to report: their start-up check of
            # the images directory names the owner and the fix.
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(path / name)


def _is_of_the_last_release(name: str) -> bool:
    """The files of the release that wrote its own format (process-*.metrics, archive.json)."""
    if name in ("archive.json", ".tmp-archive.json"):
        return True
    return name.startswith(("process-", ".tmp-process-")) and name.endswith(".metrics")


def process_dead(pid: int, path: Path) -> None:
    """A worker has exited: its live gauges (requests in flight) stop counting. Never raises:
    in Gunicorn's master an exception here would stop the whole service (and scrapes skip a
    dead process's gauges in any case)."""
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(path))


# --- writing --------------------------------------------------------------------------------


def allocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of real blocks (not a hole), or raise OSError."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:  # macOS, for development only
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))


class AllocatedDict(MmapedDict):
    """prometheus_client's file of (key -> value), whose growth allocates blocks first.

    `lock_fd`, if given, holds the shared `flock` that says "this file's writer lives".
    """

    def __init__(self, path: Path, lock_fd: int = -1) -> None:
        super().__init__(str(path))
        self.lock_fd = lock_fd

    def _init_value(self, key: str) -> None:
        length = len(key.encode("utf-8"))
        needed = self._used + _LENGTH.size + length + (8 - (length + 4) % 8) + _ENTRY_TAIL
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity > self._capacity:
            allocate(self._f.fileno(), capacity)  # MmapedDict then only sets the size
        super()._init_value(key)

    def close(self) -> None:
        super().close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def create(path: Path, *, locked: bool) -> AllocatedDict:
    """A new file at `path`, locked if asked, its first blocks allocated before it is named."""
    staging = path.with_name(f"{STAGING_PREFIX}{path.name}")
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_SH)
        allocate(fd, INITIAL_SIZE)
        os.replace(staging, path)
        file = AllocatedDict(path, fd if locked else -1)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    if not locked:
        os.close(fd)
    return file


# --- reading --------------------------------------------------------------------------------


def merged(path: Path) -> list[Metric]:
    """Every process's counts in `path`, merged; dead processes' files go into the archives."""
    with _directory_lock(path):
        held = _held(path)
        with os.scandir(path) as entries:
            names = sorted(e.name for e in entries if is_count_file(e.name))
        files, dead = [], []
        for name in names:
            if name in held:  # left by a scrape stopped before it deleted the file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path / name)
                continue
            alive = _alive(path / name)
            if alive is None:
                continue  # removed since the listing
            if not alive and (name.startswith(LIVE_GAUGE_PREFIX) or not _mend(path / name)):
                continue
            files.append(str(path / name))
            if not alive and name not in _ARCHIVES:
                dead.append(name)
        metrics = _merge(files)
        for kind in _ARCHIVED:
            ended = [name for name in dead if name.startswith(f"{kind}_")]
            if ended:
                try:
                    _archive(path, kind, ended, held)
                except OSError as exc:  # a full disk: the files stay, and are read next time
                    log.warning("cannot archive dead processes' counts: %s", exc.strerror)
    return metrics


@contextlib.contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _held(path: Path) -> set[str]:
    """The names of the files the archives hold."""
    held: set[str] = set()
    for archive in _ARCHIVES:
        try:
            found = MmapedDict.read_all_values_from_file(str(path / archive))
            for key, *_ in found:
                name, _, labels, _ = json.loads(key)
                if name == _HELD:
                    held.add(labels["file"])
        except FileNotFoundError:
            continue
    return held


def _alive(path: Path) -> bool | None:
    """Whether the process writing `path` still runs (it holds a lock); None if it is gone."""
    return lock_refused(path, fcntl.LOCK_EX)


def _mend(path: Path) -> bool:
    """Make a dead writer's file end at its last complete entry; False if it cannot be read."""
    try:
        data = path.read_bytes()
        if len(data) < 8:
            return False
        (used,) = _USED.unpack_from(data, 0)
        complete = _complete(data, min(used, len(data)))
        if complete != used:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.pwrite(fd, _USED.pack(complete), 0)
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def _complete(data: bytes, used: int) -> int:
    """Where the last complete entry of a file in prometheus_client's layout ends."""
    offset = 8
    while offset + _LENGTH.size <= used:
        (length,) = _LENGTH.unpack_from(data, offset)
        start = offset + _LENGTH.size
        end = start + length + (8 - (length + 4) % 8) + _ENTRY_TAIL
        if length <= 0 or end > used:
            break
        try:
            key = json.loads(data[start : start + length])
        except (ValueError, UnicodeDecodeError):
            break
        if not (isinstance(key, list) and len(key) == 4 and isinstance(key[2], dict)):
            break
        offset = end
    return offset


def _merge(files: list[str], *, accumulate: bool = True) -> list[Metric]:
    """prometheus_client's merge of the files; one removed meanwhile is left out."""
    for _ in range(len(files) + 1):
        try:
            return list(MultiProcessCollector.merge(files, accumulate=accumulate))
        except FileNotFoundError as exc:
            if exc.filename not in files:
                raise
            files = [f for f in files if f != exc.filename]
    return []


def _archive(path: Path, kind: str, ended: list[str], held: set[str]) -> None:
    """Fold dead processes' files of `kind` into its archive, then delete them."""
    archive = path / f"{kind}_archive{SUFFIX}"
    sources = [str(path / name) for name in ended]
    if archive.exists():
        sources.append(str(archive))
    totals = _merge(sources, accumulate=False)  # per bucket, as a process's file holds them
    holds = {name for name in held if name.startswith(f"{kind}_") and (path / name).exists()}
    staging = path / f"{STAGING_PREFIX}{archive.name}"  # never listed as a count file
    new = create(staging, locked=False)
    try:
        for metric in totals:
            if metric.name == _HELD:
                continue
            for sample in metric.samples:
                names, values = list(sample.labels), list(sample.labels.values())
                key = mmap_key(metric.name, sample.name, names, values, metric.documentation)
                new.write_value(key, sample.value, 0.0)
        for name in sorted(holds | set(ended)):
            new.write_value(mmap_key(_HELD, _HELD, ["file"], [name], ""), 1.0, 0.0)
    finally:
        new.close()
    os.replace(staging, archive)
    for name in ended:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / name)

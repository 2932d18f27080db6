"""Writes that reach the disk before they are relied on: create-only files, and `fsync`s of
files and directories, some of them on helper threads beside the caller.

With `fsync` off (IMAGE_GEN_FSYNC=false) the same calls make the same files, without the
`fsync`s: still atomic for readers and process crashes, but not across a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path


class Disk:
    def __init__(self, *, fsync: bool) -> None:
        self.fsync = fsync

    def write_new(self, path: Path, data: bytes, *, sync: bool = True) -> None:
        """Create `path` (it must not exist) holding `data`; fsync it unless `sync` is False
        (then `sync_soon` it before relying on it)."""
        with open(path, "xb", buffering=0) as handle:  # unbuffered: no copy into a buffer
            view = memoryview(data)
            while view:  # one write, looping only if the kernel takes less
                view = view[handle.write(view) :]
            if sync and self.fsync:
                os.fsync(handle.fileno())

    def sync(self, path: Path) -> None:
        """fsync a file written with sync=False, or a directory whose names changed."""
        if self.fsync:
            fsync_path(path)

    def sync_soon(self, path: Path, *, uncache: bool = False) -> list[Future[None]]:
        """`sync`, started on a helper thread; wait for what this returns (`wait`) before
        relying on the file. With `uncache`, the file's pages then leave the page cache
        (see `fsync_path`)."""
        if not self.fsync:
            return []
        return [_sync_threads().submit(fsync_path, path, uncache=uncache)]


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space or quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_path(path: Path, *, uncache: bool = False) -> None:
    """fsync a file or a directory. With `uncache`, the file's pages, clean once synced, are
    then dropped from the page cache (POSIX_FADV_DONTNEED): for a big file written once and
    seldom read again, such as an image. Pages kept would fill memory with images until the
    kernel reclaims them, and each new page costs far more to fill than a recycled one (on
    this project's bench machine a MiB kept cost 2.3 ms of CPU to write, against 0.2 ms
    into pages given back: bench/scale.py, figure (g)). A read later comes from the disk."""
    fd = os.open(path, os.O_RDONLY)  # a file or a directory
    try:
        os.fsync(fd)
        if uncache and _FADVISE is not None:
            with contextlib.suppress(OSError):  # only advice: the file is synced either way
                os.posix_fadvise(fd, 0, 0, _FADVISE)
    finally:
        os.close(fd)


# Not on every platform (macOS has no posix_fadvise): there the pages just stay.
_FADVISE: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


class Pending:
    """fsyncs started on helper threads: `wait` for them before relying on what they sync."""

    def __init__(self, futures: list[Future[None]] | None = None) -> None:
        self.futures = futures or []

    def wait(self, *, quietly: bool = False) -> None:
        """Wait for every fsync; then raise the first failure unless `quietly`."""
        futures, self.futures = self.futures, []
        wait(futures, quietly=quietly)


def wait(futures: list[Future[None]], *, quietly: bool = False) -> None:
    """Wait for every future; then raise the first one's failure unless `quietly`."""
    failure = None
    for future in futures:
        try:
            future.result()
        except Exception as exc:  # kept, and raised once the others are done
            failure = failure or exc
    if failure is not None and not quietly:
        raise failure


_sync_pool: tuple[int, ThreadPoolExecutor] | None = None
_sync_pool_lock = threading.Lock()


def _sync_threads() -> ThreadPoolExecutor:
    """This process's fsync threads, started on first use (a Gunicorn worker is a fork, and
    threads do not survive a fork). 64, so that under load a job's fsyncs seldom queue
    behind other jobs' for long (each takes a few milliseconds)."""
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None or _sync_pool[0] != os.getpid():
            _sync_pool = (os.getpid(), ThreadPoolExecutor(64, thread_name_prefix="fsync"))
        return _sync_pool[1]

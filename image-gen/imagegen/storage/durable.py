"""Writes that reach the disk before they are relied on: create-only files, and `fsync`s of
files and directories, some of them on helper threads beside the caller.

With `fsync` off (IMAGE_GEN_FSYNC=false) the same calls make the same files, without the
`fsync`s: still atomic for readers and process crashes, but not across a power cut.
"""

from __future__ import annotations

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

    def sync_soon(self, path: Path) -> list[Future[None]]:
        """`sync`, started on a helper thread; wait for what this returns (`wait`) before
        relying on the file."""
        return [_sync_threads().submit(fsync_path, path)] if self.fsync else []


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space or quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a file or a directory
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

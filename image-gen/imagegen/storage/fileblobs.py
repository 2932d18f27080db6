"""Blobs as files under a directory: a key is a relative path (storage/blobs.py).

Every write goes to a temporary name beside its target, is fsynced and renamed into place,
and the directory is fsynced; a job is staged in a hidden `.tmp-<job>` directory and renamed
into place whole, so readers and crashes never see half of one. Names starting with `.tmp-`
are writers' and never listed; neither are the service's hidden folders at the top
(`.index`, `.jobs`, ...), which are not blobs.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from imagegen.storage import durable
from imagegen.storage.blobs import BlobInfo, BlobNotFound, check_key, check_prefix
from imagegen.storage.durable import Disk
from imagegen.storage.layout import TMP_PREFIX

_CHUNK = 1 << 20
# A job's files this big leave the page cache once synced (durable.fsync_path): written
# once, read once if at all. Smaller ones (metadata.json, small images) stay cached.
UNCACHE_FROM = 256 << 10
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class FileBlobs:
    """Blobs in the files under `root`, written atomically and durably (unless `fsync` off)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.disk = Disk(fsync=fsync)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    # --- one blob ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        """Write under a temporary sibling, fsync, stamp with this process's clock, rename
        over the old blob, fsync the directory."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                self.disk.write_new(temp, bytes(data))
            else:
                self._write_stream(temp, data)
            now = time.time_ns()  # one clock for every blob, finer than the kernel's
            os.utime(temp, ns=(now, now))
            os.replace(temp, path)
            self.disk.sync(path.parent)
        except BaseException:
            _unlink(temp)
            raise
        return self.info(key)

    def _write_stream(self, temp: Path, stream: BinaryIO) -> None:
        with open(temp, "xb") as handle:
            while chunk := stream.read(_CHUNK):
                handle.write(chunk)
            handle.flush()
            if self.disk.fsync:
                os.fsync(handle.fileno())

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except _MISSING:
            raise BlobNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")  # the caller closes it
        except _MISSING:
            raise BlobNotFound(key) from None

    def info(self, key: str) -> BlobInfo:
        return _file_info(key, self._stat(key))

    def open_with_info(self, key: str) -> tuple[BinaryIO, BlobInfo]:
        """The open file and its fstat: the same file, even if it is replaced meanwhile."""
        stream = self.open(key)
        try:
            status = os.fstat(stream.fileno())
        except BaseException:
            stream.close()
            raise
        return stream, _file_info(key, status)

    def _stat(self, key: str) -> os.stat_result:
        try:
            status = os.stat(self._path(key))
        except _MISSING:
            raise BlobNotFound(key) from None
        if not stat.S_ISREG(status.st_mode):
            raise BlobNotFound(key)
        return status

    def touch(self, key: str) -> None:
        """Set the file's access time to now (its mtime kept), whatever the mount's options."""
        made = self._stat(key).st_mtime_ns
        with suppress(OSError):  # a read-only disk still serves it
            os.utime(self._path(key), ns=(time.time_ns(), made))

    def used_ns(self, key: str) -> int:
        return self._stat(key).st_atime_ns

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
        except _MISSING:
            return False
        return True

    # --- many blobs ---------------------------------------------------------------------------

    def delete_prefix(self, prefix: str) -> int:
        """A whole folder (`<job>/`) is renamed out of sight in one step, then removed."""
        check_prefix(prefix)
        folder = self.root / prefix.rstrip("/") if prefix.endswith("/") else None
        if folder is None or not folder.is_dir():
            return sum(self.delete(key) for key in list(self.list(prefix)))
        trash = folder.parent / f"{TMP_PREFIX}deleted-{uuid.uuid4().hex}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:  # another process removed it first
            return 0
        self.disk.sync(folder.parent)
        count = sum(len(files) for _, _, files in os.walk(trash))
        shutil.rmtree(trash, ignore_errors=True)
        return count

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        folder, _, start = prefix.rpartition("/")
        yield from self._walk(self.root / folder if folder else self.root, folder, start)

    def _walk(self, directory: Path, key_dir: str, start: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except _MISSING:
            return
        for entry in entries:
            name = entry.name
            if not name.startswith(start) or name.startswith(TMP_PREFIX):
                continue
            if not key_dir and name.startswith(".") and entry.is_dir(follow_symlinks=False):
                continue  # the service's own folders (.index, .jobs, ...), not blobs
            key = f"{key_dir}/{name}" if key_dir else name
            with suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path), key, "")
                elif entry.is_file(follow_symlinks=False):
                    yield key

    def publish(self, prefix: str, *, marker: str) -> FilePublication:
        """The rename shows every blob at once, the marker with them."""
        prefix = check_key(prefix.rstrip("/"))
        check_key(f"{prefix}/{marker}")
        return FilePublication(self, prefix, self.root / prefix)

    def writable(self) -> bool:
        return os.access(self.root, os.W_OK)

    def sweep(self, older_than: float) -> int:
        """Remove staging and trash folders of crashed writers, older than `older_than` s.

        Other workers write, publish and remove entries meanwhile: an entry gone by the
        time it is looked at is skipped.
        """
        removed = 0
        cutoff = time.time() - older_than
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX) and changed_before(entry, cutoff):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        return removed


def _file_info(key: str, status: os.stat_result) -> BlobInfo:
    return BlobInfo(
        key, status.st_size, status.st_mtime_ns, f"{status.st_mtime_ns:x}-{status.st_size:x}"
    )


class FilePublication:
    """A job staged in `.tmp-<job>` beside where it goes; `commit` renames it into place."""

    def __init__(self, blobs: FileBlobs, prefix: str, final: Path) -> None:
        self._disk = blobs.disk
        self._prefix = prefix
        self._final = final
        self._staging = final.with_name(f"{TMP_PREFIX}{final.name}")
        self._syncs = durable.Pending()
        self._started = self._sealed = self._committed = False

    def put(self, name: str, data: bytes) -> None:
        """Write one file unsynced; its fsync starts on a helper thread at once (fsync and
        the caller's hashing both let go of the GIL)."""
        if not self._started:
            self._staging.mkdir()
            self._started = True
        check_key(f"{self._prefix}/{name}")
        path = self._staging / name
        if "/" in name:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._disk.write_new(path, data, sync=False)
        if data:
            uncache = len(data) >= UNCACHE_FROM  # an image, not metadata.json
            self._syncs.futures += self._disk.sync_soon(path, uncache=uncache)

    def seal(self) -> None:
        """Every file's data and the names in the staging folder reach the disk."""
        if not self._started:
            self._staging.mkdir()
            self._started = True
        self._disk.sync(self._staging)
        self._syncs.wait()
        self._sealed = True

    def commit(self) -> None:
        if not self._sealed:
            self.seal()
        os.rename(self._staging, self._final)
        try:
            self._disk.sync(self._final.parent)
        except BaseException:
            os.rename(self._final, self._staging)  # the caller is told nothing was saved
            raise
        self._committed = True

    def abort(self) -> None:
        self._syncs.wait(quietly=True)  # they must not outlive the files they sync
        if self._committed:
            os.rename(self._final, self._staging)
            self._committed = False
        if self._started:
            shutil.rmtree(self._staging, ignore_errors=True)


def mtime_of(entry: os.DirEntry[str]) -> float | None:
    """The mtime of a listed entry (a link's own), or None if it vanished since the listing."""
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None


def changed_before(entry: os.DirEntry[str], cutoff: float) -> bool:
    """Whether a listed entry last changed before `cutoff` (False if it has vanished)."""
    mtime = mtime_of(entry)
    return mtime is not None and mtime < cutoff


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)

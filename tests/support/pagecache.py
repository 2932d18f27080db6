"""How much of a file the kernel holds in its page cache, asked with mincore(2).

Linux (and other systems with mincore); elsewhere `cached_pages` raises OSError, and the
tests that need it skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path


def cached_pages(path: Path) -> tuple[int, int]:
    """(pages of `path` in the page cache, pages of `path`), without reading it: mapping a
    file loads nothing, and mincore only looks."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    if pages == 0:
        return 0, 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if not hasattr(libc, "mincore"):
        raise OSError("no mincore(2) on this platform")
    fd = os.open(path, os.O_RDONLY)
    try:
        # A private mapping is writable for ctypes to take its address; nothing is written,
        # so every page stays the file's own.
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    try:
        vector = (ctypes.c_ubyte * pages)()
        start = ctypes.c_char.from_buffer(mapped)
        try:
            failed = libc.mincore(
                ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vector
            )
        finally:
            del start  # the mapping cannot close while ctypes holds it
        if failed:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(byte & 1 for byte in vector), pages
    finally:
        mapped.close()


def gives_pages_back(directory: Path) -> bool:
    """Whether a synced file's pages leave the page cache on POSIX_FADV_DONTNEED in
    `directory` (not on tmpfs, whose pages are the files themselves); False without
    mincore or posix_fadvise."""
    probe = directory / ".pagecache-probe"
    probe.write_bytes(b"\xa5" * 4 * mmap.PAGESIZE)
    try:
        fd = os.open(probe, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return cached_pages(probe)[0] == 0
    except (OSError, AttributeError):
        return False
    finally:
        probe.unlink()

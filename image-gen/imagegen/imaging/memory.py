"""Giving memory back to the system after large, short-lived allocations (thumbnails).

glibc's malloc serves an allocation of at least its mmap threshold with a mapping of its
own, which free() returns to the kernel at once; smaller ones come from heaps ("arenas",
up to eight per core, one per thread that needs one) that keep what is freed. The threshold
is dynamic by default: freeing one 16 MB mapping (Pillow holds image memory in blocks that
size) raises it to 16 MB, so later decodes land in the arenas, and a worker that made eight
thumbnails at once kept 460-890 MB after them (bench/thumbnail_memory.py). A fixed threshold
keeps image-sized allocations on their own mappings; `trim` hands back the free pages the
arenas hold. Other C libraries (musl) have neither call: then both do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# Allocations from this size on get a mapping of their own: decoded images (a 512x512 RGBA
# one is 1 MiB), image bytes from the upstream, thumbnails being encoded.
MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (which has mallopt and malloc_trim)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_large_allocations_returnable() -> bool:
    """Fix malloc's mmap threshold at MMAP_THRESHOLD for this process; False if it cannot
    (not glibc). Once per process is enough; repeating it does no harm."""
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not done:
        log.warning("could not fix malloc's mmap threshold; freed image memory may be kept")
    return done


def trim() -> None:
    """Return the free pages of every malloc arena to the system (glibc; else nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

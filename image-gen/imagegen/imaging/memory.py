"""Giving memory back to the system after large, short-lived allocations (thumbnails), and
reusing the memory of the ones every request makes (an upstream answer and its image).

glibc's malloc serves an allocation of at least its mmap threshold with a mapping of its
own, which free() returns to the kernel at once; smaller ones come from heaps ("arenas",
up to eight per core, one per thread that needs one) that keep what is freed, up to the
trim threshold at a heap's top. The threshold is dynamic by default: freeing one 16 MB
mapping (Pillow holds image memory in blocks that size) raises it to 16 MB, so later
decodes land in the arenas, and a worker that made eight thumbnails at once kept 460-890 MB
after them (bench/thumbnail_memory.py). A fixed threshold keeps image-sized allocations on
their own mappings; `trim` hands back the free pages the arenas hold. Other C libraries
(musl) have neither call: then all of this does nothing.

The threshold is 4 MiB, not lower: an upstream answer (a 1 MiB image is 1.4 MB of base64)
and its decoded image then come from the arenas and reuse pages that are already mapped. A
fresh mapping costs a page fault per 4 KiB page touched and an unmapping when freed; at
1 MiB these were 600-940 faults and about 3-6 ms of CPU per /generate on a virtual machine
(figure (g) in bench/README.md). An arena keeps at most TRIM_THRESHOLD free at its top.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# Allocations from this size on get a mapping of their own: decoded images (a 1024x1024
# RGBA one is 4 MiB; Pillow's blocks are up to 16 MiB), large thumbnails being encoded.
MMAP_THRESHOLD = 4 * 1024 * 1024
# Free memory an arena keeps at its top instead of handing it back: a request's answer and
# image (a few MB) are made again in pages already mapped. glibc's own rule is twice the
# threshold; fixing the threshold would otherwise leave this at its 128 KiB default.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (which has mallopt and malloc_trim)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_large_allocations_returnable() -> bool:
    """Fix malloc's mmap and trim thresholds (MMAP_THRESHOLD, TRIM_THRESHOLD) for this
    process; False if it cannot (not glibc). Once per process is enough; repeating it does
    no harm."""
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        log.warning("could not fix malloc's mmap threshold; freed image memory may be kept")
    return done


def trim() -> None:
    """Return the free pages of every malloc arena to the system (glibc; else nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

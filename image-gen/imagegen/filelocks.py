"""Asking whether another open file holds an `flock` on a path, without waiting for it.

Used where a lock says something lives: a running job's slot (books/files.py, held
exclusively) and a metrics writer's file (observability/countfiles.py, held shared).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_refused(path: Path, mode: int) -> bool | None:
    """Whether a lock of `mode` (fcntl.LOCK_SH or LOCK_EX) on `path` is refused now, that
    is, another open file holds one that conflicts; None if there is no such file. A lock
    granted to the question is let go of at once.

    Ask with LOCK_SH to find an exclusive holder only: two askers then never see each
    other. Ask with LOCK_EX to find any holder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of the lock, if it was granted
    return False

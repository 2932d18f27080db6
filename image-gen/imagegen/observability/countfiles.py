"""Where /metrics keeps its per-process count files, and how Gunicorn's master tends them.

The files are prometheus_client's multiprocess files (`counter_<pid>.db`, `histogram_<pid>.db`,
`gauge_livesum_<pid>.db`); a process writes them under a staging name (`.tmp-...`) first.
gunicorn.conf.py uses this module in the master, which never loads the app: it needs only
the standard library and prometheus_client.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import multiprocess

DIRECTORY_NAME = ".metrics"  # under the images directory unless IMAGE_GEN_METRICS_DIR is set
SUFFIX = ".db"
STAGING_PREFIX = ".tmp-"
LIVE_GAUGE_PREFIX = "gauge_live"  # a live gauge counts its process only while it runs


def directory(images_dir: Path, configured: Path | None = None) -> Path:
    """The metrics directory: the configured one, else a hidden one in the images directory."""
    return Path(configured) if configured else Path(images_dir) / DIRECTORY_NAME


def directory_from_env(env: Mapping[str, str]) -> Path:
    """The metrics directory the workers will use, from the variables Settings reads."""
    configured = env.get("IMAGE_GEN_METRICS_DIR", "").strip()
    images = Path(env.get("IMAGE_GEN_IMAGES_DIR", "images"))
    return directory(images, Path(configured) if configured else None)


def is_count_file(name: str) -> bool:
    """A process's count file (not a staging one, nor anything else in the directory)."""
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
        if is_count_file(name) or staging:
            # A file another uid left is the workers' to report: their start-up check of
            # the images directory names the owner and the fix.
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(path / name)


def process_dead(pid: int, path: Path) -> None:
    """A worker has exited: its live gauges (requests in flight) stop counting."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        multiprocess.mark_process_dead(pid, str(path))

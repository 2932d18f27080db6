"""The one owner of every path under the images directory, and of every blob key.

    <root>/<job-uuid>/metadata.json                         a stored job (a blob key)
    <root>/<job-uuid>/NNN-<image-uuid>.<ext>                 its images (blob keys)
    <root>/<job-uuid>/.lock                                  flock()ed to change the job
    <root>/<job-uuid>/thumbs/<image-uuid>-<variant>.<ext>    cached thumbnails (blob keys)
    <root>/.index/<image-uuid>                               the image index (symlinks)
    <root>/.index/images.sqlite3, .index/locks/<nn>          the index of a bucket, without a
                                                             database (storage/tableindex.py)
    <root>/.jobs/...                                         asynchronous job records (records.py)
    <root>/.ledger/ledger.sqlite3                            the caps ledger
    <root>/.metrics/                                         /metrics counts, unless configured
    <root>/.spool/<job-uuid>/...                             jobs kept until a bucket is back
                                                             (storage/spool.py)
    <root>/.tmp-*                                            staging and trash of writers

Keys are what a blob store (storage/blobs.py) names: relative, `/`-separated, the same on
disk and in a bucket. Only this module spells a file or folder name of the images directory.
Standard library only: Gunicorn's master reads `metrics_dir` without loading the app.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from imagegen.storage import ownership

METADATA = "metadata.json"
LOCK = ".lock"
THUMBS = "thumbs"
INDEX = ".index"
JOBS = ".jobs"
LEDGER = ".ledger"
METRICS = ".metrics"
SPOOL = ".spool"
TMP_PREFIX = ".tmp-"


def image_name(number: int, image_id: str, ext: str) -> str:
    """The file name of a job's `number`th image (from 1): `NNN-<image>.<ext>`."""
    return f"{number:03d}-{image_id}.{ext}"


def job_key(job_id: str, name: str) -> str:
    """The key of a file of a job: `<job>/<name>`."""
    return f"{job_id}/{name}"


def metadata_key(job_id: str) -> str:
    """The key of a job's metadata.json, the blob that makes a job exist (it comes last)."""
    return job_key(job_id, METADATA)


def lock_key(job_id: str) -> str:
    """The key of a job's empty lock file (its mtime is the job's listing time)."""
    return job_key(job_id, LOCK)


def thumbnails_prefix(job_id: str, image_id: str = "") -> str:
    """The prefix of a job's cached thumbnails (of one image's, given `image_id`)."""
    return job_key(job_id, f"{THUMBS}/{image_id}")


def metrics_dir(images_dir: Path | str, configured: Path | str | None = None) -> Path:
    """Where /metrics keeps its counts: the configured directory, else `<images>/.metrics`."""
    return Path(configured) if configured else Path(images_dir) / METRICS


class Layout:
    """Paths under one images directory, and the start-up checks that it can be used."""

    def __init__(self, root: Path | str, *, metrics: Path | str | None = None) -> None:
        self.root = Path(root)
        self.index_dir = self.root / INDEX
        self.index_db = self.index_dir / "images.sqlite3"
        self.index_locks = self.index_dir / "locks"
        self.jobs_dir = self.root / JOBS
        self.ledger_file = self.root / LEDGER / "ledger.sqlite3"
        self.spool_dir = self.root / SPOOL
        self.metrics_dir = metrics_dir(self.root, metrics)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Layout:
        """The layout Settings.from_env would give, from the environment alone (Gunicorn's
        master, which does not load the app)."""
        configured = env.get("IMAGE_GEN_METRICS_DIR", "").strip() or None
        return cls(env.get("IMAGE_GEN_IMAGES_DIR", "images"), metrics=configured)

    def path_of(self, key: str) -> Path:
        """The file that holds a blob key (the key must be checked: blobs.check_key)."""
        return self.root / key

    def prepare(self) -> None:
        """Create the directories; fail with a message that names the fix if we cannot."""
        from imagegen.errors import ServiceError  # Flask: not for Gunicorn's master

        try:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            # Unique: a replica in another container may have the same pid and be probing too.
            probe = self.root / f"{TMP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex}"
            probe.mkdir()
            probe.rmdir()
        except PermissionError as exc:
            # mkdir is refused by the directory it writes in: the parent of what it made.
            refused = Path(exc.filename).parent if exc.filename else self.root
            where = "" if refused == self.root else f" (it cannot be made in {refused})"
            raise ServiceError(
                f"The images directory {self.root}{where} is not writable by this service. "
                + ownership.denied(refused, ownership.WRITE_DIRECTORY, "images")
            ) from None
        foreign = next(self._unwritable_own_directories(), None)
        if foreign is not None:
            raise ServiceError(
                f"The images directory {self.root} holds {foreign.relative_to(self.root)}, "
                "which this service cannot write. "
                + ownership.denied_within(self.root, foreign, ownership.WRITE_DIRECTORY, "images")
            )

    def _unwritable_own_directories(self) -> Iterator[Path]:
        """The service's own directories (hidden: .index, .jobs/.active, .ledger, ...) that
        this process may not use, as a run under another uid leaves them. Job directories
        and crashed writers' staging ones are not needed to start, and are not looked at."""
        pending: list[Path | str] = [self.root]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") or entry.name.startswith(TMP_PREFIX):
                        continue
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    if os.access(entry.path, os.R_OK | os.W_OK | os.X_OK):
                        pending.append(entry.path)
                    else:
                        yield Path(entry.path)

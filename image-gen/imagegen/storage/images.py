"""The filesystem store: owns the layout of the images directory.

    <root>/<job-uuid>/metadata.json
    <root>/<job-uuid>/NNN-<image-uuid>.<ext>
    <root>/.index/<image-uuid>  -> ../<job-uuid>/NNN-<image-uuid>.<ext>   (symlink)
    <root>/<job-uuid>/thumbs/<image-uuid>-w<width>.<ext>   (cached thumbnails)

A job is written into a hidden temporary directory and renamed into place, so readers and
crashes never see half a job. The index makes an image lookup one `readlink`, however many
jobs there are. Metadata updates take an exclusive `flock` on the job's lock file, so
several Gunicorn worker processes can update one job safely.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from imagegen import strictjson
from imagegen.clock import utc_now
from imagegen.errors import ImageNotFound, InsufficientStorage, ServiceError
from imagegen.imaging.formats import CONTENT_TYPES, EXTENSIONS
from imagegen.storage import durable, ownership
from imagegen.storage.durable import Disk, is_disk_full
from imagegen.upstream.providers import Generation

log = logging.getLogger(__name__)

METADATA = "metadata.json"
_INDEX = ".index"
_TMP_PREFIX = ".tmp-"
_LOCK = ".lock"
_THUMBS = "thumbs"
# Cached thumbnails kept per image: a caller may ask for any of some 12 million variants
# (every width and height from 16 to 2048, three formats), and the disk must not fill up
# with them. The least recently used go first.
MAX_THUMBNAILS = 16
_THUMB_SUFFIX = re.compile(r"^[a-z0-9-]{1,32}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LINK_TARGET = re.compile(
    r"^\.\./(?P<job>[0-9a-f-]{36})/(?P<file>[0-9]{3}-(?P<image>[0-9a-f-]{36})\.(?:png|jpg|webp))$"
)


def normalize_id(value: str) -> str | None:
    """The canonical lower-case form of a well-formed UUID string, or None."""
    lowered = value.lower()
    return lowered if _UUID.match(lowered) else None


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    job_id: str
    path: Path
    format: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


class _BrowseCache(TypedDict):
    """What a process remembers for listing (see ImageStore._job_stamps)."""

    stamps: dict[str, int]  # job id: its lock file's mtime
    created: dict[str, str]  # job id: its created_at
    order: NotRequired[list[tuple[int, str]]]  # the last scan's (stamp, job id), newest first
    trusted: NotRequired[int | None]  # the root's mtime when that scan can be trusted


class ImageStore:
    """Jobs and images on disk, written atomically and found by exact id."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._disk = Disk(fsync=fsync)
        self._index = self.root / _INDEX
        # This process's memory for listing (see _job_stamps), shared by a worker's threads.
        self._browse: _BrowseCache = {"stamps": {}, "created": {}}

    def prepare(self) -> None:
        """Create the directories; fail with a message that names the fix if we cannot."""
        try:
            self._index.mkdir(parents=True, exist_ok=True)
            # Unique: a replica in another container may have the same pid and be probing too.
            probe = self.root / f"{_TMP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex}"
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
        pending: list[str | Path] = [self.root]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") or entry.name.startswith(_TMP_PREFIX):
                        continue
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    if os.access(entry.path, os.R_OK | os.W_OK | os.X_OK):
                        pending.append(entry.path)
                    else:
                        yield Path(entry.path)

    # --- writing --------------------------------------------------------------------------

    def save_job(
        self,
        request: dict[str, Any],
        generation: Generation,
        *,
        extra: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """Write a whole job atomically and return its metadata.

        `job_id` is an asynchronous job's id, given when it was accepted; new by default.
        """
        job_id = job_id or str(uuid.uuid4())
        created = utc_now()
        staging = self.root / f"{_TMP_PREFIX}{job_id}"
        links: list[Path] = []
        images: list[dict[str, Any]] = []
        syncs: list[Future[None]] = []
        published = False
        try:
            staging.mkdir()
            for number, image in enumerate(generation.images, start=1):
                image_id = str(uuid.uuid4())
                name = f"{number:03d}-{image_id}.{EXTENSIONS[image.format]}"
                self._disk.write_new(staging / name, image.data, sync=False)
                # The disk write runs while the image is hashed and the metadata written
                # (fsync and sha256 both let go of the GIL).
                syncs += self._disk.sync_soon(staging / name)
                images.append(
                    {
                        "id": image_id,
                        "file": name,
                        "format": image.format,
                        "content_type": CONTENT_TYPES[image.format],
                        # The size asked for, as the original service reported it; the
                        # pixels the upstream actually sent are in width and height.
                        "size": request.get("size")
                        if request.get("size") not in (None, "auto")
                        else f"{image.width}x{image.height}",
                        "width": image.width,
                        "height": image.height,
                        "bytes": len(image.data),
                        "sha256": hashlib.sha256(image.data).hexdigest(),
                        "revised_prompt": image.revised_prompt,
                        "status": "available",
                    }
                )
            metadata = {
                "job_id": job_id,
                "created_at": created,
                "status": "completed",
                "placeholder": generation.placeholder,
                "request": request,
                "usage": generation.usage,
                "upstream": generation.upstream,
                **(extra or {}),
                "images": images,
            }
            self._disk.write_new(staging / METADATA, _dump(metadata), sync=False)
            syncs += self._disk.sync_soon(staging / METADATA)
            self._disk.write_new(staging / _LOCK, b"", sync=False)
            # Every file's data and the names in the staging directory reach the disk
            # before the rename publishes them; these fsyncs run side by side.
            self._disk.sync(staging)
            durable.wait(syncs)
            for stored in images:
                link = self._index / stored["id"]
                os.symlink(f"../{job_id}/{stored['file']}", link)
                links.append(link)
            syncs = self._disk.sync_soon(self._index)  # so that a power cut cannot lose the links
            os.rename(staging, self.root / job_id)
            published = True
            self._disk.sync(self.root)
            durable.wait(syncs)
        except BaseException as exc:
            durable.wait(syncs, quietly=True)  # they must not outlive the files they sync
            for link in links:
                _unlink(link)
            if published:  # take it back: the caller is told nothing was saved
                os.rename(self.root / job_id, staging)
            shutil.rmtree(staging, ignore_errors=True)
            if is_disk_full(exc):
                raise InsufficientStorage(
                    "The image store is full; nothing was saved. Free "
                    "space or delete images, then try again."
                ) from None
            raise
        return metadata

    # --- reading --------------------------------------------------------------------------

    def find_image(self, image_id: str) -> StoredImage:
        """The stored image with exactly this id; ImageNotFound otherwise."""
        canonical = normalize_id(image_id)
        if canonical is None:
            raise ImageNotFound(f"Image {image_id[:64]!r} not found: ids are UUIDs.")
        try:
            target = os.readlink(self._index / canonical)
        except OSError:
            raise ImageNotFound(f"Image {canonical} not found.") from None
        match = _LINK_TARGET.match(target)
        if not match or match["image"] != canonical:
            raise ImageNotFound(f"Image {canonical} not found.")
        path = self.root / match["job"] / match["file"]
        if not path.is_file():
            raise ImageNotFound(f"Image {canonical} not found.")
        ext = path.suffix[1:]
        fmt = next(f for f, e in EXTENSIONS.items() if e == ext)
        return StoredImage(canonical, match["job"], path, fmt)

    def job_metadata(self, job_id: str) -> dict[str, Any] | None:
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        try:
            metadata = json.loads((self.root / canonical / METADATA).read_bytes())
        except (OSError, ValueError):
            return None
        return metadata if isinstance(metadata, dict) else None  # a damaged file is no job

    # --- thumbnails -----------------------------------------------------------------------
    # A cache beside the job's images, never in metadata.json, the index or a listing. A
    # thumbnail is written under a temporary name and renamed into place, so threads and
    # workers making the same one at once all succeed and readers never see half a file.
    # At most MAX_THUMBNAILS are kept per image: a file's access time is when it was last
    # made or served (set here from one clock, whatever the mount's atime options), and
    # whoever caches one more removes the least recently used beyond the bound. Removals
    # race with no harm: a cached file that vanishes before it is opened is made again, and
    # the last to list the folder sees every file made before it, so the bound holds.

    def find_thumbnail(self, image: StoredImage, suffix: str, fmt: str) -> Path | None:
        """The cached thumbnail of `image` for this variant (e.g. `w256`), if one was made;
        marked as just used."""
        path = self._thumbnail_path(image, suffix, fmt)
        try:
            made = os.stat(path).st_mtime_ns
        except OSError:
            return None
        with suppress(OSError):  # a read-only disk still serves it
            os.utime(path, ns=(time.time_ns(), made))
        return path

    def save_thumbnail(self, image: StoredImage, suffix: str, fmt: str, data: bytes) -> Path | None:
        """Cache a thumbnail atomically and return its path.

        None when it cannot be written (a full or read-only disk): the caller serves the bytes
        it has, since a cache must not turn a read into a failure. ImageNotFound if the image
        or its job was deleted meanwhile; then nothing is left behind.
        """
        path = self._thumbnail_path(image, suffix, fmt)
        temp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            path.parent.mkdir(exist_ok=True)
            self._disk.write_new(temp, data)  # synced: never an empty file to serve
            now = time.time_ns()  # the clock find_thumbnail uses, finer than the kernel's
            os.utime(temp, ns=(now, now))
            os.replace(temp, path)
        except FileNotFoundError:  # the whole job was deleted meanwhile
            _unlink(temp)
            raise ImageNotFound(f"Image {image.image_id} not found.") from None
        except OSError as exc:
            _unlink(temp)
            log.warning("thumbnail of image %s not cached: %s", image.image_id, exc.strerror)
            return None
        # delete_image unlinks the index entry before it drops thumbnails: if the entry is
        # still here, any delete comes later and removes this file too.
        if not os.path.lexists(self._index / image.image_id):
            _unlink(path)
            raise ImageNotFound(f"Image {image.image_id} not found.")
        self._trim_thumbnails(image, keep=path.name)
        return path

    def _trim_thumbnails(self, image: StoredImage, *, keep: str) -> None:
        """Remove the least recently used cached thumbnails of `image` beyond MAX_THUMBNAILS
        (never `keep`, the one just made)."""
        used: list[tuple[int, str]] = []
        with suppress(FileNotFoundError), os.scandir(self.root / image.job_id / _THUMBS) as it:
            for entry in it:
                if entry.name.startswith(f"{image.image_id}-") and entry.name != keep:
                    with suppress(FileNotFoundError):
                        used.append((entry.stat(follow_symlinks=False).st_atime_ns, entry.path))
        used.sort()
        for _, stale in used[: max(0, len(used) + 1 - MAX_THUMBNAILS)]:
            _unlink(Path(stale))

    def _thumbnail_path(self, image: StoredImage, suffix: str, fmt: str) -> Path:
        return self.root / image.job_id / _THUMBS / thumbnail_name(image, suffix, fmt)

    def _drop_thumbnails(self, image: StoredImage) -> None:
        """Remove every cached thumbnail of one image (and any half-written one)."""
        try:
            entries = list(os.scandir(self.root / image.job_id / _THUMBS))
        except FileNotFoundError:
            return
        for entry in entries:
            if image.image_id in entry.name:
                _unlink(Path(entry.path))

    # --- deleting -------------------------------------------------------------------------

    def delete_image(self, image_id: str) -> StoredImage:
        """Remove the image's file and index entry; mark it deleted in its job's metadata."""
        image = self.find_image(image_id)
        link = self._index / image.image_id
        try:
            with self._locked(image.job_id):
                if not os.path.lexists(link):  # another caller deleted it meanwhile
                    raise ImageNotFound(f"Image {image.image_id} not found.")
                job_dir = self.root / image.job_id
                metadata = json.loads((job_dir / METADATA).read_bytes())
                now = utc_now()
                for entry in metadata.get("images", []):
                    if entry.get("id") == image.image_id:
                        entry["status"] = "deleted"
                        entry["deleted_at"] = now
                # The metadata first: if it cannot be written, nothing has changed.
                self._replace(job_dir / METADATA, _dump(metadata))
                _unlink(link)
                _unlink(image.path)
                self._drop_thumbnails(image)
        except FileNotFoundError:  # the whole job was deleted meanwhile
            raise ImageNotFound(f"Image {image.image_id} not found.") from None
        return image

    def _replace(self, path: Path, data: bytes) -> None:
        """Atomically replace a file: write a temporary sibling, fsync, rename over."""
        temp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            self._disk.write_new(temp, data)
            os.replace(temp, path)
            self._disk.sync(path.parent)
        except OSError as exc:
            _unlink(temp)
            if is_disk_full(exc):
                raise InsufficientStorage("The image store is full; nothing was changed.") from None
            raise

    @contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        fd = os.open(self.root / job_id / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- housekeeping ---------------------------------------------------------------------

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove what crashed writers left: stale staging dirs and dangling index links.

        Other workers write, publish and remove entries meanwhile (every worker sweeps as
        it boots): an entry that is gone by the time it is looked at is skipped.
        """
        removed = 0
        cutoff = time.time() - older_than
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(_TMP_PREFIX) and changed_before(entry, cutoff):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        with os.scandir(self._index) as entries:
            for entry in entries:
                if (
                    entry.is_symlink()
                    and not os.path.exists(entry.path)
                    and changed_before(entry, cutoff)
                ):
                    _unlink(Path(entry.path))
                    removed += 1
        return removed

    # --- browsing and removing whole jobs ----------------------------------------------------
    # Jobs are listed newest first by the mtime of their `.lock` file: save_job creates it as
    # the job's last file and nothing writes it again, whereas the directory's own mtime moves
    # whenever an image in it is deleted. Jobs stored within one clock tick (a few ms) are
    # ordered by `created_at`, then by id. A position in that order is the tuple
    # (stamp_ns, created_at, job_id, offset), where `offset` images of that job were passed.

    def list_images(
        self,
        *,
        limit: int,
        after: tuple[int, str, str, int] | None = None,
        job_id: str | None = None,
    ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], tuple[int, str, str, int] | None]:
        """Up to `limit` available images, newest job first, starting just after `after`.

        Returns (job metadata, image entry) pairs and the position to pass as `after` for the
        next page, or None when there is no next page. Only the jobs on the page (and the
        next one, to know whether there is more) have their metadata.json read.
        """
        found: list[tuple[tuple[dict[str, Any], dict[str, Any]], tuple[int, str, str, int]]] = []
        for key, metadata in self._jobs_from(after, job_id):
            start = after[3] if after is not None and key == after[:3] else 0
            images = metadata.get("images", [])
            for offset in range(start, len(images)):
                image = images[offset]
                if image.get("status", "available") != "available":
                    continue
                found.append(((metadata, image), (*key, offset + 1)))
                if len(found) > limit:
                    return [item for item, _ in found[:limit]], found[limit - 1][1]
        return [item for item, _ in found], None

    def delete_job(self, job_id: str) -> dict[str, Any] | None:
        """Remove a whole job and return its metadata; None if there is no such job.

        Under the job's lock the index links go first, so no lookup finds an image that is
        about to vanish; then the directory is renamed out of sight in one step and removed,
        so a reader in any process sees the whole job or none of it.
        """
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        trash = self.root / f"{_TMP_PREFIX}deleted-{uuid.uuid4().hex}"
        try:
            with self._locked(canonical):
                if not (self.root / canonical).is_dir():
                    return None
                metadata = self.job_metadata(canonical)
                if not isinstance(metadata, dict):  # damaged: remove it all the same
                    metadata = {"job_id": canonical, "images": []}
                for image in metadata.get("images", []):
                    image_id = normalize_id(str(image.get("id", "")))
                    if image_id is not None:
                        _unlink(self._index / image_id)
                os.rename(self.root / canonical, trash)
                self._disk.sync(self.root)
        except FileNotFoundError:  # another process deleted it before we held the lock
            return None
        shutil.rmtree(trash, ignore_errors=True)
        return metadata

    def _jobs_from(
        self, after: tuple[int, str, str, int] | None, job_id: str | None
    ) -> Iterator[tuple[tuple[int, str, str], dict[str, Any]]]:
        """(sort key, metadata) of each job in listing order, from the job at `after` on."""
        if job_id is not None:
            canonical = normalize_id(job_id)
            names = [(self._stamp(canonical) or 0, canonical)] if canonical else []
        else:
            names = self._job_stamps()
        if after is not None:  # skip the ticks newer than the cursor's
            first = next((n for n, (tick, _) in enumerate(names) if tick <= after[0]), len(names))
            names = names[first:]
        cache = self._browse_cache()
        i = 0
        while i < len(names):
            tick = names[i][0]
            j = i
            while j < len(names) and names[j][0] == tick:
                j += 1
            group = []
            for _, name in names[i:j]:
                metadata = None
                created = cache["created"].get(name)
                if created is None or j - i == 1:
                    metadata = self.job_metadata(name)
                    if not isinstance(metadata, dict):  # deleted since the scan, or damaged
                        continue
                    created = str(metadata.get("created_at", ""))
                    cache["created"][name] = created
                group.append(((tick, created, name), metadata))
            group.sort(key=lambda item: item[0], reverse=True)
            for key, metadata in group:
                if after is not None and key > after[:3]:
                    continue
                metadata = metadata or self.job_metadata(key[2])
                if isinstance(metadata, dict):
                    yield key, metadata
            i = j

    def _job_stamps(self) -> list[tuple[int, str]]:
        """(stamp_ns, job_id) of every job, newest first.

        Kept per process while the root directory's mtime says no job came or went: every
        save, delete and staging directory changes it. A scan is trusted only once that
        mtime is older than the scan by more than a clock tick, so a change made in the
        same tick as the scan still forces the next request to look again.
        """
        cache = self._browse_cache()
        changed = os.stat(self.root).st_mtime_ns
        order = cache.get("order")
        if order is not None and cache.get("trusted") == changed:
            return order
        scanned = time.time_ns()
        known: dict[str, int] = cache["stamps"]
        fresh: dict[str, int] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                name = entry.name
                if not _UUID.match(name) or not entry.is_dir(follow_symlinks=False):
                    continue  # .index, .tmp-* staging and trash, stray files
                stamp = known.get(name)
                if stamp is None:
                    stamp = self._stamp(name)
                    if stamp is None:
                        continue
                fresh[name] = stamp
        order = sorted(((stamp, name) for name, stamp in fresh.items()), reverse=True)
        if len(cache["created"]) > 2 * len(fresh) + 1000:
            cache["created"] = {k: v for k, v in cache["created"].items() if k in fresh}
        cache.update(
            {
                "stamps": fresh,
                "order": order,
                "trusted": changed if scanned - changed > 100_000_000 else None,
            }
        )
        return order

    def _stamp(self, job_id: str) -> int | None:
        """The job's listing time: its lock file's mtime, which never changes once written
        (the directory's, for a job from elsewhere that has no lock file)."""
        job_dir = self.root / job_id
        for path in (job_dir / _LOCK, job_dir):
            with suppress(OSError):
                return os.stat(path).st_mtime_ns
        return None

    def _browse_cache(self) -> _BrowseCache:
        """This process's memory for listing: lock mtimes and created_at (which never change
        for a job) and the last scan's order. Shared by the worker's threads."""
        return self._browse


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


def thumbnail_name(image: StoredImage, suffix: str, fmt: str) -> str:
    """A thumbnail's file name, which its ETag also uses: `<image-id>-<suffix>.<ext>`."""
    if not _THUMB_SUFFIX.match(suffix) or fmt not in EXTENSIONS:
        raise ValueError(f"not a thumbnail variant: {suffix!r} {fmt!r}")
    return f"{image.image_id}-{suffix}.{EXTENSIONS[fmt]}"


def _dump(metadata: dict[str, Any]) -> bytes:
    return strictjson.dumps(metadata, indent=2, ensure_ascii=False).encode() + b"\n"


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)

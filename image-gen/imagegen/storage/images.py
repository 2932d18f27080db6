"""The image store: jobs and their images as blobs, found by exact id through the index.

    <job-uuid>/metadata.json                       the job: request, usage, each image
    <job-uuid>/NNN-<image-uuid>.<ext>              its images
    <job-uuid>/thumbs/<image-uuid>-w<width>.<ext>  cached thumbnails

(keys of storage/blobs.py, spelled by storage/layout.py; on disk under the images
directory, or in a bucket under a prefix). A job is published whole (a reader never sees
half of one); the index (storage/index.py) finds an image by id, orders jobs for listing,
holds each job's metadata (metadata.json on disk; in a database, with metadata.json in the
bucket as its mirror) and locks a job while its metadata changes. Nothing here names a
file: the blob store and the index do.

A blob store that cannot be reached (S3 down) is StorageUnavailable, 503 with Retry-After.
New work asks `check_available` before the upstream is called, so that no image is paid
for that could not be kept. When the store (or the database holding its index) stops
answering after the upstream has answered, a bucket's store keeps the whole job in the
spool of the images directory (storage/spool.py) and says so (JobKept, 202); its flusher
stores the job, same ids, same bytes, once they answer again.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, TypeVar

from imagegen import strictjson
from imagegen.clock import utc_now
from imagegen.errors import (
    DatabaseUnavailable,
    ImageNotFound,
    InsufficientStorage,
    JobKept,
    StorageUnavailable,
)
from imagegen.imaging.formats import EXTENSIONS, OUTPUT_CONTENT_TYPES, OUTPUT_EXTENSIONS
from imagegen.storage import durable
from imagegen.storage.blobs import (
    BlobInfo,
    BlobNotFound,
    Blobs,
    BlobStoreUnavailable,
    Publication,
)
from imagegen.storage.durable import is_disk_full
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.index import FileIndex, ImageIndex, normalize_id
from imagegen.storage.layout import (
    METADATA,
    Layout,
    image_name,
    job_key,
    metadata_key,
    thumbnails_prefix,
)
from imagegen.storage.spool import Flusher, KeptJob, Spool, Superseded, copy_of
from imagegen.upstream.providers import GeneratedImage, Generation

__all__ = ["ImageStore", "StoredImage", "normalize_id", "thumbnail_name"]

log = logging.getLogger(__name__)

# Cached thumbnails kept per image: a caller may ask for any of some 12 million variants
# (every width and height from 16 to 2048, three formats), and the disk must not fill up
# with them. The least recently used go first.
MAX_THUMBNAILS = 16
_THUMB_SUFFIX = re.compile(r"^[a-z0-9-]{1,32}$")
_FORMATS = {ext: fmt for fmt, ext in OUTPUT_EXTENSIONS.items()}
# How long a process trusts what it last learnt of the blob store's reachability before new
# work asks it again (one HEAD of the bucket a second, at most, on S3).
AVAILABILITY_TTL = 1.0
RETRY_AFTER = 5  # seconds, when the blob store cannot be reached
# What a store or index out of reach raises: a job then goes to the spool, if there is one.
_UNREACHABLE = (BlobStoreUnavailable, DatabaseUnavailable)
_CREATED_MEMORY = 100_000  # jobs whose created_at a process remembers (listing ties)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reachable(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """An ImageStore method whose blob store being unreachable is StorageUnavailable (and
    is remembered, so new work is refused at once until the store answers again)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except BlobStoreUnavailable:
            store = args[0]
            assert isinstance(store, ImageStore)
            store._availability.saw(False)
            raise store.unavailable() from None

    return wrapper


class _Availability:
    """What this process last learnt of whether the blob store can be reached, and when."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: tuple[float, bool] = (float("-inf"), True)

    def saw(self, reachable: bool) -> None:
        with self._lock:
            self._state = (time.monotonic(), reachable)

    def known(self) -> bool | None:
        """The last answer while it is fresh (AVAILABILITY_TTL), else None: ask again."""
        with self._lock:
            at, reachable = self._state
        return reachable if time.monotonic() - at < AVAILABILITY_TTL else None


@dataclass(frozen=True)
class StoredImage:
    """One stored image: where it is (its blob key) and what it is, not its bytes."""

    image_id: str
    job_id: str
    key: str
    format: str
    size: int
    modified: float

    @property
    def content_type(self) -> str:
        return OUTPUT_CONTENT_TYPES[self.format]

    @property
    def name(self) -> str:
        """Its file name, `NNN-<image-id>.<ext>`."""
        return self.key.rpartition("/")[2]


@dataclass(frozen=True)
class Cached:
    """An open cached thumbnail: its bytes as a stream (close it) and what they are."""

    stream: BinaryIO
    info: BlobInfo


class ImageStore:
    """Jobs and images in a blob store, written atomically and found by exact id."""

    def __init__(self, blobs: Blobs, index: ImageIndex, *, spool: Spool | None = None) -> None:
        self.blobs = blobs
        self.index = index
        # Jobs made while the store or its index is out of reach (a bucket's; None on disk).
        self.spool = spool
        self.flusher = (
            Flusher(
                spool,
                self.store_kept,
                unreachable=_UNREACHABLE,
                set_aside=self._set_aside,
                renew=index.note_kept,
            )
            if spool is not None
            else None
        )
        # created_at of jobs, which never changes, shared by a worker's threads (listing).
        self._created: dict[str, str] = {}
        self._availability = _Availability()

    @classmethod
    def on_disk(cls, root: Path | Layout, *, fsync: bool = True) -> ImageStore:
        """The store in an images directory: files and symlinks (call Layout.prepare first)."""
        layout = root if isinstance(root, Layout) else Layout(root)
        return cls(FileBlobs(layout.root, fsync=fsync), FileIndex(layout, fsync=fsync))

    # --- availability ---------------------------------------------------------------------

    def check_available(self) -> None:
        """StorageUnavailable if the blob store cannot be written now: new work asks before
        the upstream is called. The answer is kept for AVAILABILITY_TTL seconds."""
        known = self._availability.known()
        if known is None:
            known = self.blobs.writable()
            self._availability.saw(known)
            if known and self.flusher is not None:
                self.flusher.nudge()  # jobs kept by a process that has gone since
        if not known:
            raise self.unavailable()

    @staticmethod
    def unavailable() -> StorageUnavailable:
        return StorageUnavailable(
            "The image store cannot be reached; nothing was done. Try again later.",
            retry_after=RETRY_AFTER,
        )

    # --- writing --------------------------------------------------------------------------

    @_reachable
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
        With a spool, a store or index out of reach keeps the job there instead (JobKept).
        """
        job_id = job_id or str(uuid.uuid4())
        created = utc_now()
        image_ids = [str(uuid.uuid4()) for _ in generation.images]
        publication = self.blobs.publish(job_id, marker=METADATA)
        indexed: list[str] = []
        metadata: dict[str, Any] | None = None
        pending = durable.Pending()
        try:
            images = self._stage_images(publication, request, generation, image_ids)
            metadata = _job_metadata(job_id, created, request, generation, extra, images)
            publication.put(METADATA, _dump(metadata))
            self.index.stage(publication)
            publication.seal()
            indexed = [image["id"] for image in images]
            pending = self.index.add(job_id, _entries(job_id, images), metadata)
            publication.commit()
            pending.wait()
        except BaseException as exc:
            pending.wait(quietly=True)
            unreachable = isinstance(exc, _UNREACHABLE)
            # An index out of reach takes no undo either: the spool's flush puts it right.
            spooled_index = self.spool is not None and isinstance(exc, DatabaseUnavailable)
            # A job stored already (another copy, made elsewhere) keeps its rows.
            if indexed and not spooled_index and not isinstance(exc, Superseded):
                with suppress(Exception):  # what could not be undone is told, not this
                    self.index.remove_job(job_id, indexed)
            with suppress(*((Exception,) if unreachable else ())):
                publication.abort()  # the caller is told nothing was saved
            if is_disk_full(exc):
                raise InsufficientStorage(
                    "The image store is full; nothing was saved. Free "
                    "space or delete images, then try again."
                ) from None
            if unreachable and self.spool is not None:
                if metadata is None:
                    pairs = zip(image_ids, generation.images, strict=True)
                    images = [
                        _image_entry(n, i, image, request) for n, (i, image) in enumerate(pairs, 1)
                    ]
                    metadata = _job_metadata(job_id, created, request, generation, extra, images)
                self._keep(metadata, generation, exc)
            raise
        return metadata

    def _keep(self, metadata: dict[str, Any], generation: Generation, cause: BaseException) -> None:
        """Keep a job the store could not take in the spool and raise JobKept; if even the
        spool cannot take it, the caller gets `cause`, as without a spool."""
        assert self.spool is not None and self.flusher is not None
        job_id = metadata["job_id"]
        files = [
            (entry["file"], image.data)
            for entry, image in zip(metadata["images"], generation.images, strict=True)
        ]
        try:
            self.spool.keep(job_id, _dump(metadata), files)
        except OSError as exc:
            log.error("job %s could not be kept in the spool either: %s", job_id, exc.strerror)
            return
        if isinstance(cause, BlobStoreUnavailable):
            self._availability.saw(False)
            # The index answers: every replica can then say the job is storing, not 404.
            try:
                self.index.note_kept(job_id, metadata)
            except Exception as exc:  # this replica still answers for it from its spool
                log.warning("job %s: its note as kept was not written: %s", job_id, exc)
        log.warning(
            "job %s kept in the spool (%d images): the %s cannot be reached; it is stored "
            "once it answers",
            job_id,
            len(files),
            "database" if isinstance(cause, DatabaseUnavailable) else "image store",
        )
        self.flusher.nudge()
        raise JobKept(
            "The images were made (and paid for), but the image store cannot be reached now. "
            f"They are kept by this service and stored as soon as it answers: poll "
            f"GET /jobs/{job_id}; the images will then be at their URLs.",
            job_id=job_id,
            images=[entry["id"] for entry in metadata["images"]],
            retry_after=RETRY_AFTER,
        ) from None

    def store_kept(self, kept: KeptJob) -> None:
        """Write a job of the spool to the store, idempotently: its blobs are put again under
        the same keys; the index gets it unless it has it already (an earlier flush that
        failed after indexing it). Nothing is undone on failure: the next flush puts it all."""
        job_id, metadata = kept.job_id, kept.metadata
        indexed = self.index.metadata(job_id)
        if indexed is not None and copy_of(indexed) != copy_of(metadata):
            raise Superseded(f"job {job_id} is stored with other images")
        publication = self.blobs.publish(job_id, marker=METADATA)
        for name, data in kept.files:
            publication.put(name, data)
        publication.put(METADATA, _dump(metadata))
        self.index.stage(publication)
        publication.seal()
        if indexed is None:
            try:
                self.index.add(job_id, _entries(job_id, metadata["images"]), metadata).wait()
            except Superseded:  # another copy stored meanwhile, or this one's note abandoned
                publication.abort()  # this copy's own keys (its image ids; no marker yet)
                raise
        else:
            self.index.forget_kept(job_id)  # `add` would have
        publication.commit()
        self._availability.saw(True)

    def _set_aside(self, job_id: str) -> None:
        """A kept job's entry is damaged and never stored: it is no longer said storing."""
        try:
            self.index.forget_kept(job_id)
        except Exception as exc:
            log.warning("job %s: its note as kept could not be removed: %s", job_id, exc)

    def kept_job(self, job_id: str) -> dict[str, Any] | None:
        """The metadata of a job kept in a spool, not stored yet: this replica's, or one the
        index notes as kept by another replica; else None."""
        canonical = normalize_id(job_id)
        if self.spool is None or canonical is None:
            return None
        return self.spool.metadata(canonical) or self.index.kept(canonical)

    def give_up_kept(self, job_id: str, *, stale: bool) -> bool:
        """Whether a job's images, made but not stored, are nobody's to store any more, so
        that it may be made again: this replica's spool does not keep a copy of them, and
        the index notes none but abandoned ones (with `stale`, first abandoning the notes
        not renewed for spool.KEPT_FOR seconds: pass it only after waiting that long
        oneself, with the index reachable). A keeper of an abandoned copy, if it comes
        back, never stores it. False while a spool keeps one: wait for it to be stored."""
        canonical = normalize_id(job_id)
        if self.spool is None or canonical is None:
            return True  # on disk nothing is ever kept
        if self.spool.metadata(canonical) is not None:
            return False
        return self.index.abandon_kept(canonical, stale=stale)

    def kept_damaged(self, job_id: str) -> bool:
        """Whether this replica's spool set the job aside as damaged: it is never stored."""
        canonical = normalize_id(job_id)
        return self.spool is not None and canonical is not None and self.spool.damaged(canonical)

    def resume_kept(self) -> None:
        """Start flushing what the spool holds (at start-up: kept by an earlier process)."""
        if self.spool is not None and self.flusher is not None:
            self.spool.sweep()
            self.flusher.nudge()

    @staticmethod
    def _stage_images(
        publication: Publication,
        request: dict[str, Any],
        generation: Generation,
        image_ids: list[str],
    ) -> list[dict[str, Any]]:
        """Stage each image and return its metadata entry (hashed while its write syncs)."""
        images = []
        for number, (image_id, image) in enumerate(
            zip(image_ids, generation.images, strict=True), start=1
        ):
            name = image_name(number, image_id, OUTPUT_EXTENSIONS[image.format])
            publication.put(name, image.data)
            images.append(_image_entry(number, image_id, image, request))
        return images

    # --- reading --------------------------------------------------------------------------

    @_reachable
    def find_image(self, image_id: str) -> StoredImage:
        """The stored image with exactly this id; ImageNotFound otherwise."""
        canonical, job_id, key = self._located(image_id)
        try:
            info = self.blobs.info(key)
        except BlobNotFound:
            raise ImageNotFound(f"Image {canonical} not found.") from None
        return _stored(canonical, job_id, info)

    @_reachable
    def open_found(self, image_id: str) -> tuple[StoredImage, BinaryIO]:
        """find_image and open_image in one step: the index, then one read of the blob
        (one GET on S3, where the two would make a HEAD and a GET); close the stream."""
        canonical, job_id, key = self._located(image_id)
        try:
            stream, info = self.blobs.open_with_info(key)
        except BlobNotFound:
            raise ImageNotFound(f"Image {canonical} not found.") from None
        return _stored(canonical, job_id, info), stream

    def _located(self, image_id: str) -> tuple[str, str, str]:
        """(canonical id, job id, blob key) of the image from the index; ImageNotFound."""
        canonical = normalize_id(image_id)
        if canonical is None:
            raise ImageNotFound(f"Image {image_id[:64]!r} not found: ids are UUIDs.")
        found = self.index.find(canonical)
        if found is None:
            raise ImageNotFound(f"Image {canonical} not found.")
        return canonical, found[0], found[1]

    @_reachable
    def open_image(self, image: StoredImage) -> BinaryIO:
        """The image's bytes as a stream (close it); ImageNotFound if deleted meanwhile."""
        try:
            return self.blobs.open(image.key)
        except BlobNotFound:
            raise ImageNotFound(f"Image {image.image_id} not found.") from None

    @_reachable
    def read_image(self, image: StoredImage) -> bytes:
        """The image's bytes; ImageNotFound if deleted meanwhile."""
        try:
            return self.blobs.get(image.key)
        except BlobNotFound:
            raise ImageNotFound(f"Image {image.image_id} not found.") from None

    def job_metadata(self, job_id: str) -> dict[str, Any] | None:
        """A stored job's metadata by its exact id; None if there is none (or it is damaged)."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        return self.index.metadata(canonical)

    # --- thumbnails -----------------------------------------------------------------------
    # A cache beside the job's images, never in metadata.json, the index or a listing. A
    # thumbnail is put atomically, so threads and workers making the same one at once all
    # succeed and readers never see half a file. At most MAX_THUMBNAILS are kept per image:
    # a blob's use time is when it was last made or served (Blobs.touch), and whoever caches
    # one more removes the least recently used beyond the bound. Removals race with no harm:
    # a cached blob that vanishes before it is opened is made again, and the last to list
    # the folder sees every blob made before it, so the bound holds.

    @_reachable
    def open_thumbnail(self, image: StoredImage, suffix: str, fmt: str) -> Cached | None:
        """The cached thumbnail of `image` for this variant (e.g. `w256`), opened and marked
        as just used; None if none was made (or it was dropped meanwhile)."""
        key = self._thumbnail_key(image, suffix, fmt)
        try:
            self.blobs.touch(key)
            stream = self.blobs.open(key)
        except BlobNotFound:
            return None
        try:
            return Cached(stream, self.blobs.info(key))
        except BlobNotFound:
            stream.close()
            return None

    @_reachable
    def save_thumbnail(self, image: StoredImage, suffix: str, fmt: str, data: bytes) -> bool:
        """Cache a thumbnail atomically; whether it was.

        False when it cannot be written (a full or read-only disk): the caller serves the
        bytes it has, since a cache must not turn a read into a failure. ImageNotFound if
        the image or its job was deleted meanwhile; then nothing is left behind.
        """
        if not self.index.contains(image.image_id):
            raise ImageNotFound(f"Image {image.image_id} not found.")
        key = self._thumbnail_key(image, suffix, fmt)
        try:
            self.blobs.put(key, data)
        except OSError as exc:
            log.warning("thumbnail of image %s not cached: %s", image.image_id, exc.strerror)
            return False
        # delete_image drops the index entry before it drops thumbnails: if the entry is
        # still here, any delete comes later and removes this blob too.
        if not self.index.contains(image.image_id):
            self.blobs.delete(key)
            if self.job_metadata(image.job_id) is None:  # the put made the job's folder again
                self.blobs.delete_prefix(f"{image.job_id}/")
            raise ImageNotFound(f"Image {image.image_id} not found.")
        self._trim_thumbnails(image, keep=key)
        return True

    def _trim_thumbnails(self, image: StoredImage, *, keep: str) -> None:
        """Remove the least recently used cached thumbnails of `image` beyond MAX_THUMBNAILS
        (never `keep`, the one just made)."""
        used: list[tuple[int, str]] = []
        for key in self.blobs.list(thumbnails_prefix(image.job_id, f"{image.image_id}-")):
            if key != keep:
                with suppress(BlobNotFound):
                    used.append((self.blobs.used_ns(key), key))
        used.sort()
        for _, stale in used[: max(0, len(used) + 1 - MAX_THUMBNAILS)]:
            self.blobs.delete(stale)

    @staticmethod
    def _thumbnail_key(image: StoredImage, suffix: str, fmt: str) -> str:
        return thumbnails_prefix(image.job_id, thumbnail_name(image, suffix, fmt))

    # --- deleting -------------------------------------------------------------------------

    @_reachable
    def delete_image(self, image_id: str) -> StoredImage:
        """Remove the image's file and index entry; mark it deleted in its job's metadata."""
        image = self.find_image(image_id)
        try:
            with self.index.locked(image.job_id):
                metadata = self.index.metadata(image.job_id)
                # Another caller deleted it, or its whole job, meanwhile.
                if metadata is None or not self.index.contains(image.image_id):
                    raise ImageNotFound(f"Image {image.image_id} not found.")
                now = utc_now()
                for entry in metadata.get("images", []):
                    if entry.get("id") == image.image_id:
                        entry["status"] = "deleted"
                        entry["deleted_at"] = now
                # The metadata first: if it cannot be written, nothing has changed.
                self._put_metadata(image.job_id, metadata)
                self.index.remove(image.image_id)
                self.blobs.delete(image.key)
                for key in list(self.blobs.list(thumbnails_prefix(image.job_id, image.image_id))):
                    self.blobs.delete(key)
        except (FileNotFoundError, BlobNotFound):  # the whole job was deleted meanwhile
            raise ImageNotFound(f"Image {image.image_id} not found.") from None
        return image

    def _put_metadata(self, job_id: str, metadata: dict[str, Any]) -> None:
        """metadata.json, then the index (where it is kept in a database)."""
        try:
            self.blobs.put(metadata_key(job_id), _dump(metadata))
        except OSError as exc:
            if is_disk_full(exc):
                raise InsufficientStorage("The image store is full; nothing was changed.") from None
            raise
        self.index.update(job_id, metadata)

    @_reachable
    def delete_job(self, job_id: str) -> dict[str, Any] | None:
        """Remove a whole job and return its metadata; None if there is no such job.

        Under the job's lock the index entries go first, so no lookup finds an image that is
        about to vanish; then the job's blobs go at once (its folder renamed out of sight),
        so a reader in any process sees the whole job or none of it.
        """
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        try:
            with self.index.locked(canonical):
                metadata = self.job_metadata(canonical)
                if not isinstance(metadata, dict):  # damaged: remove it all the same
                    metadata = {"job_id": canonical, "images": []}
                images = metadata.get("images", [])
                image_ids = [normalize_id(str(image.get("id", ""))) for image in images]
                self.index.remove_job(canonical, [i for i in image_ids if i is not None])
                self.blobs.delete_prefix(f"{canonical}/")
        except (FileNotFoundError, BlobNotFound):  # another process deleted it first
            return None
        return metadata

    # --- housekeeping ---------------------------------------------------------------------

    def writable(self) -> bool:
        """Whether new jobs can be stored now (for /health, which asks every time)."""
        writable = self.blobs.writable()
        self._availability.saw(writable)
        return writable

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove what crashed writers left: staged jobs, dangling index entries, and blobs
        no indexed job owns (each as its store and index can tell)."""
        return self.blobs.sweep(older_than) + self.index.sweep(older_than, self.blobs)

    # --- browsing ---------------------------------------------------------------------------
    # Jobs are listed newest first by their stamp in the index (storage/index.py). Jobs
    # stored within one clock tick (a few ms) are ordered by `created_at`, then by id. A
    # position in that order is the tuple (stamp_ns, created_at, job_id, offset), where
    # `offset` images of that job were passed.

    @_reachable
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

    def _jobs_from(
        self, after: tuple[int, str, str, int] | None, job_id: str | None
    ) -> Iterator[tuple[tuple[int, str, str], dict[str, Any]]]:
        """(sort key, metadata) of each job in listing order, from the job at `after` on.
        Jobs of one tick are ordered by created_at, remembered per process (it never
        changes) so that passing over many of them does not read each one's metadata."""
        order: Iterator[tuple[int, str, dict[str, Any] | None]]
        if job_id is not None:
            canonical = normalize_id(job_id)
            order = iter([(self.index.stamp(canonical) or 0, canonical, None)] if canonical else [])
        else:
            order = self.index.job_order(after[0] if after is not None else None)
        cache = self._created
        if len(cache) > _CREATED_MEMORY:
            cache.clear()
        for tick, members in itertools.groupby(order, key=lambda entry: entry[0]):
            entries = list(members)
            group: list[tuple[tuple[int, str, str], dict[str, Any] | None]] = []
            for _, name, metadata in entries:
                if metadata is not None:  # it came with the order (a database)
                    group.append(((tick, str(metadata.get("created_at", "")), name), metadata))
                    continue
                created = cache.get(name)
                if created is None or len(entries) == 1:
                    metadata = self.job_metadata(name)
                    if not isinstance(metadata, dict):  # deleted since the scan, or damaged
                        continue
                    created = cache[name] = str(metadata.get("created_at", ""))
                group.append(((tick, created, name), metadata))
            group.sort(key=lambda item: item[0], reverse=True)
            for key, kept in group:
                if after is not None and key > after[:3]:
                    continue
                kept = kept or self.job_metadata(key[2])
                if isinstance(kept, dict):
                    yield key, kept


def _stored(image_id: str, job_id: str, info: BlobInfo) -> StoredImage:
    fmt = _FORMATS[info.key.rpartition(".")[2]]
    return StoredImage(image_id, job_id, info.key, fmt, info.size, info.modified)


def thumbnail_name(image: StoredImage, suffix: str, fmt: str) -> str:
    """A thumbnail's file name, which its ETag also uses: `<image-id>-<suffix>.<ext>`."""
    if not _THUMB_SUFFIX.match(suffix) or fmt not in EXTENSIONS:
        raise ValueError(f"not a thumbnail variant: {suffix!r} {fmt!r}")
    return f"{image.image_id}-{suffix}.{EXTENSIONS[fmt]}"


def _job_metadata(
    job_id: str,
    created: str,
    request: dict[str, Any],
    generation: Generation,
    extra: dict[str, Any] | None,
    images: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
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


def _image_entry(
    number: int, image_id: str, image: GeneratedImage, request: dict[str, Any]
) -> dict[str, Any]:
    """One image's entry in its job's metadata."""
    return {
        "id": image_id,
        "file": image_name(number, image_id, OUTPUT_EXTENSIONS[image.format]),
        "format": image.format,
        "content_type": OUTPUT_CONTENT_TYPES[image.format],
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


def _entries(job_id: str, images: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (image id, blob key) pairs the index keeps for a job's images."""
    return [(image["id"], job_key(job_id, image["file"])) for image in images]


def _dump(metadata: dict[str, Any]) -> bytes:
    return strictjson.dumps(metadata, indent=2, ensure_ascii=False).encode() + b"\n"

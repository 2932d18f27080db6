"""The image store: jobs and their images as blobs, found by exact id through the index.

    <job-uuid>/metadata.json                       the job: request, usage, each image
    <job-uuid>/NNN-<image-uuid>.<ext>              its images
    <job-uuid>/thumbs/<image-uuid>-w<width>.<ext>  cached thumbnails

(keys of storage/blobs.py, spelled by storage/layout.py; on disk under the images
directory). A job is published whole (a reader never sees half of one); the index
(storage/index.py) finds an image by id, orders jobs for listing and locks a job while its
metadata changes. Nothing here names a file: the blob store and the index do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from imagegen import strictjson
from imagegen.clock import utc_now
from imagegen.errors import ImageNotFound, InsufficientStorage
from imagegen.imaging.formats import EXTENSIONS, OUTPUT_CONTENT_TYPES, OUTPUT_EXTENSIONS
from imagegen.storage import durable
from imagegen.storage.blobs import BlobInfo, BlobNotFound, Blobs, Publication
from imagegen.storage.durable import is_disk_full
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.index import FileIndex, ImageIndex, normalize_id
from imagegen.storage.layout import (
    LOCK,
    METADATA,
    Layout,
    image_name,
    job_key,
    lock_key,
    metadata_key,
    thumbnails_prefix,
)
from imagegen.upstream.providers import Generation

__all__ = ["ImageStore", "StoredImage", "normalize_id", "thumbnail_name"]

log = logging.getLogger(__name__)

# Cached thumbnails kept per image: a caller may ask for any of some 12 million variants
# (every width and height from 16 to 2048, three formats), and the disk must not fill up
# with them. The least recently used go first.
MAX_THUMBNAILS = 16
_THUMB_SUFFIX = re.compile(r"^[a-z0-9-]{1,32}$")
_FORMATS = {ext: fmt for fmt, ext in OUTPUT_EXTENSIONS.items()}


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

    def __init__(self, blobs: Blobs, index: ImageIndex) -> None:
        self.blobs = blobs
        self._index = index
        # created_at of jobs, which never changes, shared by a worker's threads (listing).
        self._created: dict[str, str] = {}

    @classmethod
    def on_disk(cls, root: Path | Layout, *, fsync: bool = True) -> ImageStore:
        """The store in an images directory: files and symlinks (call Layout.prepare first)."""
        layout = root if isinstance(root, Layout) else Layout(root)
        return cls(FileBlobs(layout.root, fsync=fsync), FileIndex(layout, fsync=fsync))

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
        publication = self.blobs.publish(job_id, marker=METADATA)
        indexed: list[str] = []
        pending = durable.Pending()
        try:
            images = self._stage_images(publication, request, generation)
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
            publication.put(METADATA, _dump(metadata))
            publication.put(LOCK, b"")  # last: its write time is the job's listing time
            publication.seal()
            indexed = [image["id"] for image in images]
            pending = self._index.add(
                [(image["id"], job_key(job_id, image["file"])) for image in images]
            )
            publication.commit()
            pending.wait()
        except BaseException as exc:
            pending.wait(quietly=True)
            for image_id in indexed:
                self._index.remove(image_id)
            publication.abort()  # the caller is told nothing was saved
            if is_disk_full(exc):
                raise InsufficientStorage(
                    "The image store is full; nothing was saved. Free "
                    "space or delete images, then try again."
                ) from None
            raise
        return metadata

    @staticmethod
    def _stage_images(
        publication: Publication, request: dict[str, Any], generation: Generation
    ) -> list[dict[str, Any]]:
        """Stage each image and return its metadata entry (hashed while its write syncs)."""
        images = []
        for number, image in enumerate(generation.images, start=1):
            image_id = str(uuid.uuid4())
            name = image_name(number, image_id, OUTPUT_EXTENSIONS[image.format])
            publication.put(name, image.data)
            images.append(
                {
                    "id": image_id,
                    "file": name,
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
            )
        return images

    # --- reading --------------------------------------------------------------------------

    def find_image(self, image_id: str) -> StoredImage:
        """The stored image with exactly this id; ImageNotFound otherwise."""
        canonical = normalize_id(image_id)
        if canonical is None:
            raise ImageNotFound(f"Image {image_id[:64]!r} not found: ids are UUIDs.")
        found = self._index.find(canonical)
        if found is None:
            raise ImageNotFound(f"Image {canonical} not found.")
        job_id, key = found
        try:
            info = self.blobs.info(key)
        except BlobNotFound:
            raise ImageNotFound(f"Image {canonical} not found.") from None
        fmt = _FORMATS[key.rpartition(".")[2]]
        return StoredImage(canonical, job_id, key, fmt, info.size, info.modified)

    def open_image(self, image: StoredImage) -> BinaryIO:
        """The image's bytes as a stream (close it); ImageNotFound if deleted meanwhile."""
        try:
            return self.blobs.open(image.key)
        except BlobNotFound:
            raise ImageNotFound(f"Image {image.image_id} not found.") from None

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
        try:
            metadata = json.loads(self.blobs.get(metadata_key(canonical)))
        except (BlobNotFound, OSError, ValueError):
            return None
        return metadata if isinstance(metadata, dict) else None

    # --- thumbnails -----------------------------------------------------------------------
    # A cache beside the job's images, never in metadata.json, the index or a listing. A
    # thumbnail is put atomically, so threads and workers making the same one at once all
    # succeed and readers never see half a file. At most MAX_THUMBNAILS are kept per image:
    # a blob's use time is when it was last made or served (Blobs.touch), and whoever caches
    # one more removes the least recently used beyond the bound. Removals race with no harm:
    # a cached blob that vanishes before it is opened is made again, and the last to list
    # the folder sees every blob made before it, so the bound holds.

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

    def save_thumbnail(self, image: StoredImage, suffix: str, fmt: str, data: bytes) -> bool:
        """Cache a thumbnail atomically; whether it was.

        False when it cannot be written (a full or read-only disk): the caller serves the
        bytes it has, since a cache must not turn a read into a failure. ImageNotFound if
        the image or its job was deleted meanwhile; then nothing is left behind.
        """
        if not self._index.contains(image.image_id):
            raise ImageNotFound(f"Image {image.image_id} not found.")
        key = self._thumbnail_key(image, suffix, fmt)
        try:
            self.blobs.put(key, data)
        except OSError as exc:
            log.warning("thumbnail of image %s not cached: %s", image.image_id, exc.strerror)
            return False
        # delete_image drops the index entry before it drops thumbnails: if the entry is
        # still here, any delete comes later and removes this blob too.
        if not self._index.contains(image.image_id):
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

    def delete_image(self, image_id: str) -> StoredImage:
        """Remove the image's file and index entry; mark it deleted in its job's metadata."""
        image = self.find_image(image_id)
        try:
            with self._index.locked(image.job_id):
                if not self._index.contains(image.image_id):  # another caller deleted it
                    raise ImageNotFound(f"Image {image.image_id} not found.")
                metadata = json.loads(self.blobs.get(metadata_key(image.job_id)))
                now = utc_now()
                for entry in metadata.get("images", []):
                    if entry.get("id") == image.image_id:
                        entry["status"] = "deleted"
                        entry["deleted_at"] = now
                # The metadata first: if it cannot be written, nothing has changed.
                self._put_metadata(image.job_id, metadata)
                self._index.remove(image.image_id)
                self.blobs.delete(image.key)
                for key in list(self.blobs.list(thumbnails_prefix(image.job_id, image.image_id))):
                    self.blobs.delete(key)
        except (FileNotFoundError, BlobNotFound):  # the whole job was deleted meanwhile
            raise ImageNotFound(f"Image {image.image_id} not found.") from None
        return image

    def _put_metadata(self, job_id: str, metadata: dict[str, Any]) -> None:
        try:
            self.blobs.put(metadata_key(job_id), _dump(metadata))
        except OSError as exc:
            if is_disk_full(exc):
                raise InsufficientStorage("The image store is full; nothing was changed.") from None
            raise

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
            with self._index.locked(canonical):
                self.blobs.info(lock_key(canonical))  # still here once we hold the lock?
                metadata = self.job_metadata(canonical)
                if not isinstance(metadata, dict):  # damaged: remove it all the same
                    metadata = {"job_id": canonical, "images": []}
                for image in metadata.get("images", []):
                    image_id = normalize_id(str(image.get("id", "")))
                    if image_id is not None:
                        self._index.remove(image_id)
                self.blobs.delete_prefix(f"{canonical}/")
        except (FileNotFoundError, BlobNotFound):  # another process deleted it first
            return None
        return metadata

    # --- housekeeping ---------------------------------------------------------------------

    def writable(self) -> bool:
        """Whether new jobs can be stored now (for /health)."""
        return self.blobs.writable()

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove what crashed writers left: staged jobs and dangling index entries."""
        return self.blobs.sweep(older_than) + self._index.sweep(older_than)

    # --- browsing ---------------------------------------------------------------------------
    # Jobs are listed newest first by their stamp in the index (storage/index.py). Jobs
    # stored within one clock tick (a few ms) are ordered by `created_at`, then by id. A
    # position in that order is the tuple (stamp_ns, created_at, job_id, offset), where
    # `offset` images of that job were passed.

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
        """(sort key, metadata) of each job in listing order, from the job at `after` on."""
        if job_id is not None:
            canonical = normalize_id(job_id)
            names = [(self._index.stamp(canonical) or 0, canonical)] if canonical else []
        else:
            names = self._index.job_order()
            self._forget_gone(names)
        if after is not None:  # skip the ticks newer than the cursor's
            first = next((n for n, (tick, _) in enumerate(names) if tick <= after[0]), len(names))
            names = names[first:]
        cache = self._created
        i = 0
        while i < len(names):
            tick = names[i][0]
            j = i
            while j < len(names) and names[j][0] == tick:
                j += 1
            group = []
            for _, name in names[i:j]:
                metadata = None
                created = cache.get(name)
                if created is None or j - i == 1:
                    metadata = self.job_metadata(name)
                    if not isinstance(metadata, dict):  # deleted since the scan, or damaged
                        continue
                    created = str(metadata.get("created_at", ""))
                    cache[name] = created
                group.append(((tick, created, name), metadata))
            group.sort(key=lambda item: item[0], reverse=True)
            for key, metadata in group:
                if after is not None and key > after[:3]:
                    continue
                metadata = metadata or self.job_metadata(key[2])
                if isinstance(metadata, dict):
                    yield key, metadata
            i = j

    def _forget_gone(self, names: list[tuple[int, str]]) -> None:
        """Keep the created_at memory about the size of the store."""
        if len(self._created) > 2 * len(names) + 1000:
            present = {name for _, name in names}
            self._created = {k: v for k, v in self._created.items() if k in present}


def thumbnail_name(image: StoredImage, suffix: str, fmt: str) -> str:
    """A thumbnail's file name, which its ETag also uses: `<image-id>-<suffix>.<ext>`."""
    if not _THUMB_SUFFIX.match(suffix) or fmt not in EXTENSIONS:
        raise ValueError(f"not a thumbnail variant: {suffix!r} {fmt!r}")
    return f"{image.image_id}-{suffix}.{EXTENSIONS[fmt]}"


def _dump(metadata: dict[str, Any]) -> bytes:
    return strictjson.dumps(metadata, indent=2, ensure_ascii=False).encode() + b"\n"

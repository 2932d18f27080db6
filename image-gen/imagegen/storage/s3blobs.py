"""Blobs as objects in an S3-compatible bucket, under one prefix (storage/blobs.py).

A key is the object's name after `<prefix>/`, in the documented layout
(`<job-uuid>/NNN-<image-uuid>.<ext>`, `<job-uuid>/metadata.json`). A PUT is atomic, so
readers see the old or the new bytes; a job is published by putting every blob first and its
marker (metadata.json) last, so a reader that goes by the marker never sees half a job. The
other blobs of a job being published are listed before its marker is there.

What S3 cannot do as a disk does, and what this store does instead:
- `touch` does nothing but check that the blob exists: an object has no access time, and a
  copy in place per served thumbnail would cost more than the cache saves. `used_ns` is the
  write time, so the thumbnail cache drops the oldest made, not the least recently served.
- `sweep` removes nothing here: nothing is staged under another name. A writer that dies
  while publishing (before its index rows are committed: `abort` never ran) leaves blobs
  without a marker under `<job>/`, which the service never shows (it goes by the index);
  the image index's sweep (storage/tableindex.py) removes those whose job has no row once
  they are old enough. A bucket lifecycle rule should abort incomplete multipart uploads.
- `delete_prefix` is not one step: it lists, then deletes in batches of 1000 keys (one
  request for any job the service writes), so a reader may see some blobs gone first.
- `modified_ns` is this process's clock when it wrote the blob (object metadata
  `written-ns`), finer than Last-Modified's seconds; objects others wrote use Last-Modified.

Failures other than a missing key are OSError; the store being unreachable (no connection,
timeouts, 5xx after the client's retries, no such bucket, no credentials) is
BlobStoreUnavailable, a ConnectionError, which the service answers with 503
STORAGE_UNAVAILABLE (errors.StorageUnavailable).
"""

from __future__ import annotations

import errno
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from imagegen.storage.blobs import (
    BlobInfo,
    BlobNotFound,
    BlobStoreUnavailable,
    check_key,
    check_prefix,
)

__all__ = ["BlobStoreUnavailable", "S3Blobs", "credentials_found", "s3_blobs_from_url", "s3_client"]

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_UNAVAILABLE = frozenset(
    {"NoSuchBucket", "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
)
_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"})
_WRITTEN = "written-ns"  # object metadata: when this store wrote it, in ns
_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_UPLOADERS = 8  # a publication uploads this many blobs at once
_CHUNK = 1 << 16


class S3Blobs:
    """Blobs in `bucket` under `prefix` (no leading or trailing `/`; empty: the whole bucket),
    through a boto3 S3 `client` (thread-safe; one per process)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.client = client

    def _name(self, key: str) -> str:
        return self._base + check_key(key)

    # --- one blob ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        """One PUT for bytes; a stream goes through upload_fileobj (multipart when large)."""
        name = self._name(key)
        now = time.time_ns()
        metadata = {_WRITTEN: str(now)}
        with _translated(key):
            if isinstance(data, bytes | bytearray | memoryview):
                body = bytes(data)
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=name, Body=body, Metadata=metadata
                )
                return BlobInfo(key, len(body), now, answer["ETag"].strip('"'))
            self.client.upload_fileobj(data, self.bucket, name, ExtraArgs={"Metadata": metadata})
        return self.info(key)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream, _translated(key):
            return stream.read()

    def open(self, key: str) -> BinaryIO:
        """The object's body, streamed as it is read (the caller closes it); a connection
        lost while reading is BlobStoreUnavailable, as everywhere."""
        name = self._name(key)
        with _translated(key):
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        return io.BufferedReader(_Body(body, key), _CHUNK)

    def open_with_info(self, key: str) -> tuple[BinaryIO, BlobInfo]:
        """One GET: its body, and its headers as the blob's info (no HEAD first)."""
        name = self._name(key)
        with _translated(key):
            answer = self.client.get_object(Bucket=self.bucket, Key=name)
        return io.BufferedReader(_Body(answer["Body"], key), _CHUNK), _info(key, answer)

    def info(self, key: str) -> BlobInfo:
        name = self._name(key)
        with _translated(key):
            head = self.client.head_object(Bucket=self.bucket, Key=name)
        return _info(key, head)

    def touch(self, key: str) -> None:
        """Nothing to mark on S3 (see the module's docstring); BlobNotFound if it is gone."""
        self.info(key)

    def used_ns(self, key: str) -> int:
        return self.info(key).modified_ns

    def delete(self, key: str) -> bool:
        """Whether there was one: S3's DELETE succeeds either way, so a HEAD comes first."""
        try:
            self.info(key)
        except BlobNotFound:
            return False
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))
        return True

    # --- many blobs ---------------------------------------------------------------------------

    def delete_prefix(self, prefix: str) -> int:
        """List, then DeleteObjects in batches of 1000; how many were deleted."""
        names = [self._base + key for key in self.list(prefix)]
        for start in range(0, len(names), _BATCH):
            self._delete_names(names[start : start + _BATCH])
        return len(names)

    def _delete_names(self, names: list[str]) -> None:
        if not names:
            return
        with _translated(names[0]):
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in names], "Quiet": True},
            )
        if failed := answer.get("Errors"):
            first = failed[0]
            raise OSError(
                errno.EIO, f"{len(failed)} blobs not deleted: {first.get('Code')}", first["Key"]
            )

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every well-formed key under `prefix` (a ListObjectsV2 page of 1000 at a time)."""
        check_prefix(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._base + prefix
        )
        with _translated(prefix):
            for page in pages:
                for entry in page.get("Contents", ()):
                    key = entry["Key"][len(self._base) :]
                    if _well_formed(key):
                        yield key

    def publish(self, prefix: str, *, marker: str) -> S3Publication:
        """Every blob is put as it comes (up to 8 at once), the marker at `commit`."""
        prefix = check_key(prefix.rstrip("/"))
        check_key(f"{prefix}/{marker}")
        return S3Publication(self, prefix, marker)

    def writable(self) -> bool:
        """Whether the bucket answers (a HEAD of it) with these credentials."""
        try:
            with _translated(self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
        except (OSError, BlobNotFound):  # HEAD of a missing bucket is a bare 404
            return False
        return True

    def sweep(self, older_than: float) -> int:
        """Nothing is staged on S3, so nothing is swept here: the index's sweep removes
        a crashed writer's blobs (see the module's docstring)."""
        return 0


class S3Publication:
    """A job's blobs put under `<prefix>/` as they come; its marker put by `commit`."""

    def __init__(self, blobs: S3Blobs, prefix: str, marker: str) -> None:
        self._blobs = blobs
        self._prefix = prefix
        self._marker = marker
        self._marked: bytes | None = None
        self._uploads: list[Future[BlobInfo]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._put: list[str] = []  # every key this publication may have written

    def put(self, name: str, data: bytes) -> None:
        """Upload one blob on a helper thread (the marker waits for `commit`)."""
        key = check_key(f"{self._prefix}/{name}")
        if name == self._marker:
            self._marked = bytes(data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_UPLOADERS, thread_name_prefix="s3-publish")
        self._put.append(key)
        self._uploads.append(self._pool.submit(self._blobs.put, key, bytes(data)))

    def seal(self) -> None:
        """Wait for every upload; raises the first failure."""
        uploads, self._uploads = self._uploads, []
        try:
            for upload in uploads:
                upload.result()
        finally:
            self._close_pool(uploads)

    def commit(self) -> None:
        self.seal()
        if self._marked is not None:
            key = f"{self._prefix}/{self._marker}"
            self._put.append(key)
            self._blobs.put(key, self._marked)

    def abort(self) -> None:
        """Wait for uploads under way, then delete every key put, the marker first."""
        self._close_pool(self._uploads, quietly=True)
        self._uploads = []
        names = [self._blobs._base + key for key in reversed(self._put)]
        self._put = []
        for start in range(0, len(names), _BATCH):
            self._blobs._delete_names(names[start : start + _BATCH])

    def _close_pool(self, uploads: list[Future[BlobInfo]], *, quietly: bool = False) -> None:
        for upload in uploads:
            if quietly and not upload.cancel():
                upload.exception()  # waits; a failed upload wrote nothing
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _Body(io.RawIOBase):
    """An object's streamed body whose read errors are the interface's."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _translated(self._key):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


# --- the client and its errors -----------------------------------------------------------------


def s3_blobs_from_url(url: str, *, client: Any | None = None) -> S3Blobs:
    """An S3Blobs for `s3://<bucket>/<prefix>`; the client from the standard AWS variables
    unless one is given."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://<bucket>/<prefix> URL: {url!r}")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
    return S3Blobs(parts.netloc, prefix, client if client is not None else s3_client())


def s3_client(*, attempts: int = 3, connect_timeout: float = 5, read_timeout: float = 30) -> Any:
    """A boto3 S3 client configured by the standard AWS variables (AWS_ENDPOINT_URL or
    AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or
    AWS_SHARED_CREDENTIALS_FILE), which boto3 reads itself, except AWS_REGION: botocore
    reads only AWS_DEFAULT_REGION (and the config file), so AWS_REGION is passed to it, and
    wins, as in the other AWS SDKs and the CLI. With an endpoint of one's own (MinIO,
    SeaweedFS, Garage...), buckets are addressed by path, not by host name."""
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": attempts},
        s3={"addressing_style": "path"} if custom else None,
    )
    region = os.environ.get("AWS_REGION", "").strip() or None
    return boto3.session.Session(region_name=region).client("s3", config=config)


def credentials_found() -> bool:
    """Whether boto3 finds S3 credentials where it looks (the AWS variables, the shared
    credentials file, a container's or an instance's role); never what they are."""
    return boto3.session.Session().get_credentials() is not None


def _info(key: str, head: dict[str, Any]) -> BlobInfo:
    written = head.get("Metadata", {}).get(_WRITTEN, "")
    if written.isdigit():
        modified = int(written)
    else:
        modified = int(head["LastModified"].timestamp()) * 1_000_000_000
    return BlobInfo(key, int(head["ContentLength"]), modified, head["ETag"].strip('"'))


def _well_formed(key: str) -> bool:
    try:
        check_key(key)
    except ValueError:
        return False
    return True


@contextmanager
def _translated(key: str) -> Iterator[None]:
    """botocore's errors as the interface's: BlobNotFound, BlobStoreUnavailable, OSError."""
    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        raise _translation(exc, key) from exc


def _translation(exc: BaseException, key: str) -> BaseException:
    if isinstance(exc, Boto3Error):  # upload_fileobj's S3UploadFailedError wraps the cause
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BotoCoreError | ClientError):
            return _translation(cause, key)
        return OSError(errno.EIO, f"S3 upload failed: {type(exc).__name__}")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING:
            return BlobNotFound(key)
        if code in _UNAVAILABLE or status >= 500:
            return BlobStoreUnavailable(errno.EAGAIN, f"S3 answered {code or status}")
        number = errno.EACCES if code in _DENIED else errno.EIO
        return OSError(number, f"S3 answered {code}: {error.get('Message', '')}"[:200])
    if isinstance(exc, NoCredentialsError):
        return BlobStoreUnavailable(errno.EACCES, "no S3 credentials were found")
    # connection refused, timeouts, endpoint not found, a body cut short...
    return BlobStoreUnavailable(errno.EAGAIN, f"S3 not reachable: {type(exc).__name__}")

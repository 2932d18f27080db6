"""`open_store`: the image store a service starts with, its blobs and its index chosen here.

    IMAGE_GEN_STORAGE_URL   IMAGE_GEN_DATABASE_URL   blobs                 index
    unset or file://        either                   FileBlobs (the dir)   FileIndex (the dir)
    s3://bucket/prefix      postgresql://            S3Blobs               PostgresImageIndex
    s3://bucket/prefix      unset                    S3Blobs               SQLiteImageIndex

A file store keeps its index beside its files, so replicas share it by sharing the directory;
a bucket's index is in the database, shared by every replica, or without a database in a
SQLite file of the images directory, for one node only. A bucket's store keeps the jobs it
cannot write now in the images directory's spool (storage/spool.py). The bucket need not answer at
start (the service starts, and says 503 STORAGE_UNAVAILABLE until it does); S3 credentials
that cannot be found anywhere stop the start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagegen.errors import ServiceError
from imagegen.storage import location
from imagegen.storage.images import ImageStore
from imagegen.storage.index import ImageIndex
from imagegen.storage.layout import Layout
from imagegen.storage.spool import Spool

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from imagegen.books.migrations import Schema
    from imagegen.storage.blobs import Blobs


def open_store(
    layout: Layout,
    *,
    fsync: bool,
    storage_url: str | None = None,
    pool: ConnectionPool | None = None,
    schema: Schema | None = None,
) -> ImageStore:
    """The store at `storage_url` (None: the images directory of `layout`, prepared), with
    its index in the database of `pool` when there is one (usable once `schema`, the
    books', is ready)."""
    if storage_url is None:
        return ImageStore.on_disk(layout, fsync=fsync)
    bucket = location.parse(storage_url)
    assert isinstance(bucket, location.Bucket)  # Settings keeps no other storage URL
    blobs = _bucket_blobs(bucket)
    index: ImageIndex
    if pool is not None:
        from imagegen.storage.tableindex import PostgresImageIndex

        index = PostgresImageIndex(pool, schema=schema)
    else:
        from imagegen.storage.tableindex import SQLiteImageIndex

        sqlite = SQLiteImageIndex(layout.index_db, layout.index_locks)
        sqlite.prepare()
        index = sqlite
    # A job the upstream made while the bucket or the index is away waits in the spool.
    return ImageStore(blobs, index, spool=Spool(layout.spool_dir, fsync=fsync))


def _bucket_blobs(bucket: location.Bucket) -> Blobs:
    """S3Blobs with a client from the AWS variables; ServiceError if no credentials are found."""
    from imagegen.storage.s3blobs import S3Blobs, credentials_found, s3_client

    if not credentials_found():
        raise ServiceError(
            f"IMAGE_GEN_STORAGE_URL names the bucket {bucket.name!r}, but no S3 credentials "
            "were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or mount a "
            "credentials file and name it in AWS_SHARED_CREDENTIALS_FILE"
        )
    return S3Blobs(bucket.name, bucket.prefix, s3_client())

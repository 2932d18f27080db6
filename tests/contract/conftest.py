"""The implementations the contract tests run against, one fixture parameter each.

A blob store or image index adds a factory to its table; the tests in this folder then run
against it unchanged ("s3" is S3Blobs on a real SeaweedFS server, tests/support/seaweed.py,
one per session, each test under a prefix of its own; skipped only without the `weed` binary;
"s3+postgresql" indexes it in the test's own database, "s3+sqlite" in a local SQLite file).
For the books, every call of a fixture's factory opens another handle on the same books, as
another process or replica would (its own connections, its own locks); a second implementation
(PostgreSQL, say) adds its entry to each table, with a fresh, empty set of books per test:

    CAPS["postgresql"] = lambda where, clock: PostgresCapsBook(dsn_for(where), clock=clock)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import CapsBook, IdempotencyBook, JobBook
from imagegen.books.sqlite import SQLiteCapsBook, SQLiteIdempotencyBook
from imagegen.storage.blobs import Blobs
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.images import ImageStore
from imagegen.storage.index import FileIndex
from imagegen.storage.layout import Layout
from imagegen.storage.s3blobs import S3Blobs
from tests.support.books import BookClock
from tests.support.postgres import pool_for
from tests.support.seaweed import SeaweedFS

BUCKET = "contract"


def _file_blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    (tmp_path / "blobs").mkdir()
    return FileBlobs(tmp_path / "blobs", fsync=False)


def _s3_blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    """The test's own prefix (the same for every handle a test opens)."""
    client = request.getfixturevalue("seaweed_client")
    return S3Blobs(BUCKET, f"tests/{uuid.uuid5(uuid.NAMESPACE_URL, str(tmp_path)).hex}", client)


def _file_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    layout = Layout(tmp_path / "images")
    layout.prepare()  # idempotent: another handle on the same directory
    return ImageStore(FileBlobs(layout.root, fsync=False), FileIndex(layout, fsync=False))


def _s3_postgres_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    from imagegen.books.migrations import migrate
    from imagegen.storage.tableindex import PostgresImageIndex

    pool = pool_for(tmp_path)
    migrate(pool)
    return ImageStore(_s3_blobs(request, tmp_path), PostgresImageIndex(pool))


def _s3_sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    from imagegen.storage.tableindex import SQLiteImageIndex

    index = SQLiteImageIndex(tmp_path / "index" / "images.sqlite3", tmp_path / "index" / "locks")
    index.prepare()
    return ImageStore(_s3_blobs(request, tmp_path), index)


BLOB_STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Blobs]] = {
    "file": _file_blobs,
    "s3": _s3_blobs,
}
IMAGE_STORES: dict[str, Callable[[pytest.FixtureRequest, Path], ImageStore]] = {
    "file": _file_store,
    "s3+postgresql": _s3_postgres_store,
    "s3+sqlite": _s3_sqlite_store,
}


@pytest.fixture(params=sorted(BLOB_STORES))
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    """An empty blob store of each implementation."""
    yield BLOB_STORES[request.param](request, tmp_path)


@pytest.fixture(params=sorted(IMAGE_STORES))
def image_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageStore]:
    """An empty image store over each blob store and index pair."""
    yield IMAGE_STORES[request.param](request, tmp_path)


@pytest.fixture
def image_stores(
    request: pytest.FixtureRequest, image_store: ImageStore
) -> Callable[[], ImageStore]:
    """Opens another handle on the same store, as another process or replica would (its own
    connections and clients; the same directory, bucket prefix and database)."""
    kind = request.node.callspec.params["image_store"]
    tmp_path = request.getfixturevalue("tmp_path")
    return lambda: IMAGE_STORES[kind](request, tmp_path)


@pytest.fixture(scope="session")
def seaweed(seaweed_server: SeaweedFS) -> SeaweedFS:
    """The session's SeaweedFS server, with the bucket BUCKET."""
    seaweed_server.create_bucket(BUCKET)
    return seaweed_server


@pytest.fixture(scope="session")
def seaweed_client(seaweed: SeaweedFS) -> Any:
    """One boto3 client for the session (making one takes a few hundred ms)."""
    return seaweed.client()


def _sqlite_caps(where: Path, clock: BookClock) -> CapsBook:
    book = SQLiteCapsBook(where / "ledger.sqlite3", clock=clock)
    book.prepare()
    return book


def _sqlite_keys(where: Path, clock: BookClock) -> IdempotencyBook:
    book = SQLiteIdempotencyBook(where / "ledger.sqlite3", clock=clock)
    book.prepare()
    return book


def _postgres_caps(where: Path, clock: BookClock) -> CapsBook:
    from imagegen.books.migrations import migrate
    from imagegen.books.postgres import PostgresCapsBook

    pool = pool_for(where)
    migrate(pool)
    return PostgresCapsBook(pool, clock=clock)


def _postgres_keys(where: Path, clock: BookClock) -> IdempotencyBook:
    from imagegen.books.migrations import migrate
    from imagegen.books.postgres import PostgresIdempotencyBook

    pool = pool_for(where)
    migrate(pool)
    return PostgresIdempotencyBook(pool, clock=clock)


def _file_jobs(where: Path, max_running: int) -> JobBook:
    return FileJobBook(where / "images", fsync=False, max_running=max_running)


def _postgres_jobs(where: Path, max_running: int) -> JobBook:
    from imagegen.books.migrations import migrate
    from imagegen.books.postgres_jobs import PostgresJobBook

    pool = pool_for(where)
    migrate(pool)
    return PostgresJobBook(pool, max_running=max_running)


# implementation name -> (the test's directory, the clock) -> a new handle on its books
CAPS: dict[str, Callable[[Path, BookClock], CapsBook]] = {
    "sqlite": _sqlite_caps,
    "postgresql": _postgres_caps,
}
KEYS: dict[str, Callable[[Path, BookClock], IdempotencyBook]] = {
    "sqlite": _sqlite_keys,
    "postgresql": _postgres_keys,
}
# implementation name -> (the test's directory, max_running) -> a new handle on its books
JOBS: dict[str, Callable[[Path, int], JobBook]] = {
    "files": _file_jobs,
    "postgresql": _postgres_jobs,
}


@pytest.fixture
def clock() -> BookClock:
    """The books' clock, standing still until the test moves it."""
    return BookClock()


@pytest.fixture(params=sorted(CAPS))
def caps_books(request, tmp_path: Path, clock: BookClock) -> Callable[[], CapsBook]:
    """Opens a handle on one empty caps book (each call another handle on the same one)."""

    def open_handle() -> CapsBook:
        book = CAPS[request.param](tmp_path, clock)
        assert isinstance(book, CapsBook)
        return book

    return open_handle


@pytest.fixture(params=sorted(KEYS))
def key_books(request, tmp_path: Path, clock: BookClock) -> Callable[[], IdempotencyBook]:
    """Opens a handle on one empty idempotency book."""

    def open_handle() -> IdempotencyBook:
        book = KEYS[request.param](tmp_path, clock)
        assert isinstance(book, IdempotencyBook)
        return book

    return open_handle


@pytest.fixture(params=sorted(JOBS))
def job_books(request, tmp_path: Path) -> Callable[..., JobBook]:
    """Opens a handle on one empty job book; `max_running` slots (2 unless told)."""

    def open_handle(max_running: int = 2) -> JobBook:
        book = JOBS[request.param](tmp_path, max_running)
        assert isinstance(book, JobBook)
        return book

    return open_handle

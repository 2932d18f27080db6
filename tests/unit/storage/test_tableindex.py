"""What the database image indexes promise beyond the image store's contract: a job's lock in
PostgreSQL is one transaction for everything done under it, it never needs a second
connection of the pool, and listing reads the index a page of jobs at a time."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from imagegen.books.migrations import migrate
from imagegen.errors import DatabaseUnavailable
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.images import ImageStore
from imagegen.storage.tableindex import PAGE, PostgresImageIndex, SQLiteImageIndex
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support.fake_openai import make_png
from tests.support.postgres import dsn_for


def _generation(count: int) -> Generation:
    return Generation(
        [GeneratedImage(make_png(4, 4, (n, 1, 2)), "png", 4, 4) for n in range(count)]
    )


@pytest.fixture
def small_pool(tmp_path: Path):
    pool = ConnectionPool(dsn_for(tmp_path), min_size=1, max_size=2, timeout=5.0, open=True)
    migrate(pool)
    yield pool
    pool.close(timeout=5.0)


def _store(tmp_path: Path, pool: ConnectionPool) -> ImageStore:
    (tmp_path / "blobs").mkdir(exist_ok=True)
    return ImageStore(FileBlobs(tmp_path / "blobs", fsync=False), PostgresImageIndex(pool))


def test_more_deletes_at_once_than_the_pool_has_connections_all_finish(tmp_path, small_pool):
    store = _store(tmp_path, small_pool)
    jobs = [store.save_job({"prompt": f"p{n}"}, _generation(2)) for n in range(6)]
    targets = [saved["images"][0]["id"] for saved in jobs]
    started = time.monotonic()

    with ThreadPoolExecutor(6) as pool:
        deleted = list(pool.map(lambda image_id: store.delete_image(image_id).image_id, targets))

    assert deleted == targets
    assert time.monotonic() - started < 5  # the pool's timeout: nobody waited on it
    listed, _ = store.list_images(limit=20)
    assert sorted(image["id"] for _, image in listed) == sorted(
        saved["images"][1]["id"] for saved in jobs
    )


def test_what_is_done_under_a_lock_that_fails_is_undone(tmp_path, small_pool):
    index = PostgresImageIndex(small_pool)
    store = _store(tmp_path, small_pool)
    saved = store.save_job({"prompt": "fox"}, _generation(1))
    image_id = saved["images"][0]["id"]

    with pytest.raises(RuntimeError), index.locked(saved["job_id"]):
        index.remove(image_id)
        index.update(saved["job_id"], {"job_id": saved["job_id"], "images": []})
        assert not index.contains(image_id)  # seen inside the lock's transaction
        raise RuntimeError("the blob store failed")

    assert index.contains(image_id)
    assert store.job_metadata(saved["job_id"]) == saved


def test_a_lock_on_a_job_that_is_not_there_is_file_not_found(tmp_path, small_pool):
    index = PostgresImageIndex(small_pool)
    saved = _store(tmp_path, small_pool).save_job({"prompt": "fox"}, _generation(1))

    for _ in range(3):  # more than the pool's connections: each went back to it
        with pytest.raises(FileNotFoundError), index.locked("0" * 36):
            pass
    with index.locked(saved["job_id"]):
        assert index.stamp(saved["job_id"]) is not None


def test_listing_reads_a_page_of_jobs_per_query(tmp_path, small_pool, monkeypatch):
    store = _store(tmp_path, small_pool)
    for n in range(PAGE + 1):
        store.save_job({"prompt": f"p{n}"}, _generation(1))
    index = store.index
    assert isinstance(index, PostgresImageIndex)
    calls = []
    real = index.metadata
    monkeypatch.setattr(index, "metadata", lambda job_id: calls.append(job_id) or real(job_id))

    first, cursor = store.list_images(limit=10)
    rest, end = store.list_images(limit=100, after=cursor)

    assert len(first) + len(rest) == PAGE + 1 and end is None
    assert calls == []  # the metadata came with the order


def test_an_unreachable_database_is_database_unavailable():
    unreachable = ConnectionPool(
        "postgresql://postgres@127.0.0.1:9/none", min_size=0, max_size=1, timeout=1.0, open=True
    )
    index = PostgresImageIndex(unreachable)
    try:
        for call in (index.find, index.contains, index.stamp, index.metadata):
            with pytest.raises(DatabaseUnavailable):
                call("0" * 36)
        with pytest.raises(DatabaseUnavailable):
            next(index.job_order())
    finally:
        unreachable.close()


def test_the_sqlite_index_is_shared_by_handles_on_one_host(tmp_path):
    def handle() -> SQLiteImageIndex:
        index = SQLiteImageIndex(tmp_path / "index.sqlite3", tmp_path / "locks")
        index.prepare()
        return index

    first, second = handle(), handle()
    first.add("a" * 8 + "-0000-4000-8000-" + "0" * 12, [("i1", "j/001-i1.png")], {"images": []})

    assert second.find("i1") == ("a" * 8 + "-0000-4000-8000-" + "0" * 12, "j/001-i1.png")
    second.remove("i1")
    assert not first.contains("i1")
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == []


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_job_noted_as_kept_is_seen_by_another_handle_until_it_is_stored_or_forgotten(
    tmp_path, small_pool, kind
):
    def handle() -> PostgresImageIndex | SQLiteImageIndex:
        if kind == "postgres":
            return PostgresImageIndex(small_pool)
        index = SQLiteImageIndex(tmp_path / "index" / "images.sqlite3", tmp_path / "locks")
        index.prepare()
        return index

    one, other = handle(), handle()
    stored, damaged = str(uuid.uuid4()), str(uuid.uuid4())
    for job_id in (stored, damaged):
        one.note_kept(job_id, {"job_id": job_id, "images": []})
    one.note_kept(stored, {"job_id": stored, "images": [], "again": True})  # noted twice

    assert other.kept(stored) == {"job_id": stored, "images": [], "again": True}
    assert other.kept(damaged) == {"job_id": damaged, "images": []}
    assert other.kept(str(uuid.uuid4())) is None

    one.add(stored, [], {"job_id": stored, "images": []}).wait()  # stored: no longer kept
    one.forget_kept(damaged)
    one.forget_kept(damaged)  # twice is nothing more
    assert other.kept(stored) is None and other.kept(damaged) is None
    assert other.metadata(stored) == {"job_id": stored, "images": []}

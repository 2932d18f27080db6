"""What the database image indexes promise beyond the image store's contract: a job's lock in
PostgreSQL is one transaction for everything done under it, it never needs a second
connection of the pool, and listing reads the index a page of jobs at a time."""

from __future__ import annotations

import json
import sqlite3
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
from imagegen.storage.spool import KEPT_FOR, KeptJob, Superseded
from imagegen.storage.tableindex import (
    ABANDONED_KEPT_FOR,
    PAGE,
    PostgresImageIndex,
    SQLiteImageIndex,
)
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
    one, other = _index_handles(kind, tmp_path, small_pool)
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


def _index_handles(kind: str, tmp_path: Path, pool: ConnectionPool):
    def handle() -> PostgresImageIndex | SQLiteImageIndex:
        if kind == "postgres":
            return PostgresImageIndex(pool)
        index = SQLiteImageIndex(tmp_path / "index" / "images.sqlite3", tmp_path / "locks")
        index.prepare()
        return index

    return handle(), handle()


def _age_notes(kind: str, tmp_path: Path, pool: ConnectionPool, job_id: str, by: float) -> None:
    """The job's notes as if written (renewed or abandoned) `by` seconds earlier."""
    if kind == "postgres":
        with pool.connection() as db:
            db.execute(
                "UPDATE kept_jobs SET kept_at = kept_at - make_interval(secs => %s) "
                "WHERE job_id = %s",
                (by, job_id),
            )
        return
    with sqlite3.connect(tmp_path / "index" / "images.sqlite3") as db:
        db.execute("UPDATE kept_jobs SET kept_at = kept_at - ? WHERE job_id = ?", (by, job_id))


def _copy(job_id: str) -> dict[str, object]:
    """The metadata of one copy of a job: images with ids of their own."""
    return {"job_id": job_id, "images": [{"id": str(uuid.uuid4()), "file": "001-x.png"}]}


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_note_not_renewed_may_be_abandoned_and_its_keeper_then_never_stores_that_copy(
    tmp_path, small_pool, kind
):
    keeper, other = _index_handles(kind, tmp_path, small_pool)
    renewed, lost, unnoted = (str(uuid.uuid4()) for _ in range(3))
    copies = {job_id: _copy(job_id) for job_id in (renewed, lost)}
    for job_id, copy in copies.items():
        assert keeper.note_kept(job_id, copy) is True

    # A fresh note is its keeper's: nobody may abandon it, with or without waiting.
    assert other.abandon_kept(lost, stale=False) is False
    assert other.abandon_kept(lost, stale=True) is False
    # Renewed after it aged: fresh again.
    _age_notes(kind, tmp_path, small_pool, renewed, KEPT_FOR + 1)
    assert keeper.note_kept(renewed, copies[renewed]) is True
    assert other.kept(renewed) == copies[renewed]
    assert other.abandon_kept(renewed, stale=True) is False

    # Not renewed for KEPT_FOR: no longer said kept; abandoned only by one who waited that
    # long itself (`stale`): a keeper cut off with the database renews it once back.
    _age_notes(kind, tmp_path, small_pool, lost, KEPT_FOR + 1)
    assert other.kept(lost) is None
    assert other.abandon_kept(lost, stale=False) is False
    assert other.abandon_kept(lost, stale=True) is True
    assert other.abandon_kept(lost, stale=False) is True  # and stays so
    assert keeper.note_kept(lost, copies[lost]) is False  # its keeper back: refused
    assert other.kept(lost) is None

    # The job made again (new ids) may be kept too, while the first copy stays refused.
    again = _copy(lost)
    assert other.note_kept(lost, again) is True
    assert keeper.kept(lost) == again
    assert keeper.abandon_kept(lost, stale=True) is False
    assert keeper.note_kept(lost, copies[lost]) is False
    # Stored: the abandoned note stays, so a keeper back later still learns of it ...
    other.add(lost, [], again).wait()
    assert keeper.kept(lost) is None
    assert keeper.note_kept(lost, copies[lost]) is False
    # ... until ABANDONED_KEPT_FOR has passed since it was abandoned: then swept.
    (tmp_path / "blobs").mkdir()
    blobs = FileBlobs(tmp_path / "blobs", fsync=False)
    other.sweep(3600, blobs)
    assert keeper.note_kept(lost, copies[lost]) is False
    _age_notes(kind, tmp_path, small_pool, lost, ABANDONED_KEPT_FOR + 1)
    other.sweep(3600, blobs)
    assert keeper.note_kept(lost, copies[lost]) is True

    # No note at all: nothing to wait for.
    assert other.abandon_kept(unnoted, stale=False) is True


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_copy_is_not_indexed_over_a_stored_one_nor_once_its_note_is_abandoned(
    tmp_path, small_pool, kind
):
    keeper, other = _index_handles(kind, tmp_path, small_pool)
    stored, lost = str(uuid.uuid4()), str(uuid.uuid4())
    first, second = _copy(stored), _copy(stored)
    image = first["images"][0]["id"]
    other.add(stored, [(image, f"{stored}/001-x.png")], first).wait()

    with pytest.raises(Superseded):  # another copy of a stored job: its rows stay
        keeper.add(stored, [(second["images"][0]["id"], f"{stored}/001-y.png")], second)
    assert other.metadata(stored) == first
    assert other.find(image) is not None
    assert other.find(second["images"][0]["id"]) is None

    copy = _copy(lost)
    assert keeper.note_kept(lost, copy) is True
    _age_notes(kind, tmp_path, small_pool, lost, KEPT_FOR + 1)
    assert other.abandon_kept(lost, stale=True) is True
    with pytest.raises(Superseded):  # abandoned between its keeper's renewal and its rows
        keeper.add(lost, [(copy["images"][0]["id"], f"{lost}/001-x.png")], copy)
    assert other.metadata(lost) is None


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_notes_not_renewed_for_a_month_are_swept_and_a_failing_sweep_stops_nothing(
    tmp_path, small_pool, kind, caplog
):
    keeper, other = _index_handles(kind, tmp_path, small_pool)
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    for job_id in (old, recent):
        assert keeper.note_kept(job_id, _copy(job_id)) is True
    _age_notes(kind, tmp_path, small_pool, old, ABANDONED_KEPT_FOR + 1)
    (tmp_path / "blobs").mkdir()
    blobs = FileBlobs(tmp_path / "blobs", fsync=False)
    other.sweep(3600, blobs)
    assert other.abandon_kept(old, stale=False) is True  # no note left: nothing to wait for
    assert other.abandon_kept(recent, stale=False) is False

    def refused(*_: object) -> None:
        raise RuntimeError("the database refused the write")

    other._write = refused  # type: ignore[method-assign]
    other.sweep(3600, blobs)  # logged, not raised: a worker sweeps as it boots
    assert "sweep of old kept notes stopped: RuntimeError" in caplog.text


def test_a_sqlite_index_from_before_notes_of_copies_gains_them_and_keeps_its_notes(tmp_path):
    path = tmp_path / "index" / "images.sqlite3"
    path.parent.mkdir()
    job_id = str(uuid.uuid4())
    copy = _copy(job_id)
    with sqlite3.connect(path) as db:  # kept_jobs as the previous version made it
        db.execute("CREATE TABLE kept_jobs (job_id TEXT PRIMARY KEY, metadata TEXT NOT NULL)")
        db.execute("INSERT INTO kept_jobs VALUES (?, ?)", (job_id, json.dumps(copy)))
    index = SQLiteImageIndex(path, tmp_path / "locks")
    index.prepare()
    index.prepare()  # every worker prepares: twice is nothing more

    assert index.kept(job_id) == copy  # counted as renewed when upgraded
    assert index.abandon_kept(job_id, stale=True) is False
    assert index.note_kept(job_id, copy) is True  # the same copy's note, renewed
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM kept_jobs").fetchone() == (1,)


def test_a_kept_copy_of_a_job_stored_with_other_images_is_superseded_and_changes_nothing(
    tmp_path, small_pool
):
    store = _store(tmp_path, small_pool)
    made_again = store.save_job({"prompt": "p"}, _generation(1))
    job_id = made_again["job_id"]
    on_disk = (tmp_path / "blobs" / job_id / "metadata.json").read_bytes()
    data = make_png(4, 4, (9, 9, 9))
    image_id = str(uuid.uuid4())
    file = f"001-{image_id}.png"
    copy = {**made_again, "images": [{**made_again["images"][0], "id": image_id, "file": file}]}

    with pytest.raises(Superseded):
        store.store_kept(KeptJob(job_id, copy, [(file, data)]))

    assert (tmp_path / "blobs" / job_id / "metadata.json").read_bytes() == on_disk
    assert not (tmp_path / "blobs" / job_id / file).exists()
    assert store.job_metadata(job_id)["images"] == made_again["images"]

"""The contract of the image store over a blob store and an image index (storage/index.py):
exact-id lookups, listing order, deletion. Every pair of implementations passes these."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagegen.errors import ImageNotFound
from imagegen.storage.images import ImageStore
from imagegen.storage.layout import METADATA, image_name
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support.fake_openai import make_png


def job(store: ImageStore, prompt: str, count: int = 2) -> dict:
    images = [GeneratedImage(make_png(8, 8, (n, 0, 0)), "png", 8, 8) for n in range(count)]
    return store.save_job({"prompt": prompt, "size": "8x8"}, Generation(images))


def test_a_saved_image_is_found_by_its_exact_id_with_its_bytes(image_store: ImageStore) -> None:
    saved = job(image_store, "fox")

    for entry in saved["images"]:
        found = image_store.find_image(entry["id"].upper())
        assert (found.image_id, found.job_id, found.format) == (entry["id"], saved["job_id"], "png")
        assert found.size == entry["bytes"]
        assert len(image_store.read_image(found)) == entry["bytes"]
        with image_store.open_image(found) as stream:
            assert stream.read() == image_store.read_image(found)
    assert image_store.job_metadata(saved["job_id"]) == saved


@pytest.mark.parametrize("image_id", ["0" * 36, "not-a-uuid", "../../etc/passwd"])
def test_unknown_ids_are_not_found(image_store: ImageStore, image_id: str) -> None:
    job(image_store, "fox")

    with pytest.raises(ImageNotFound):
        image_store.find_image(image_id)
    assert image_store.job_metadata(image_id) is None


def test_listing_is_newest_job_first_and_pages_without_repeats(image_store: ImageStore) -> None:
    jobs = [job(image_store, f"job {n}") for n in range(5)]

    first, cursor = image_store.list_images(limit=3)
    rest, end = image_store.list_images(limit=20, after=cursor)

    listed = [image["id"] for _, image in first + rest]
    expected = [image["id"] for saved in reversed(jobs) for image in saved["images"]]
    assert listed == expected
    assert end is None


def test_a_deleted_image_is_gone_and_marked_and_its_job_stays(image_store: ImageStore) -> None:
    saved = job(image_store, "fox")
    gone, kept = saved["images"]

    image_store.delete_image(gone["id"])

    with pytest.raises(ImageNotFound):
        image_store.find_image(gone["id"])
    with pytest.raises(ImageNotFound):
        image_store.delete_image(gone["id"])
    assert image_store.find_image(kept["id"]).job_id == saved["job_id"]
    statuses = [i["status"] for i in image_store.job_metadata(saved["job_id"])["images"]]
    assert statuses == ["deleted", "available"]
    listed, _ = image_store.list_images(limit=10)
    assert [image["id"] for _, image in listed] == [kept["id"]]


def test_a_deleted_job_takes_its_images_and_thumbnails(image_store: ImageStore) -> None:
    saved, other = job(image_store, "fox"), job(image_store, "owl", count=1)
    image = image_store.find_image(saved["images"][0]["id"])
    assert image_store.save_thumbnail(image, "w4", "png", make_png(4, 4, (1, 2, 3)))
    assert image_store.open_thumbnail(image, "w4", "png") is not None

    assert image_store.delete_job(saved["job_id"])["job_id"] == saved["job_id"]

    assert image_store.delete_job(saved["job_id"]) is None
    for entry in saved["images"]:
        with pytest.raises(ImageNotFound):
            image_store.find_image(entry["id"])
    assert image_store.job_metadata(saved["job_id"]) is None
    assert image_store.open_thumbnail(image, "w4", "png") is None
    listed, _ = image_store.list_images(limit=10)
    assert [m["job_id"] for m, _ in listed] == [other["job_id"]]


def test_listing_pages_through_more_jobs_than_one_read_of_the_index(image_store: ImageStore):
    from imagegen.storage.tableindex import PAGE

    jobs = [job(image_store, f"job {n}", count=1) for n in range(PAGE + 6)]
    expected = [saved["images"][0]["id"] for saved in reversed(jobs)]

    listed: list[str] = []
    cursor = None
    for _ in range(len(jobs)):  # bounded: a page of 9 at least each time
        page, cursor = image_store.list_images(limit=9, after=cursor)
        listed += [image["id"] for _, image in page]
        if cursor is None:
            break
    assert listed == expected
    whole, end = image_store.list_images(limit=len(jobs))  # more than one read of the index
    assert [image["id"] for _, image in whole] == expected and end is None


def test_listing_one_job_by_its_id(image_store: ImageStore) -> None:
    first, second = job(image_store, "fox"), job(image_store, "owl")

    listed, cursor = image_store.list_images(limit=10, job_id=first["job_id"].upper())

    assert [image["id"] for _, image in listed] == [i["id"] for i in first["images"]]
    assert cursor is None
    assert image_store.list_images(limit=10, job_id="0" * 36)[0] == []
    assert second["job_id"] != first["job_id"]


def test_another_handle_serves_what_one_saved_and_sees_its_deletes(
    image_store: ImageStore, image_stores: Callable[[], ImageStore]
) -> None:
    other = image_stores()
    saved = job(image_store, "fox")
    gone, kept = (entry["id"] for entry in saved["images"])

    assert other.read_image(other.find_image(kept)) == image_store.read_image(
        image_store.find_image(kept)
    )
    other.delete_image(gone)

    with pytest.raises(ImageNotFound):
        image_store.find_image(gone)
    assert [i["status"] for i in image_store.job_metadata(saved["job_id"])["images"]] == [
        "deleted",
        "available",
    ]
    assert image_store.list_images(limit=10) == other.list_images(limit=10)
    assert other.delete_job(saved["job_id"])["job_id"] == saved["job_id"]
    assert image_store.job_metadata(saved["job_id"]) is None
    assert image_store.list_images(limit=10) == ([], None)


def test_concurrent_deletes_through_several_handles_succeed_exactly_once(
    image_store: ImageStore, image_stores: Callable[[], ImageStore]
) -> None:
    saved = job(image_store, "fox", count=3)
    handles = [image_store, image_stores(), image_stores()]
    targets = [entry["id"] for entry in saved["images"]] * 2

    def delete(n: int) -> str:
        try:
            handles[n % 3].delete_image(targets[n])
        except ImageNotFound:
            return "gone"
        return "deleted"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(delete, range(len(targets))))

    assert sorted(outcomes) == ["deleted"] * 3 + ["gone"] * 3
    statuses = [i["status"] for i in image_store.job_metadata(saved["job_id"])["images"]]
    assert statuses == ["deleted"] * 3
    assert image_store.list_images(limit=10) == ([], None)


def test_a_job_deleted_while_its_image_is_deleted_is_not_found(
    image_store: ImageStore, image_stores: Callable[[], ImageStore]
) -> None:
    saved = job(image_store, "fox", count=1)
    image_store.delete_job(saved["job_id"])

    with pytest.raises(ImageNotFound):
        image_stores().delete_image(saved["images"][0]["id"])
    assert image_store.delete_job(saved["job_id"]) is None


def test_a_crashed_writers_blobs_are_swept_once_old_and_stored_jobs_stay(
    image_store: ImageStore,
) -> None:
    # What a writer killed mid-publication leaves: its blobs put (staged, on disk), no
    # index entry, and no abort (the process died before it could run one).
    orphan = str(uuid.uuid4())
    publication = image_store.blobs.publish(orphan, marker=METADATA)
    publication.put(image_name(1, str(uuid.uuid4()), "png"), make_png(8, 8, (1, 2, 3)))
    publication.put(METADATA, b"{}\n")
    publication.seal()
    kept = job(image_store, "kept")
    left = sorted(image_store.blobs.list(f"{orphan}/"))

    assert image_store.sweep(older_than=3600) == 0
    assert sorted(image_store.blobs.list(f"{orphan}/")) == left

    assert image_store.sweep(older_than=0) >= 1
    assert list(image_store.blobs.list(f"{orphan}/")) == []
    for entry in kept["images"]:
        found = image_store.find_image(entry["id"])
        assert len(image_store.read_image(found)) == entry["bytes"]
    assert image_store.job_metadata(kept["job_id"]) == kept
    assert image_store.sweep(older_than=0) == 0


def test_the_sweep_leaves_stored_jobs_alone_when_its_index_does_not_know_them(
    image_store: ImageStore, tmp_path
) -> None:
    # A bucket outlives its index: the SQLite file of an images directory that was lost or
    # replaced, a database that was reset or a DSN pointed at a new one. Every job then has
    # no row; its blobs were stored (its metadata.json is there), so none may be swept.
    from imagegen.storage.fileblobs import FileBlobs
    from imagegen.storage.tableindex import SQLiteImageIndex

    if isinstance(image_store.blobs, FileBlobs):
        pytest.skip("a file store's index lives beside its files (storage/index.py)")
    saved = job(image_store, "kept", count=2)
    fresh = SQLiteImageIndex(tmp_path / "lost" / "images.sqlite3", tmp_path / "lost" / "locks")
    fresh.prepare()
    forgetful = ImageStore(image_store.blobs, fresh)
    before = sorted(image_store.blobs.list(f"{saved['job_id']}/"))

    assert forgetful.sweep(older_than=0) == 0

    assert sorted(image_store.blobs.list(f"{saved['job_id']}/")) == before
    for entry in saved["images"]:
        found = image_store.find_image(entry["id"])
        assert len(image_store.read_image(found)) == entry["bytes"]


def test_the_sweep_removes_only_what_the_store_writes_under_a_job_id(
    image_store: ImageStore,
) -> None:
    # A bucket shared without a prefix may hold another program's objects under names
    # that start with a UUID: the sweep is for this store's leftovers only.
    from imagegen.storage.fileblobs import FileBlobs

    if isinstance(image_store.blobs, FileBlobs):
        pytest.skip("a file store's sweep removes its own staging folders only")
    folder = str(uuid.uuid4())
    foreign = [f"{folder}/report.pdf", f"{folder}/uploads/photo.jpg", f"{folder}/001-x.png"]
    for key in foreign:
        image_store.blobs.put(key, b"not ours")
    crashed = str(uuid.uuid4())
    leftover = f"{crashed}/{image_name(1, str(uuid.uuid4()), 'png')}"
    image_store.blobs.put(leftover, make_png(8, 8, (1, 2, 3)))

    assert image_store.sweep(older_than=0) == 1

    assert sorted(image_store.blobs.list(f"{folder}/")) == sorted(foreign)
    assert list(image_store.blobs.list(f"{crashed}/")) == []

"""The contract of the image store over a blob store and an image index (storage/index.py):
exact-id lookups, listing order, deletion. Every pair of implementations passes these."""

from __future__ import annotations

import pytest

from imagegen.errors import ImageNotFound
from imagegen.storage.images import ImageStore
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

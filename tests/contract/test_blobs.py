"""The contract of a blob store (storage/blobs.py): every implementation passes these unchanged."""

from __future__ import annotations

import io
import threading
import time

import pytest

from imagegen.storage.blobs import BadKey, BlobNotFound, Blobs

JOB = "0b7e1e9a-5a4c-4c7e-9a59-2f0d3c1b6a11"
BAD_KEYS = [
    "",
    "/abs",
    "../up",
    "a/../b",
    "a//b",
    "a/./b",
    "a/",
    "a\\b",
    "a b",
    ".index/x",
    "a/.tmp-x",
    "x" * 600,
]


def test_bytes_put_come_back_by_get_and_open(blobs: Blobs) -> None:
    info = blobs.put(f"{JOB}/001-a.png", b"\x89PNG data")

    assert blobs.get(f"{JOB}/001-a.png") == b"\x89PNG data"
    with blobs.open(f"{JOB}/001-a.png") as stream:
        assert stream.read() == b"\x89PNG data"
    assert info.key == f"{JOB}/001-a.png"
    assert info.size == 9
    assert blobs.info(f"{JOB}/001-a.png") == info


def test_open_with_info_gives_the_bytes_and_the_info_of_one_blob(blobs: Blobs) -> None:
    info = blobs.put(f"{JOB}/001-a.png", b"\x89PNG data")

    stream, opened = blobs.open_with_info(f"{JOB}/001-a.png")
    with stream:
        assert stream.read() == b"\x89PNG data"
    assert opened == info == blobs.info(f"{JOB}/001-a.png")
    with pytest.raises(BlobNotFound):
        blobs.open_with_info(f"{JOB}/002-missing.png")


def test_a_stream_put_comes_back_whole_and_streams_in_pieces(blobs: Blobs) -> None:
    data = bytes(range(256)) * (3 * 4096 + 7)  # over 3 MiB, not a round number of chunks

    blobs.put("big/blob.bin", io.BytesIO(data))

    assert blobs.info("big/blob.bin").size == len(data)
    pieces = []
    with blobs.open("big/blob.bin") as stream:
        for _ in range(100):  # bounded: 100 reads of 64 KiB cover it
            piece = stream.read(65536)
            if not piece:
                break
            pieces.append(piece)
    assert len(pieces) > 1
    assert b"".join(pieces) == data


def test_put_replaces_a_blob_and_its_etag_changes(blobs: Blobs) -> None:
    first = blobs.put("k/v", b"one")
    time.sleep(0.01)
    second = blobs.put("k/v", b"other")

    assert blobs.get("k/v") == b"other"
    assert second.size == 5
    assert second.etag != first.etag
    assert second.modified_ns >= first.modified_ns


def test_a_missing_key_is_blob_not_found_everywhere(blobs: Blobs) -> None:
    blobs.put("here/a", b"a")

    for read in (blobs.get, blobs.open, blobs.info, blobs.touch, blobs.used_ns):
        with pytest.raises(BlobNotFound):
            read("here/b")
        with pytest.raises(BlobNotFound):
            read("here")  # a prefix is not a blob
    assert blobs.delete("here/b") is False
    assert blobs.delete_prefix("nothing/") == 0


def test_list_gives_the_keys_under_a_prefix(blobs: Blobs) -> None:
    for key in ("a/1", "a/2", "a/sub/3", "ab/4", "b/5"):
        blobs.put(key, key.encode())

    assert sorted(blobs.list("a/")) == ["a/1", "a/2", "a/sub/3"]
    assert sorted(blobs.list("a")) == ["a/1", "a/2", "a/sub/3", "ab/4"]
    assert sorted(blobs.list("a/s")) == ["a/sub/3"]
    assert sorted(blobs.list("")) == ["a/1", "a/2", "a/sub/3", "ab/4", "b/5"]
    assert list(blobs.list("c/")) == []


def test_delete_removes_one_blob_and_delete_prefix_a_whole_job(blobs: Blobs) -> None:
    for key in ("j1/a", "j1/b", "j1/thumbs/c", "j2/a"):
        blobs.put(key, b"x")

    assert blobs.delete("j1/a") is True
    assert blobs.delete("j1/a") is False
    assert blobs.delete_prefix("j1/") == 2

    assert sorted(blobs.list("")) == ["j2/a"]
    assert blobs.get("j2/a") == b"x"


def test_touch_marks_a_blob_used_without_changing_it(blobs: Blobs) -> None:
    info = blobs.put("t/a", b"abc")
    before = blobs.used_ns("t/a")

    blobs.touch("t/a")

    assert blobs.used_ns("t/a") >= before
    assert blobs.get("t/a") == b"abc"
    assert blobs.info("t/a").etag == info.etag


def test_a_published_job_appears_only_on_commit(blobs: Blobs) -> None:
    publication = blobs.publish(JOB, marker="metadata.json")
    publication.put("metadata.json", b"{}")  # the marker, put first: still shown last
    publication.put("001-a.png", b"image one")
    publication.put("002-b.png", b"image two")
    publication.seal()

    with pytest.raises(BlobNotFound):
        blobs.info(f"{JOB}/metadata.json")  # a reader goes by the last blob: no job yet

    publication.commit()

    assert sorted(blobs.list(f"{JOB}/")) == [
        f"{JOB}/001-a.png",
        f"{JOB}/002-b.png",
        f"{JOB}/metadata.json",
    ]
    assert blobs.get(f"{JOB}/002-b.png") == b"image two"


def test_an_aborted_publication_leaves_nothing_before_or_after_commit(blobs: Blobs) -> None:
    staged = blobs.publish(JOB, marker="metadata.json")
    staged.put("001-a.png", b"one")
    staged.abort()
    committed = blobs.publish("other", marker="metadata.json")
    committed.put("metadata.json", b"{}")
    committed.commit()
    committed.abort()  # the caller was told nothing was saved: take it back

    assert list(blobs.list("")) == []
    with pytest.raises(BlobNotFound):
        blobs.get("other/metadata.json")


def test_a_reader_never_sees_half_a_job(blobs: Blobs) -> None:
    jobs = [f"job-{n:02d}" for n in range(20)]
    seen: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        deadline = time.monotonic() + 30
        try:
            while not done.is_set() and time.monotonic() < deadline:
                for job in jobs:
                    try:
                        blobs.info(f"{job}/metadata.json")
                    except BlobNotFound:
                        continue
                    images = [blobs.get(f"{job}/{n:03d}.png") for n in range(1, 4)]
                    seen.append((job, len(images)))
        except BaseException as exc:  # a blob missing once metadata.json is there
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for job in jobs:
        publication = blobs.publish(job, marker="metadata.json")
        publication.put("001.png", bytes(2048) + job.encode())
        publication.put("metadata.json", b"{}")  # the marker, in the middle
        for n in range(2, 4):
            publication.put(f"{n:03d}.png", bytes(2048) + job.encode())
        publication.commit()
    done.set()
    reader.join(timeout=30)

    assert not errors
    assert all(count == 3 for _, count in seen)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_leave_the_store_are_refused(blobs: Blobs, key: str) -> None:
    with pytest.raises(BadKey):
        blobs.put(key, b"x")
    for call in (blobs.get, blobs.open, blobs.info, blobs.delete):
        with pytest.raises(BadKey):
            call(key)
    if key not in ("", "a/"):
        with pytest.raises(BadKey):
            list(blobs.list(key))
        with pytest.raises(BadKey):
            blobs.delete_prefix(key)
    assert list(blobs.list("")) == []


def test_a_publication_refuses_bad_names(blobs: Blobs) -> None:
    publication = blobs.publish(JOB, marker="metadata.json")
    for name in ("../escape", "/abs", "a//b", ".tmp-x"):
        with pytest.raises(BadKey):
            publication.put(name, b"x")
    publication.abort()
    with pytest.raises(BadKey):
        blobs.publish("../up", marker="metadata.json")


def test_sweep_keeps_what_is_published(blobs: Blobs) -> None:
    blobs.put("kept/a", b"a")
    publication = blobs.publish("job", marker="metadata.json")
    publication.put("metadata.json", b"{}")
    publication.commit()

    blobs.sweep(older_than=0)

    assert sorted(blobs.list("")) == ["job/metadata.json", "kept/a"]

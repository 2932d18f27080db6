"""The spool of kept jobs on a real directory: whole entries only, checked before they are
stored, damaged ones set aside, a crash's staging folder ignored, one flusher at a time."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from imagegen.storage.spool import SUPERSEDED, Flusher, KeptJob, Spool, Superseded


def a_job(name: str = "001-{}.png") -> tuple[str, bytes, list[tuple[str, bytes]]]:
    job_id, image_id = str(uuid.uuid4()), str(uuid.uuid4())
    data = os.urandom(64)
    file = name.format(image_id)
    metadata = {
        "job_id": job_id,
        "images": [{"id": image_id, "file": file, "sha256": hashlib.sha256(data).hexdigest()}],
    }
    return job_id, json.dumps(metadata).encode(), [(file, data)]


class Kept(list[KeptJob]):
    """A store that takes every kept job (what the flusher hands it)."""

    def __call__(self, kept: KeptJob) -> None:
        self.append(kept)


def test_a_kept_job_reads_back_byte_identical_and_is_flushed_once(tmp_path: Path):
    spool = Spool(tmp_path / ".spool", fsync=True)
    job_id, metadata, files = a_job()
    spool.keep(job_id, metadata, files)
    stored = Kept()

    assert spool.entries() == [job_id]
    assert spool.load(job_id).files == files
    assert Flusher(spool, stored, unreachable=(ConnectionError,)).flush() is False
    assert Flusher(spool, stored, unreachable=(ConnectionError,)).flush() is False

    assert [kept.job_id for kept in stored] == [job_id]
    assert stored[0].files == files and spool.entries() == []


def test_damaged_entries_are_set_aside_and_a_crashed_write_is_ignored(tmp_path: Path):
    spool = Spool(tmp_path / ".spool", fsync=False)
    good, metadata, files = a_job()
    spool.keep(good, metadata, files)
    wrong_bytes, metadata, files = a_job()
    spool.keep(wrong_bytes, metadata, [(files[0][0], b"not the bytes that were hashed")])
    truncated = str(uuid.uuid4())
    (spool.directory / truncated).mkdir()
    (spool.directory / truncated / "metadata.json").write_bytes(b'{"job_id": "')
    (spool.directory / ".tmp-crashed").mkdir()
    (spool.directory / ".tmp-crashed" / "001-half.png").write_bytes(b"\x89PNG")
    stored = Kept()

    assert Flusher(spool, stored, unreachable=(ConnectionError,)).flush() is False

    assert [kept.job_id for kept in stored] == [good]
    assert sorted(p.name for p in (spool.directory / ".damaged").iterdir()) == sorted(
        [wrong_bytes, truncated]
    )
    assert spool.damaged(wrong_bytes) and spool.damaged(truncated)  # their jobs fail
    assert not spool.damaged(good) and not spool.damaged("../.damaged")
    assert (spool.directory / ".tmp-crashed").exists()  # young: maybe a live writer's
    assert spool.sweep(older_than=-1) == 1 and not (spool.directory / ".tmp-crashed").exists()


def test_a_store_out_of_reach_leaves_the_job_for_the_next_try(tmp_path: Path):
    spool = Spool(tmp_path / ".spool", fsync=False)
    job_id, metadata, files = a_job()
    spool.keep(job_id, metadata, files)

    def away(kept: KeptJob) -> None:
        raise ConnectionError("S3 not reachable")

    assert Flusher(spool, away, unreachable=(ConnectionError,)).flush() is True
    assert spool.entries() == [job_id]


def test_while_another_process_flushes_this_one_leaves_it_alone(tmp_path: Path):
    spool = Spool(tmp_path / ".spool", fsync=False)
    job_id, metadata, files = a_job()
    spool.keep(job_id, metadata, files)
    stored = Kept()
    # flock is held per open file: the lock taken here is another worker's to this flusher.
    with Spool(spool.directory).flushing() as mine:
        assert mine
        assert Flusher(spool, stored, unreachable=(ConnectionError,)).flush() is True
    assert stored == [] and spool.entries() == [job_id]


def test_an_entry_whose_metadata_is_malformed_is_set_aside_and_the_next_ones_are_stored(
    tmp_path: Path,
):
    # The oldest entry is flushed first: one the store cannot take as it is must not keep
    # every later job (made and paid for) from being stored, try after try.
    spool = Spool(tmp_path / ".spool", fsync=False)
    bad = []
    for images in (5, [{"file": "001-" + str(uuid.uuid4()) + ".png"}], [{"id": 7}]):
        job_id, metadata, files = a_job()
        broken = json.loads(metadata)
        if isinstance(images, list) and images[0].get("file"):
            images[0]["sha256"] = hashlib.sha256(files[0][1]).hexdigest()
            files = [(images[0]["file"], files[0][1])]
        broken["images"] = images
        spool.keep(job_id, json.dumps(broken).encode(), files)
        os.utime(spool.directory / job_id, (1_000 + len(bad), 1_000 + len(bad)))
        bad.append(job_id)
    good, metadata, files = a_job()
    spool.keep(good, metadata, files)
    stored = Kept()

    assert Flusher(spool, stored, unreachable=(ConnectionError,)).flush() is False

    assert [kept.job_id for kept in stored] == [good]
    assert spool.entries() == []
    assert sorted(p.name for p in (spool.directory / ".damaged").iterdir()) == sorted(bad)


def test_a_job_the_store_refuses_for_another_reason_leaves_the_next_ones_stored(tmp_path: Path):
    spool = Spool(tmp_path / ".spool", fsync=False)
    refused, metadata, files = a_job()
    spool.keep(refused, metadata, files)
    os.utime(spool.directory / refused, (1_000, 1_000))
    good, metadata, files = a_job()
    spool.keep(good, metadata, files)
    stored = Kept()

    def store(kept: KeptJob) -> None:
        if kept.job_id == refused:
            raise PermissionError("AccessDenied")
        stored(kept)

    assert Flusher(spool, store, unreachable=(ConnectionError,)).flush() is True

    assert [kept.job_id for kept in stored] == [good]
    assert spool.entries() == [refused]  # kept, tried again later


def test_every_flush_renews_each_entrys_note_and_an_abandoned_one_is_never_stored(
    tmp_path: Path,
):
    spool = Spool(tmp_path / ".spool", fsync=False)
    jobs = [a_job() for _ in range(3)]
    for job_id, metadata, files in jobs:
        spool.keep(job_id, metadata, files)
    mine, abandoned, stored_elsewhere = (job_id for job_id, _, _ in jobs)
    renewed: list[str] = []

    def renew(job_id: str, metadata: dict) -> bool:
        assert metadata["job_id"] == job_id
        renewed.append(job_id)
        return job_id != abandoned

    def away(kept: KeptJob) -> None:
        raise ConnectionError("S3 not reachable")

    # The store away: every note is renewed all the same (the keeper is alive).
    assert Flusher(spool, away, unreachable=(ConnectionError,), renew=renew).flush() is True
    assert sorted(renewed) == sorted([mine, abandoned, stored_elsewhere])
    assert (spool.directory / SUPERSEDED / abandoned).is_dir()

    def store(kept: KeptJob) -> None:
        if kept.job_id == stored_elsewhere:  # the store holds it with other images
            raise Superseded("stored with other images")
        stored.append(kept)

    stored = Kept()
    assert Flusher(spool, store, unreachable=(ConnectionError,), renew=renew).flush() is False
    assert [kept.job_id for kept in stored] == [mine]
    assert sorted(p.name for p in (spool.directory / SUPERSEDED).iterdir()) == sorted(
        [abandoned, stored_elsewhere]
    )
    assert spool.entries() == [] and not spool.damaged(abandoned)

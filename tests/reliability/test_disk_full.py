"""Disk full: the images directory on a small tmpfs. A full disk (bytes or inodes) gives a 507
JSON error with code INSUFFICIENT_STORAGE and leaves nothing behind; the service recovers
when space returns; a DELETE on a full disk either works or changes nothing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fake_openai as fake
from tests.support.reliability import assert_client_error, snapshot, store_problems
from tests.support.service import mounted_tmpfs

DISK_BYTES = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path, request) -> Iterator[Path]:
    """A fresh tmpfs of 2 MiB (options from the test's `disk_options` param, if any)."""
    with mounted_tmpfs(tmp_path / "disk", getattr(request, "param", f"size={DISK_BYTES}")) as disk:
        yield disk


@pytest.fixture
def disk_app(small_disk, settings, make_app):
    """The app with its images directory on the small disk; filler lives beside it."""
    images = small_disk / "images"
    app = make_app(settings, images_dir=images)
    return app, images, small_disk / "filler"


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(filler: Path, leave: int = 0) -> None:
    """Write filler until only about `leave` bytes are free (0: until ENOSPC)."""
    filler.mkdir(exist_ok=True)
    target = max(0, free_bytes(filler) - leave)
    number = len(list(filler.iterdir()))
    for name, step, limit in ((f"f{number}", 65536, target), (f"t{number}", 1, None)):
        if limit is None and leave:
            break
        fd = os.open(filler / name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            written = 0
            while limit is None or written < limit:
                size = step if limit is None else min(step, limit - written)
                written += os.write(fd, b"\0" * size)
            if leave == 0:
                while True:  # the rest, to the last byte
                    os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)


def fill_inodes(filler: Path) -> int:
    """Create empty files until the filesystem has no inode left; return how many."""
    filler.mkdir(exist_ok=True)
    made = 0
    with contextlib.suppress(OSError):
        while made < 100_000:
            (filler / f"i{made}").touch()
            made += 1
    return made


def free(filler: Path) -> None:
    shutil.rmtree(filler, ignore_errors=True)


def _job(client, **body) -> dict:
    response = client.post("/generate", json={"prompt": "a full disk", **body})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.mark.parametrize("provider", ["openai", "placeholder"])
def test_a_full_disk_gives_507_leaves_nothing_and_recovers_when_space_returns(
    disk_app, fake_openai, provider, settings, make_app
):
    _, images, filler = disk_app
    client = make_app(settings, images_dir=images, provider=provider).test_client()
    fake_openai.set_image_size(200_000)
    kept = _job(client, count=2)
    fill(filler)
    before = snapshot(images)

    for count in (1, 3):
        response = client.post("/generate", json={"prompt": "no room", "count": count})

        assert_client_error(response, 507, "INSUFFICIENT_STORAGE")
        assert snapshot(images) == before, "a failed job left files behind"
        assert store_problems(images) == []
    assert client.get(kept["images"][0]["url"]).status_code == 200, "reads fail on a full disk"

    free(filler)
    again = _job(client, count=3)

    assert len(again["images"]) == 3
    assert store_problems(images) == []
    for image in again["images"]:
        assert client.get(image["url"]).status_code == 200


def test_every_amount_of_free_space_gives_a_whole_job_or_a_clean_507(disk_app, fake_openai):
    """Walk the free space across the size of one job, so the disk fills up at each step
    of a save: an image, the next image, metadata.json, the index."""
    app, images, filler = disk_app
    client = app.test_client()
    image = fake.make_png(8, 8, (1, 2, 3), pad_to=48 * 1024)
    fake_openai.image_bytes = image
    outcomes = []

    for leave_kib in (0, 4, 24, 48, 52, 64, 96, 100, 144, 148, 152, 156, 160, 176, 256, 512):
        fill(filler, leave=leave_kib * 1024)
        before = snapshot(images)
        response = client.post("/generate", json={"prompt": f"{leave_kib} KiB", "count": 3})
        outcomes.append(response.status_code)
        problems = store_problems(images)
        if response.status_code == 200:
            job = response.get_json()
            files = images / job["job_id"]
            assert len([p for p in files.iterdir() if p.suffix == ".png"]) == 3
            for entry in json.loads((files / "metadata.json").read_bytes())["images"]:
                assert entry["sha256"] == hashlib.sha256(image).hexdigest()
        else:
            assert_client_error(response, 507, "INSUFFICIENT_STORAGE")
            assert snapshot(images) == before, f"{leave_kib} KiB free: debris left"
        assert problems == [], (leave_kib, problems)
        free(filler)
        for job_dir in [p for p in images.iterdir() if not p.name.startswith(".")]:
            shutil.rmtree(job_dir)  # start each step from an empty store
        for link in (images / ".index").iterdir():
            link.unlink()

    print("disk-full outcomes", outcomes)
    assert 507 in outcomes and 200 in outcomes, outcomes


def test_delete_on_a_full_disk_either_works_or_changes_nothing(disk_app, fake_openai):
    app, images, filler = disk_app
    client = app.test_client()
    fake_openai.set_image_size(100_000)
    job = _job(client, count=2)
    target, other = job["images"]
    original = client.get(target["url"]).data
    fill(filler)
    before = snapshot(images)

    response = client.delete(target["url"])

    if response.status_code == 507:
        assert_client_error(response, 507, "INSUFFICIENT_STORAGE")
        assert snapshot(images) == before, "a refused DELETE changed the store"
        got = client.get(target["url"])
        assert got.status_code == 200 and got.data == original, "the image became unreachable"
        free(filler)
        response = client.delete(target["url"])
    assert response.status_code == 200, response.get_json()
    assert client.get(target["url"]).status_code == 404
    assert client.get(other["url"]).status_code == 200
    metadata = json.loads((images / job["job_id"] / "metadata.json").read_bytes())
    assert [i["status"] for i in metadata["images"]] == ["deleted", "available"]
    assert store_problems(images) == []


@pytest.mark.parametrize("small_disk", [f"size={DISK_BYTES},nr_inodes=64"], indirect=True)
def test_running_out_of_inodes_is_also_a_clean_507(disk_app, fake_openai):
    app, images, filler = disk_app
    client = app.test_client()
    fill_inodes(filler)
    before = snapshot(images)

    response = client.post("/generate", json={"prompt": "no inode", "count": 2})

    assert_client_error(response, 507, "INSUFFICIENT_STORAGE")
    assert snapshot(images) == before
    assert store_problems(images) == []
    free(filler)
    assert _job(client, count=2)["images"]
    assert store_problems(images) == []

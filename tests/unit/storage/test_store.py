"""Unit tests of the image store, image-format sniffing and placeholder PNGs."""

from __future__ import annotations

import builtins
import datetime as dt
import errno
import hashlib
import json
import multiprocessing
import os
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen.errors import ImageNotFound, InsufficientStorage, ServiceError
from imagegen.imaging.formats import ImageInfo, identify
from imagegen.imaging.placeholder import placeholder_png
from imagegen.storage import durable
from imagegen.storage.images import ImageStore
from imagegen.storage.layout import Layout
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support.fake_openai import make_png
from tests.support.pagecache import cached_pages, gives_pages_back
from tests.support.pictures import rgba_png
from tests.support.scans import change_after_listing

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
REQUEST = {"prompt": "a red fox", "model": "gpt-image-2", "count": 2, "size": "1024x1024"}


def png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    return make_png(width, height, rgb)


def generation(count: int = 2, fmt: str = "png") -> Generation:
    images = [
        GeneratedImage(
            png(8, 8, (n * 40 % 256, n % 256, 200)), fmt, 8, 8, revised_prompt=f"fox {n}"
        )
        for n in range(count)
    ]
    return Generation(images, usage={"total_tokens": 10})


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under root: file bytes, symlink targets, or 'dir'."""
    entries: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = ("file", path.read_bytes())
    return entries


def temp_entries(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".tmp-")]


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    Layout(tmp_path / "images").prepare()
    image_store = ImageStore.on_disk(tmp_path / "images", fsync=False)
    return image_store


def test_prepare_refused_names_the_env_line_of_the_directory_owner(
    tmp_path: Path,
    another_users: Callable[[Path], os.stat_result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    owner = another_users(root)
    make_directory = os.mkdir

    def refused_in_root(path: Any, *args: Any) -> None:
        if Path(path).parent == root:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        make_directory(path, *args)

    monkeypatch.setattr(os, "mkdir", refused_in_root)

    with pytest.raises(ServiceError) as refused:
        Layout(root).prepare()

    message = str(refused.value)
    assert message.startswith(f"The images directory {root} is not writable by this service.")
    assert f"owned by uid {owner.st_uid}, gid {owner.st_gid}" in message
    assert f"add the line IMAGE_GEN_USER={owner.st_uid}:{owner.st_gid} to the .env file" in message


def refusing_access(monkeypatch: pytest.MonkeyPatch, *refused: Path) -> None:
    """os.access says no for `refused`, as the kernel does for a directory of another uid."""
    access = os.access

    def checked(path: Any, mode: int, **kwargs: Any) -> bool:
        return Path(path) not in refused and access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", checked)


def test_prepare_refuses_its_own_directories_left_by_another_uid_naming_them(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = store.blobs.root / ".jobs" / ".active"
    active.mkdir(parents=True)
    (store.blobs.root / ".ledger").mkdir()
    refusing_access(monkeypatch, active)

    with pytest.raises(ServiceError) as refused:
        Layout(store.blobs.root).prepare()

    message = str(refused.value)
    assert message.startswith(
        f"The images directory {store.blobs.root} holds .jobs/.active, "
        "which this service cannot write."
    )
    assert "It is owned by uid" in message


def test_prepare_starts_past_job_and_staging_directories_it_cannot_write(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = store.blobs.root / "9b2f7c1e-0000-4000-8000-000000000000"
    staging = store.blobs.root / ".tmp-crashed"
    job.mkdir()
    staging.mkdir()
    refusing_access(monkeypatch, job, staging)

    Layout(store.blobs.root).prepare()


# --- save_job -------------------------------------------------------------------------------


def test_save_job_writes_the_documented_layout(store: ImageStore) -> None:
    gen = generation(3)
    metadata = store.save_job(dict(REQUEST), gen)

    job_id = metadata["job_id"]
    assert UUID_RE.match(job_id)
    job_dir = store.blobs.root / job_id
    files = sorted(p.name for p in job_dir.iterdir() if not p.name.startswith("."))
    assert len(files) == 4
    assert files[-1] == "metadata.json"
    for number, (name, entry, image) in enumerate(
        zip(files[:3], metadata["images"], gen.images, strict=True), start=1
    ):
        assert UUID_RE.match(entry["id"])
        assert name == f"{number:03d}-{entry['id']}.png"
        assert entry["file"] == name
        assert (job_dir / name).read_bytes() == image.data
    assert len({entry["id"] for entry in metadata["images"]}) == 3


def test_metadata_json_records_job_request_and_each_image(store: ImageStore) -> None:
    gen = generation(2)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    returned = store.save_job(dict(REQUEST), gen)
    after = dt.datetime.now(dt.UTC)

    on_disk = json.loads((store.blobs.root / returned["job_id"] / "metadata.json").read_text())
    assert on_disk == returned
    assert on_disk["request"] == REQUEST
    assert on_disk["status"] == "completed"
    created = on_disk["created_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created)
    assert before <= dt.datetime.fromisoformat(created.replace("Z", "+00:00")) <= after
    for entry, image in zip(on_disk["images"], gen.images, strict=True):
        assert entry["format"] == "png"
        assert entry["content_type"] == "image/png"
        assert entry["size"] == "1024x1024"
        assert entry["bytes"] == len(image.data)
        assert entry["sha256"] == hashlib.sha256(image.data).hexdigest()
        assert entry["status"] == "available"
        assert entry["revised_prompt"] == image.revised_prompt


def test_image_size_falls_back_to_real_pixels_when_size_was_auto(store: ImageStore) -> None:
    metadata = store.save_job({**REQUEST, "size": "auto"}, generation(1))

    assert metadata["images"][0]["size"] == "8x8"


@pytest.mark.parametrize(("fmt", "ext"), [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
def test_file_extension_follows_the_image_format(store: ImageStore, fmt: str, ext: str) -> None:
    metadata = store.save_job(dict(REQUEST), generation(1, fmt))
    entry = metadata["images"][0]

    assert entry["file"].endswith(f".{ext}")
    found = store.find_image(entry["id"])
    assert found.format == fmt
    assert found.content_type == f"image/{fmt}"


def test_save_job_leaves_no_temporary_entries(store: ImageStore) -> None:
    for _ in range(3):
        store.save_job(dict(REQUEST), generation(2))

    assert temp_entries(store.blobs.root) == []


def test_extra_metadata_is_recorded(store: ImageStore) -> None:
    metadata = store.save_job(dict(REQUEST), generation(1), extra={"warning": "deprecated"})

    assert store.job_metadata(metadata["job_id"])["warning"] == "deprecated"


@pytest.mark.parametrize("fsync", [True, False])
def test_a_big_image_leaves_the_page_cache_once_synced_small_files_stay(
    tmp_path: Path, fsync: bool
) -> None:
    """A 1 MiB image is written once and seldom read again: once it is on the disk its pages
    go back to the kernel instead of filling memory. metadata.json and a small image stay
    cached; with fsync off nothing is synced, so nothing is given back."""
    if not gives_pages_back(tmp_path):
        pytest.skip("this filesystem keeps a synced file's pages (tmpfs), or no mincore")
    Layout(tmp_path / "images").prepare()
    store = ImageStore.on_disk(tmp_path / "images", fsync=fsync)
    big, small = rgba_png(64, 64, pad_to=1 << 20), png()
    images = [GeneratedImage(big, "png", 64, 64), GeneratedImage(small, "png", 8, 8)]
    metadata = store.save_job(dict(REQUEST), Generation(images, usage={"total_tokens": 10}))

    job_dir = tmp_path / "images" / metadata["job_id"]
    big_path, small_path = (job_dir / entry["file"] for entry in metadata["images"])
    cached, pages = cached_pages(big_path)
    assert pages == 256
    assert cached == (0 if fsync else pages)
    assert cached_pages(small_path) == (1, 1)
    cached, pages = cached_pages(job_dir / "metadata.json")
    assert cached == pages > 0
    assert big_path.read_bytes() == big  # read back whole, from the disk


def test_a_filesystem_refusing_the_page_cache_advice_still_stores_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Giving pages back is advice: a filesystem that refuses it (EINVAL) stores the job."""

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    Layout(tmp_path / "images").prepare()
    store = ImageStore.on_disk(tmp_path / "images", fsync=True)
    big = rgba_png(64, 64, pad_to=1 << 20)
    gen = Generation([GeneratedImage(big, "png", 64, 64)], usage={"total_tokens": 10})
    metadata = store.save_job(dict(REQUEST), gen)

    stored = store.find_image(metadata["images"][0]["id"])
    with store.open_image(stored) as stream:
        assert stream.read() == big
    assert temp_entries(tmp_path / "images") == []


# --- failures while saving ------------------------------------------------------------------


class Injected:
    """Where to make the filesystem fail with a given errno during save_job."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
        self.monkeypatch = monkeypatch
        self.code = code

    def fail(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))

    def on_open(self, matches: Callable[[str], bool]) -> None:
        real_open = builtins.open

        def failing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if matches(os.path.basename(os.fspath(file))):
                raise self.fail()
            return real_open(file, *args, **kwargs)

        self.monkeypatch.setattr(durable, "open", failing_open, raising=False)

    def on_nth_symlink(self, n: int) -> None:
        real_symlink = os.symlink
        calls = []

        def failing_symlink(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            calls.append(dst)
            if len(calls) == n:
                raise self.fail()
            real_symlink(src, dst, *args, **kwargs)

        self.monkeypatch.setattr(os, "symlink", failing_symlink)

    def on_rename(self) -> None:
        def failing_rename(*args: Any, **kwargs: Any) -> None:
            raise self.fail()

        self.monkeypatch.setattr(os, "rename", failing_rename)

    def on_fsync_after_rename(self) -> None:
        real_rename, real_fsync = os.rename, os.fsync
        renamed = []

        def recording_rename(*args: Any, **kwargs: Any) -> None:
            real_rename(*args, **kwargs)
            renamed.append(True)

        def failing_fsync(fd: int) -> None:
            if renamed:
                raise self.fail()
            real_fsync(fd)

        self.monkeypatch.setattr(os, "rename", recording_rename)
        self.monkeypatch.setattr(os, "fsync", failing_fsync)

    def on_fsync_of(self, matches: Callable[[str], bool]) -> None:
        """fsync fails for a file whose name matches (it runs on the store's fsync threads)."""
        real_fsync = os.fsync

        def failing_fsync(fd: int) -> None:
            if matches(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
                raise self.fail()
            real_fsync(fd)

        self.monkeypatch.setattr(os, "fsync", failing_fsync)


_FAILURE_POINTS: dict[str, Callable[[Injected], None]] = {
    "second-image": lambda inject: inject.on_open(lambda name: name.startswith("002-")),
    "metadata": lambda inject: inject.on_open(lambda name: name == "metadata.json"),
    "second-image-fsync": lambda inject: inject.on_fsync_of(lambda name: name.startswith("002-")),
    "metadata-fsync": lambda inject: inject.on_fsync_of(lambda name: name == "metadata.json"),
    "second-index-link": lambda inject: inject.on_nth_symlink(2),
    "index-fsync": lambda inject: inject.on_fsync_of(lambda name: name == ".index"),
    "rename-into-place": lambda inject: inject.on_rename(),
    "directory-fsync-after-rename": lambda inject: inject.on_fsync_after_rename(),
}


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[tuple[ImageStore, dict[str, Any]]]:
    """A store with fsync on and one job already saved."""
    Layout(tmp_path / "images").prepare()
    image_store = ImageStore.on_disk(tmp_path / "images", fsync=True)
    yield image_store, image_store.save_job(dict(REQUEST), generation(2))


@pytest.mark.parametrize(
    "point",
    [
        "second-image",
        "metadata",
        "second-image-fsync",
        "metadata-fsync",
        "second-index-link",
        "index-fsync",
        "rename-into-place",
        "directory-fsync-after-rename",
    ],
)
def test_disk_full_while_saving_raises_insufficient_storage_and_changes_nothing(
    populated: tuple[ImageStore, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    image_store, existing = populated
    before = snapshot(image_store.blobs.root)
    _FAILURE_POINTS[point](Injected(monkeypatch, errno.ENOSPC))

    with pytest.raises(InsufficientStorage) as raised:
        image_store.save_job(dict(REQUEST), generation(3))

    monkeypatch.undo()
    assert raised.value.status == 507
    assert snapshot(image_store.blobs.root) == before
    assert image_store.find_image(existing["images"][0]["id"]).job_id == existing["job_id"]


def test_quota_exceeded_while_saving_is_also_insufficient_storage(
    populated: tuple[ImageStore, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    image_store, _ = populated
    before = snapshot(image_store.blobs.root)
    Injected(monkeypatch, errno.EDQUOT).on_open(lambda name: name.startswith("002-"))

    with pytest.raises(InsufficientStorage):
        image_store.save_job(dict(REQUEST), generation(2))

    monkeypatch.undo()
    assert snapshot(image_store.blobs.root) == before


@pytest.mark.parametrize("step", ["open", "fsync"])
def test_other_write_errors_propagate_and_still_change_nothing(
    populated: tuple[ImageStore, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    image_store, _ = populated
    before = snapshot(image_store.blobs.root)
    inject = Injected(monkeypatch, errno.EIO)
    (inject.on_open if step == "open" else inject.on_fsync_of)(lambda name: name.startswith("001-"))

    with pytest.raises(OSError) as raised:
        image_store.save_job(dict(REQUEST), generation(2))

    monkeypatch.undo()
    assert raised.value.errno == errno.EIO
    assert not isinstance(raised.value, InsufficientStorage)
    assert snapshot(image_store.blobs.root) == before


# --- find_image -----------------------------------------------------------------------------


@pytest.fixture
def saved(store: ImageStore) -> dict[str, Any]:
    return store.save_job(dict(REQUEST), generation(3))


def test_find_image_returns_the_stored_file_by_exact_id(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    for entry in saved["images"]:
        found = store.find_image(entry["id"])
        assert found.image_id == entry["id"]
        assert found.job_id == saved["job_id"]
        assert found.format == "png"
        assert found.content_type == "image/png"
        assert hashlib.sha256(store.read_image(found)).hexdigest() == entry["sha256"]


def test_find_image_accepts_an_uppercase_id(store: ImageStore, saved: dict[str, Any]) -> None:
    image_id = saved["images"][1]["id"]

    found = store.find_image(image_id.upper())

    assert found.image_id == image_id
    assert found.name == saved["images"][1]["file"]


def _not_ids(saved: dict[str, Any]) -> list[str]:
    image_id, job_id = saved["images"][0]["id"], saved["job_id"]
    return [
        image_id[:8],
        image_id[:-1],
        image_id + "0",
        image_id.replace("-", ""),
        "{" + image_id + "}",
        f" {image_id}",
        f"{image_id} ",
        f"{image_id}\n",
        f"{image_id}\x00",
        f"{image_id}/",
        f"../{image_id}",
        f".index/{image_id}",
        f"{job_id}/{saved['images'][0]['file']}",
        job_id,
        str(uuid.uuid4()),
        "..",
        ".",
        "/",
        "",
        "\x00",
        ".index",
        "metadata.json",
        "/etc/passwd",
        "a" * 10_000,
        image_id * 300,
    ]


def test_find_image_refuses_anything_but_an_exact_image_id(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    for candidate in _not_ids(saved):
        with pytest.raises(ImageNotFound) as raised:
            store.find_image(candidate)
        assert raised.value.status == 404, repr(candidate)
        assert len(raised.value.message) < 200, repr(candidate)


def test_find_image_ignores_an_index_link_pointing_outside_the_store(store: ImageStore) -> None:
    image_id = str(uuid.uuid4())
    secret = store.blobs.root.parent / "secret.png"
    secret.write_bytes(png())
    os.symlink("../../secret.png", store.blobs.root / ".index" / image_id)

    with pytest.raises(ImageNotFound):
        store.find_image(image_id)


def test_find_image_reports_a_file_removed_behind_its_back_as_not_found(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    entry = saved["images"][0]
    (store.blobs.root / saved["job_id"] / entry["file"]).unlink()

    with pytest.raises(ImageNotFound):
        store.find_image(entry["id"])


def test_job_metadata_is_found_by_job_id_only(store: ImageStore, saved: dict[str, Any]) -> None:
    assert store.job_metadata(saved["job_id"]) == saved
    assert store.job_metadata(saved["job_id"].upper()) == saved
    assert store.job_metadata(saved["images"][0]["id"]) is None
    assert store.job_metadata(str(uuid.uuid4())) is None
    assert store.job_metadata("..") is None
    assert store.job_metadata(".index") is None


def test_lookups_stay_correct_with_thousands_of_jobs(store: ImageStore) -> None:
    jobs = [store.save_job({"prompt": f"p{n}"}, generation(1)) for n in range(2000)]

    for index in (0, 1, 999, 1000, 1998, 1999):
        entry = jobs[index]["images"][0]
        found = store.find_image(entry["id"])
        assert found.job_id == jobs[index]["job_id"]
        assert store.job_metadata(found.job_id)["request"] == {"prompt": f"p{index}"}
    with pytest.raises(ImageNotFound):
        store.find_image(str(uuid.uuid4()))
    assert len(list((store.blobs.root / ".index").iterdir())) == 2000


# --- delete_image ---------------------------------------------------------------------------


def test_delete_marks_the_image_deleted_and_removes_file_and_index_link(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    entry = saved["images"][1]
    job_dir = store.blobs.root / saved["job_id"]

    deleted = store.delete_image(entry["id"])

    assert deleted.image_id == entry["id"]
    assert not (job_dir / entry["file"]).exists()
    assert not os.path.lexists(store.blobs.root / ".index" / entry["id"])
    metadata = json.loads((job_dir / "metadata.json").read_text())
    statuses = {image["id"]: image["status"] for image in metadata["images"]}
    assert statuses[entry["id"]] == "deleted"
    [marked] = [image for image in metadata["images"] if image["id"] == entry["id"]]
    assert marked["deleted_at"].endswith("Z")
    assert [s for i, s in statuses.items() if i != entry["id"]] == ["available", "available"]
    assert temp_entries(store.blobs.root) == []


def test_deleted_image_is_not_found_and_cannot_be_deleted_twice(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    image_id = saved["images"][0]["id"]
    store.delete_image(image_id.upper())

    with pytest.raises(ImageNotFound):
        store.find_image(image_id)
    with pytest.raises(ImageNotFound):
        store.delete_image(image_id)


def test_other_images_of_the_job_survive_a_delete(store: ImageStore, saved: dict[str, Any]) -> None:
    store.delete_image(saved["images"][0]["id"])

    for entry in saved["images"][1:]:
        assert (store.blobs.root / store.find_image(entry["id"]).key).is_file()


def test_deleting_unknown_or_malformed_ids_is_not_found(store: ImageStore) -> None:
    for candidate in (str(uuid.uuid4()), "..", "x" * 5000, "\x00"):
        with pytest.raises(ImageNotFound):
            store.delete_image(candidate)


def test_disk_full_during_delete_changes_nothing(
    store: ImageStore, saved: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = saved["images"][0]
    Injected(monkeypatch, errno.ENOSPC).on_open(lambda name: name.startswith(".tmp-"))

    with pytest.raises(InsufficientStorage):
        store.delete_image(entry["id"])

    monkeypatch.undo()
    assert (store.blobs.root / store.find_image(entry["id"]).key).is_file()


def test_concurrent_deletes_of_the_same_image_succeed_exactly_once(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    image_id = saved["images"][0]["id"]
    outcomes: list[str] = []
    barrier = threading.Barrier(4, timeout=10)

    def delete() -> None:
        barrier.wait()
        try:
            store.delete_image(image_id)
            outcomes.append("deleted")
        except ImageNotFound:
            outcomes.append("not found")

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(outcomes) == ["deleted", "not found", "not found", "not found"]


def _delete_in_child(root: str, image_ids: list[str], start: Any) -> None:
    """Run in a separate process: wait for the start signal, then delete these images."""
    start.wait(30)
    image_store = ImageStore.on_disk(Path(root), fsync=False)
    for image_id in image_ids:
        image_store.delete_image(image_id)


def test_concurrent_deletes_from_several_processes_keep_metadata_consistent(
    store: ImageStore,
) -> None:
    processes, per_process = 4, 15
    metadata = store.save_job(dict(REQUEST), generation(processes * per_process))
    ids = [entry["id"] for entry in metadata["images"]]
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    children = [
        context.Process(
            target=_delete_in_child, args=(str(store.blobs.root), ids[n::processes], start)
        )
        for n in range(processes)
    ]
    try:
        for child in children:
            child.start()
        start.set()
        deadline = time.monotonic() + 120
        for child in children:
            child.join(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(timeout=10)

    assert [child.exitcode for child in children] == [0] * processes
    job_dir = store.blobs.root / metadata["job_id"]
    on_disk = json.loads((job_dir / "metadata.json").read_text())
    assert {entry["id"]: entry["status"] for entry in on_disk["images"]} == dict.fromkeys(
        ids, "deleted"
    )
    assert sorted(p.name for p in job_dir.iterdir()) == [".lock", "metadata.json"]
    assert list((store.blobs.root / ".index").iterdir()) == []


# --- sweep ----------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def test_sweep_removes_only_old_staging_dirs_and_old_dangling_links(
    store: ImageStore, saved: dict[str, Any]
) -> None:
    index = store.blobs.root / ".index"
    old_staging = store.blobs.root / f".tmp-{uuid.uuid4()}"
    old_staging.mkdir()
    (old_staging / "001-x.png").write_bytes(png())
    _age(old_staging, 7200)
    fresh_staging = store.blobs.root / f".tmp-{uuid.uuid4()}"
    fresh_staging.mkdir()
    old_dangling = index / str(uuid.uuid4())
    os.symlink(f"../{uuid.uuid4()}/001-{old_dangling.name}.png", old_dangling)
    _age(old_dangling, 7200)
    fresh_dangling = index / str(uuid.uuid4())
    os.symlink(f"../{uuid.uuid4()}/001-{fresh_dangling.name}.png", fresh_dangling)
    live_link = index / saved["images"][0]["id"]
    _age(live_link, 7200)
    _age(store.blobs.root / saved["job_id"], 7200)

    removed = store.sweep(older_than=3600)

    assert removed == 2
    assert not old_staging.exists()
    assert not os.path.lexists(old_dangling)
    assert fresh_staging.is_dir()
    assert os.path.lexists(fresh_dangling)
    assert store.find_image(saved["images"][0]["id"]).job_id == saved["job_id"]
    assert store.job_metadata(saved["job_id"]) == saved


def test_sweep_of_a_clean_store_removes_nothing(store: ImageStore, saved: dict[str, Any]) -> None:
    before = snapshot(store.blobs.root)

    assert store.sweep(older_than=0) == 0
    assert snapshot(store.blobs.root) == before


# Every worker sweeps as it boots, while the others write: what they create, publish and
# remove between this worker's listing and its look at an entry must not fail the boot.


def test_sweep_skips_staging_entries_that_others_remove_or_publish_after_the_listing(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = store.blobs.root / ".tmp-probe-4242"  # another worker's prepare()
    probe.mkdir()
    job_id = str(uuid.uuid4())
    staging = store.blobs.root / f".tmp-{job_id}"  # another worker's save_job(), about to publish
    staging.mkdir()
    stale = store.blobs.root / f".tmp-{uuid.uuid4()}"
    stale.mkdir()
    _age(stale, 7200)

    def others(entries: list[os.DirEntry[str]]) -> None:
        probe.rmdir()
        staging.rename(store.blobs.root / job_id)

    listings = change_after_listing(monkeypatch, store.blobs.root, others)

    assert store.sweep(older_than=3600) == 1
    assert listings == [1]
    assert not stale.exists() and not probe.exists()
    assert (store.blobs.root / job_id).is_dir()


def test_sweep_skips_index_links_that_others_remove_after_the_listing(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = store.blobs.root / ".index"
    links = []
    for _ in range(2):
        link = index / str(uuid.uuid4())
        os.symlink(f"../{uuid.uuid4()}/001-{link.name}.png", link)
        _age(link, 7200)
        links.append(link)
    gone, left = links

    listings = change_after_listing(monkeypatch, index, lambda entries: os.unlink(gone))

    assert store.sweep(older_than=3600) == 1
    assert listings == [1]
    assert not os.path.lexists(left)


def test_listing_skips_a_job_deleted_after_the_scan_and_shows_one_published_after_it(
    store: ImageStore, saved: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = store.save_job(dict(REQUEST), generation(1))
    later: list[dict[str, Any]] = []

    def others(entries: list[os.DirEntry[str]]) -> None:
        if not later:
            store.delete_job(doomed["job_id"])
            later.append(store.save_job(dict(REQUEST), generation(1)))

    change_after_listing(monkeypatch, store.blobs.root, others)

    first, _ = store.list_images(limit=10)
    second, _ = store.list_images(limit=10)

    assert {m["job_id"] for m, _ in first} == {saved["job_id"]}
    assert {m["job_id"] for m, _ in second} == {saved["job_id"], later[0]["job_id"]}


def test_prepare_leaves_the_probe_of_a_process_with_the_same_pid_alone(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    theirs = root / f".tmp-probe-{os.getpid()}"  # a replica's worker in another container
    theirs.mkdir()

    Layout(root).prepare()

    assert sorted(p.name for p in root.iterdir()) == [".index", theirs.name]


# --- imagefmt.identify ----------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def minimal_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def minimal_jpeg(width: int, height: int, sof: int = 0xC0) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dht = b"\xff\xc4" + struct.pack(">H", 6) + b"\x00\x01\x02\x03"
    components = b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    frame = struct.pack(">BHHB", 8, height, width, 3) + components
    sof_segment = bytes((0xFF, sof)) + struct.pack(">H", 2 + len(frame)) + frame
    return b"\xff\xd8" + app0 + dht + sof_segment + b"\xff\xda\x00\x02" + b"\x00" * 4 + b"\xff\xd9"


def _riff(chunk: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_vp8x(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    payload += (height - 1).to_bytes(3, "little")
    return _riff(b"VP8X" + struct.pack("<I", len(payload)) + payload)


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + bits.to_bytes(4, "little")
    return _riff(b"VP8L" + struct.pack("<I", len(payload)) + payload)


def webp_vp8(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return _riff(b"VP8 " + struct.pack("<I", len(payload)) + payload)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal_png(1, 1), ImageInfo("png", 1, 1)),
        (minimal_png(1536, 1024), ImageInfo("png", 1536, 1024)),
        (make_png(13, 7), ImageInfo("png", 13, 7)),
        (minimal_jpeg(1024, 768), ImageInfo("jpeg", 1024, 768)),
        (minimal_jpeg(33, 65535, sof=0xC2), ImageInfo("jpeg", 33, 65535)),
        (minimal_jpeg(640, 480) + b"\x00\x00", ImageInfo("jpeg", 640, 480)),
        (webp_vp8x(2048, 1152), ImageInfo("webp", 2048, 1152)),
        (webp_vp8x(16_777_216, 1), ImageInfo("webp", 16_777_216, 1)),
        (webp_vp8l(1024, 1536), ImageInfo("webp", 1024, 1536)),
        (webp_vp8l(16384, 16384), ImageInfo("webp", 16384, 16384)),
        (webp_vp8(320, 240), ImageInfo("webp", 320, 240)),
    ],
    ids=lambda v: v.size if isinstance(v, ImageInfo) else None,
)
def test_identify_reads_format_and_size_from_headers(data: bytes, expected: ImageInfo) -> None:
    assert identify(data) == expected


def test_identify_reports_size_as_wxh() -> None:
    assert identify(minimal_png(1536, 1024)).size == "1536x1024"


@pytest.mark.parametrize(
    "data",
    [
        minimal_png(8, 8)[:-12],  # no IEND
        make_png(16, 16)[:-1],
        make_png(16, 16)[:40],
        b"\x89PNG\r\n\x1a\n",
        minimal_png(0, 8),
        minimal_jpeg(64, 64)[:-2],  # no end-of-image marker
        b"\xff\xd8\xff\xd9",
        minimal_jpeg(0, 64),
        webp_vp8x(64, 64)[:-1],  # RIFF size larger than the data
        webp_vp8x(64, 64)[:20],
        _riff(b"VP8Z" + b"\x00" * 14),
        b"RIFF\x04\x00\x00\x00WEBP",
        b"",
        b"hello, not an image",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        b"\x00" * 64,
        b"<html>Bad gateway</html>",
    ],
)
def test_identify_returns_none_for_truncated_or_foreign_bytes(data: bytes) -> None:
    assert identify(data) is None


@given(
    prefix=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x10\x00\x00\x00WEBPVP8X"]
    ),
    rest=st.binary(max_size=80),
)
@settings(max_examples=400, deadline=None)
def test_identify_never_raises_on_arbitrary_bytes(prefix: bytes, rest: bytes) -> None:
    result = identify(prefix + rest)

    assert result is None or (result.width > 0 and result.height > 0)


# --- placeholder_png ------------------------------------------------------------------------


def decode_rgb_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB, filter-0 PNG by hand; check every chunk's CRC on the way."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, header = 8, b"", None
    kinds = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    assert header is not None
    width, height, depth, colour_type = header[:4]
    assert (depth, colour_type) == (8, 2)
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    pixels = []
    for row in range(height):
        line = raw[row * stride : (row + 1) * stride]
        assert line[0] == 0
        pixels += [tuple(line[1 + 3 * x : 4 + 3 * x]) for x in range(width)]
    return width, height, pixels


@pytest.mark.parametrize(
    ("width", "height"), [(1, 1), (7, 3), (8, 8), (13, 17), (64, 48), (1024, 1024), (1536, 1024)]
)
def test_placeholder_has_exactly_the_requested_size(width: int, height: int) -> None:
    data = placeholder_png("a red fox", width, height)

    decoded_width, decoded_height, pixels = decode_rgb_png(data)
    assert (decoded_width, decoded_height) == (width, height)
    assert len(pixels) == width * height
    assert identify(data) == ImageInfo("png", width, height)


def test_placeholder_is_deterministic() -> None:
    assert placeholder_png("a red fox", 64, 48) == placeholder_png("a red fox", 64, 48)
    assert placeholder_png("a red fox", 64, 48, 2) == placeholder_png("a red fox", 64, 48, 2)


def test_placeholder_differs_per_index_of_one_request() -> None:
    first = decode_rgb_png(placeholder_png("a red fox", 32, 32, 0))[2]
    second = decode_rgb_png(placeholder_png("a red fox", 32, 32, 1))[2]

    assert first != second


def test_different_prompts_give_different_bytes_and_pixel_colours() -> None:
    fox = placeholder_png("a red fox", 64, 64)
    whale = placeholder_png("a blue whale", 64, 64)

    assert fox != whale
    assert set(decode_rgb_png(fox)[2]) != set(decode_rgb_png(whale)[2])


@given(first=st.text(max_size=30), second=st.text(max_size=30))
@settings(max_examples=100, deadline=None)
def test_any_two_different_prompts_give_different_pixels(first: str, second: str) -> None:
    if first == second:
        return
    assert (
        decode_rgb_png(placeholder_png(first, 8, 8))[2]
        != (decode_rgb_png(placeholder_png(second, 8, 8))[2])
    )


def test_placeholder_uses_more_than_one_colour() -> None:
    assert len(set(decode_rgb_png(placeholder_png("a red fox", 64, 64))[2])) > 1

"""The implementations the contract tests run against, one fixture parameter each.

A blob store or image index adds a factory here; the tests in this folder then run against
it unchanged. "s3" is S3Blobs on a real SeaweedFS server (tests/support/seaweed.py), one per
session, each test under a prefix of its own; skipped only when the `weed` binary is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen.storage.blobs import Blobs
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.images import ImageStore
from imagegen.storage.index import FileIndex
from imagegen.storage.layout import Layout
from imagegen.storage.s3blobs import S3Blobs
from tests.support.seaweed import SeaweedFS, SeaweedUnavailable, weed_binary

BUCKET = "contract"


def _file_blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    (tmp_path / "blobs").mkdir()
    return FileBlobs(tmp_path / "blobs", fsync=False)


def _s3_blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    client = request.getfixturevalue("seaweed_client")
    return S3Blobs(BUCKET, f"tests/{uuid.uuid4().hex}", client)


def _file_store(tmp_path: Path) -> ImageStore:
    layout = Layout(tmp_path / "images")
    layout.prepare()
    return ImageStore(FileBlobs(layout.root, fsync=False), FileIndex(layout, fsync=False))


BLOB_STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Blobs]] = {
    "file": _file_blobs,
    "s3": _s3_blobs,
}
IMAGE_STORES: dict[str, Callable[[Path], ImageStore]] = {"file": _file_store}


@pytest.fixture(params=sorted(BLOB_STORES))
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    """An empty blob store of each implementation."""
    yield BLOB_STORES[request.param](request, tmp_path)


@pytest.fixture(params=sorted(IMAGE_STORES))
def image_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageStore]:
    """An empty image store over each blob store and index pair."""
    yield IMAGE_STORES[request.param](tmp_path)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS server for the session, with the bucket BUCKET."""
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        pytest.skip(f"S3 contract tests need SeaweedFS: {exc}")
    with SeaweedFS.started(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="session")
def seaweed_client(seaweed: SeaweedFS) -> Any:
    """One boto3 client for the session (making one takes a few hundred ms)."""
    return seaweed.client()

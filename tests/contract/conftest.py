"""The implementations the contract tests run against, one fixture parameter each.

A second blob store (S3) or image index (a database) adds a factory here; the tests in this
folder then run against it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagegen.storage.blobs import Blobs
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.images import ImageStore
from imagegen.storage.index import FileIndex
from imagegen.storage.layout import Layout


def _file_blobs(tmp_path: Path) -> Blobs:
    (tmp_path / "blobs").mkdir()
    return FileBlobs(tmp_path / "blobs", fsync=False)


def _file_store(tmp_path: Path) -> ImageStore:
    layout = Layout(tmp_path / "images")
    layout.prepare()
    return ImageStore(FileBlobs(layout.root, fsync=False), FileIndex(layout, fsync=False))


BLOB_STORES: dict[str, Callable[[Path], Blobs]] = {"file": _file_blobs}
IMAGE_STORES: dict[str, Callable[[Path], ImageStore]] = {"file": _file_store}


@pytest.fixture(params=sorted(BLOB_STORES))
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    """An empty blob store of each implementation."""
    yield BLOB_STORES[request.param](tmp_path)


@pytest.fixture(params=sorted(IMAGE_STORES))
def image_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageStore]:
    """An empty image store over each blob store and index pair."""
    yield IMAGE_STORES[request.param](tmp_path)

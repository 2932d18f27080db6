"""Directory listings that change under their reader, as other processes change them.

A worker lists a shared directory (`os.scandir`) while other workers create, rename and
remove entries in it. `change_after_listing` makes that happen deterministically: the
listing of one directory is taken, then `change` runs, and only then does the caller see
the entries, so every `stat` or `open` it makes meets the directory as it is now.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


class _Listing:
    """What os.scandir returns: iterable, and a context manager."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = entries

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self._entries)

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        return None


def change_after_listing(
    monkeypatch: pytest.MonkeyPatch,
    directory: Path,
    change: Callable[[list[os.DirEntry[str]]], None],
) -> list[int]:
    """From now on in this test, each `os.scandir(directory)` lists it, then calls `change`
    with the entries listed, then hands them over. Returns a one-item list counting the
    listings changed, so a test can check its change really ran."""
    real = os.scandir
    changed = [0]

    def scandir(path: Any = ".") -> Any:
        if not isinstance(path, (str, os.PathLike)) or Path(path) != directory:
            return real(path)
        with real(path) as listing:
            entries = list(listing)
        change(entries)
        changed[0] += 1
        return _Listing(entries)

    monkeypatch.setattr(os, "scandir", scandir)
    return changed

"""The books' contract tests run against every implementation listed here.

Each fixture gives a factory: every call opens another handle on the same books, as
another process or replica would (its own connections, its own locks). A second
implementation (PostgreSQL, say) adds its entry to each table, with a fresh, empty set of
books per test, and runs the same tests unchanged:

    CAPS["postgresql"] = lambda where, clock: PostgresCapsBook(dsn_for(where), clock=clock)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import CapsBook, IdempotencyBook, JobBook
from imagegen.books.sqlite import SQLiteCapsBook, SQLiteIdempotencyBook
from tests.support.books import BookClock


def _sqlite_caps(where: Path, clock: BookClock) -> CapsBook:
    book = SQLiteCapsBook(where / "ledger.sqlite3", clock=clock)
    book.prepare()
    return book


def _sqlite_keys(where: Path, clock: BookClock) -> IdempotencyBook:
    book = SQLiteIdempotencyBook(where / "ledger.sqlite3", clock=clock)
    book.prepare()
    return book


def _file_jobs(where: Path, max_running: int) -> JobBook:
    return FileJobBook(where / "images", fsync=False, max_running=max_running)


# implementation name -> (the test's directory, the clock) -> a new handle on its books
CAPS: dict[str, Callable[[Path, BookClock], CapsBook]] = {"sqlite": _sqlite_caps}
KEYS: dict[str, Callable[[Path, BookClock], IdempotencyBook]] = {"sqlite": _sqlite_keys}
# implementation name -> (the test's directory, max_running) -> a new handle on its books
JOBS: dict[str, Callable[[Path, int], JobBook]] = {"files": _file_jobs}


@pytest.fixture
def clock() -> BookClock:
    """The books' clock, standing still until the test moves it."""
    return BookClock()


@pytest.fixture(params=sorted(CAPS))
def caps_books(request, tmp_path: Path, clock: BookClock) -> Callable[[], CapsBook]:
    """Opens a handle on one empty caps book (each call another handle on the same one)."""

    def open_handle() -> CapsBook:
        book = CAPS[request.param](tmp_path, clock)
        assert isinstance(book, CapsBook)
        return book

    return open_handle


@pytest.fixture(params=sorted(KEYS))
def key_books(request, tmp_path: Path, clock: BookClock) -> Callable[[], IdempotencyBook]:
    """Opens a handle on one empty idempotency book."""

    def open_handle() -> IdempotencyBook:
        book = KEYS[request.param](tmp_path, clock)
        assert isinstance(book, IdempotencyBook)
        return book

    return open_handle


@pytest.fixture(params=sorted(JOBS))
def job_books(request, tmp_path: Path) -> Callable[..., JobBook]:
    """Opens a handle on one empty job book; `max_running` slots (2 unless told)."""

    def open_handle(max_running: int = 2) -> JobBook:
        book = JOBS[request.param](tmp_path, max_running)
        assert isinstance(book, JobBook)
        return book

    return open_handle

"""`open_books`: the books a service starts with, chosen in one place.

Today the only choice is the embedded one: SQLite for the caps and the idempotency keys,
files with flock leases for the asynchronous jobs, all under the images directory. A
shared database (issue 14) is a second branch here, not a change in any caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import CapsBook, IdempotencyBook, JobBook
from imagegen.books.sqlite import SQLiteCapsBook, SQLiteIdempotencyBook
from imagegen.storage.layout import Layout


@dataclass(frozen=True)
class Books:
    """The three books one service shares between its processes."""

    caps: CapsBook
    idempotency: IdempotencyBook
    jobs: JobBook


def open_books(layout: Layout, *, fsync: bool, max_running: int) -> Books:
    """The books kept where `layout` says, ready to use (schemas created); `max_running`
    bounds the jobs running at once over every process sharing them."""
    caps = SQLiteCapsBook(layout.ledger_file)
    caps.prepare()  # one file holds the caps and the keys: its schema has both tables
    jobs = FileJobBook(layout.root, fsync=fsync, max_running=max_running)
    return Books(caps=caps, idempotency=SQLiteIdempotencyBook(layout.ledger_file), jobs=jobs)

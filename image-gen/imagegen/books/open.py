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
from imagegen.settings import Settings

LEDGER = (".ledger", "ledger.sqlite3")  # under the images directory


@dataclass(frozen=True)
class Books:
    """The three books one service shares between its processes."""

    caps: CapsBook
    idempotency: IdempotencyBook
    jobs: JobBook


def open_books(settings: Settings) -> Books:
    """The books of the service `settings` describe, ready to use (schemas created)."""
    root = settings.images_dir
    ledger = root.joinpath(*LEDGER)
    caps = SQLiteCapsBook(ledger)
    caps.prepare()  # one file holds the caps and the keys: its schema has both tables
    jobs = FileJobBook(root, fsync=settings.fsync, max_running=settings.max_running_jobs)
    return Books(caps=caps, idempotency=SQLiteIdempotencyBook(ledger), jobs=jobs)

"""`open_books`: the books a service starts with, chosen in one place.

Unset database URL: the embedded books, SQLite for the caps and the idempotency keys, files
with flock leases for the asynchronous jobs, all under the images directory. A
`postgresql://` URL (IMAGE_GEN_DATABASE_URL): all three in that database (books/postgres.py,
books/postgres_jobs.py: the jobs with timed leases), its schema migrated first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import CapsBook, IdempotencyBook, JobBook
from imagegen.books.sqlite import SQLiteCapsBook, SQLiteIdempotencyBook
from imagegen.storage.layout import Layout

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool


@dataclass(frozen=True)
class Books:
    """The three books one service shares between its processes."""

    caps: CapsBook
    idempotency: IdempotencyBook
    jobs: JobBook


def open_books(
    layout: Layout,
    *,
    fsync: bool,
    max_running: int,
    database_url: str | None = None,
    pool: ConnectionPool | None = None,
) -> Books:
    """The books kept where `layout` (and `database_url`, when set) say, ready to use
    (schemas created or migrated: with a database that cannot be reached the start fails
    after the pool's timeout); `max_running` bounds the jobs running at once over every
    process sharing them. `pool`: connections to `database_url` that the process shares
    with its image index (one is opened when none is given)."""
    if database_url:
        from imagegen.books.migrations import migrate
        from imagegen.books.postgres import PostgresCapsBook, PostgresIdempotencyBook, open_pool
        from imagegen.books.postgres_jobs import PostgresJobBook

        pool = pool or open_pool(database_url)
        migrate(pool)
        return Books(
            caps=PostgresCapsBook(pool),
            idempotency=PostgresIdempotencyBook(pool),
            jobs=PostgresJobBook(pool, max_running=max_running),
        )
    jobs = FileJobBook(layout.root, fsync=fsync, max_running=max_running)
    caps = SQLiteCapsBook(layout.ledger_file)
    caps.prepare()  # one file holds the caps and the keys: its schema has both tables
    return Books(caps=caps, idempotency=SQLiteIdempotencyBook(layout.ledger_file), jobs=jobs)

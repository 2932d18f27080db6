"""`open_books`: the books a service starts with, chosen in one place.

Unset database URL: the embedded books, SQLite for the caps and the idempotency keys, files
with flock leases for the asynchronous jobs, all under the images directory. A
`postgresql://` URL (IMAGE_GEN_DATABASE_URL): all three in that database (books/postgres.py,
books/postgres_jobs.py: the jobs with timed leases), its schema migrated by a
`migrations.Schema` as soon as the database answers: a database that cannot be reached at
start does not stop the start (the books say DATABASE_UNAVAILABLE until it can).
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

    from imagegen.books.migrations import Schema

# How long a start waits for the schema before going on without it (a reachable database
# migrates in well under this, so the first requests find the books ready).
SCHEMA_WAIT = 5.0


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
    schema: Schema | None = None,
) -> Books:
    """The books kept where `layout` (and `database_url`, when set) say. The embedded ones
    are ready to use; the database's are once `schema` (one is made when none is given) has
    migrated it, waited for up to SCHEMA_WAIT s here, in the background after that.
    `max_running` bounds the jobs running at once over every process sharing them. `pool`:
    connections to `database_url` that the process shares with its image index (one is
    opened when none is given)."""
    if database_url:
        from imagegen.books.migrations import Schema
        from imagegen.books.postgres import PostgresCapsBook, PostgresIdempotencyBook, open_pool
        from imagegen.books.postgres_jobs import PostgresJobBook

        pool = pool or open_pool(database_url)
        schema = schema or Schema()
        schema.start(pool)
        schema.wait(SCHEMA_WAIT)
        return Books(
            caps=PostgresCapsBook(pool, schema=schema),
            idempotency=PostgresIdempotencyBook(pool, schema=schema),
            jobs=PostgresJobBook(pool, max_running=max_running, schema=schema),
        )
    jobs = FileJobBook(layout.root, fsync=fsync, max_running=max_running)
    caps = SQLiteCapsBook(layout.ledger_file)
    caps.prepare()  # one file holds the caps and the keys: its schema has both tables
    return Books(caps=caps, idempotency=SQLiteIdempotencyBook(layout.ledger_file), jobs=jobs)

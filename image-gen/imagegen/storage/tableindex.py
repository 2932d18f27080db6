"""The image index in tables of a database: SQLite on one node, PostgreSQL for replicas.

    image_jobs (job_id PRIMARY KEY, stamp_ns, metadata)    a stored job: listing time, metadata
    images     (image_id PRIMARY KEY, job_id, key, deleted) each image and its blob key
    moved_jobs (job_id PRIMARY KEY)                         jobs imagegen.migrate brought in
    kept_jobs  (job_id, copy_ids PRIMARY KEY, metadata, kept_at, abandoned)  copies spools keep

For a blob store in a bucket (S3), which has no folder to scan or lock: the tables are the
truth of which images exist, in which order jobs are listed and what each job's metadata
says (deletion marks included); metadata.json in the bucket mirrors it for people who browse
the bucket. Jobs are listed newest first from an index on (stamp_ns, job_id), a page of
rows at a time, each row with its metadata, so a listing page is a query or two, however
many jobs there are. A deleted image keeps its row, marked `deleted`; a deleted job's rows go.
A note in kept_jobs is one copy of a job (copy_ids: its image ids) that a replica's spool
keeps, its keeper's while renewed (kept_at, at every flush of its spool: storage/spool.py);
one not renewed for KEPT_FOR seconds may be abandoned by another replica (its keeper is
gone, with the images), which then makes the job again (a new copy, new ids, a note of its
own if it must be kept too); an abandoned note is never renewed, so a keeper that comes back
never stores that copy. Abandoned notes are kept ABANDONED_KEPT_FOR, then swept.
- PostgresImageIndex: the schema is migrations 3 to 6 of books/migrations.py;
  stamps come from the database server's clock, one clock for every replica. `locked` is
  a transaction holding `SELECT ... FOR UPDATE` on the job's row; every call the thread
  makes on the index while it holds the lock runs inside that transaction (as savepoints),
  so a delete's changes commit together and no call waits on a second connection of the
  pool (a pool of N connections with N threads deleting would otherwise wait for ever).
- SQLiteImageIndex: `<images>/.index/images.sqlite3` in WAL mode, shared by the workers of
  one host, stamps from that host's clock; `locked` is an `flock` of one of 256 lock files
  (`.index/locks/<first two hex digits of the job id>`), so jobs that share one only wait
  for each other. One node only: replicas on other hosts would each see their own index.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from imagegen import strictjson
from imagegen.books.migrations import Schema
from imagegen.books.postgres import _PostgresBook
from imagegen.books.sqlite import _SQLiteBook
from imagegen.errors import DatabaseUnavailable
from imagegen.storage import durable
from imagegen.storage.blobs import BlobNotFound, Blobs, Publication
from imagegen.storage.index import normalize_id
from imagegen.storage.layout import METADATA, THUMBS
from imagegen.storage.spool import KEPT_FOR, Superseded, copy_of

log = logging.getLogger(__name__)

PAGE = 64  # jobs (with their metadata) read at once for a listing
SWEEP_KEYS = 5000  # blob keys one sweep lists at most (five ListObjectsV2 pages)
SWEEP_SECONDS = 10.0  # and the time it spends at most, beyond the call under way
_SWEEP_BATCH = 500  # job ids asked about in one query
_HEX = "0123456789abcdef"
_NO_LIMIT = 2**63 - 1
# What this store writes under `<job-uuid>/` (storage/layout.py): its images, metadata.json
# and cached thumbnails. The sweep never removes anything else: a bucket shared without a
# prefix may hold another program's objects under names that start with a UUID.
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_OWN_NAME = re.compile(
    rf"^(?:[0-9]{{3}}-{_UUID}\.(?:png|jpg|webp|gif|svg)|{re.escape(METADATA)}"
    rf"|{THUMBS}/{_UUID}-[a-z0-9-]{{1,32}}\.(?:png|jpg|webp))$"
)

_SQLITE_KEPT_JOBS = """
CREATE TABLE IF NOT EXISTS kept_jobs (
    job_id TEXT NOT NULL,
    copy_ids TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL,
    kept_at REAL NOT NULL DEFAULT 0,
    abandoned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, copy_ids)
);
"""
SQLITE_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS image_jobs (
    job_id TEXT PRIMARY KEY,
    stamp_ns INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS image_jobs_stamp ON image_jobs (stamp_ns DESC, job_id DESC);
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS images_job ON images (job_id);
CREATE TABLE IF NOT EXISTS moved_jobs (job_id TEXT PRIMARY KEY);
"""
    + _SQLITE_KEPT_JOBS
)

# The statements of both databases, with psycopg's placeholders (SQLite's are `?`).
_INSERT_JOB = (
    "INSERT INTO image_jobs (job_id, stamp_ns, metadata) VALUES (%s, %s, %s) "
    "ON CONFLICT (job_id) DO NOTHING RETURNING job_id"
)
_INSERT_IMAGE = "INSERT INTO images (image_id, job_id, key) VALUES (%s, %s, %s)"
_IMPORT_JOB = (
    "INSERT INTO image_jobs (job_id, stamp_ns, metadata) VALUES (%s, %s, %s) "
    "ON CONFLICT (job_id) DO UPDATE SET stamp_ns = EXCLUDED.stamp_ns, metadata = EXCLUDED.metadata"
)
_MOVED = "INSERT INTO moved_jobs (job_id) VALUES (%s) ON CONFLICT (job_id) DO NOTHING"
_WAS_MOVED = "SELECT 1 FROM moved_jobs WHERE job_id = %s"
_IMPORT_IMAGE = "INSERT INTO images (image_id, job_id, key, deleted) VALUES (%s, %s, %s, %s)"
_FIND = "SELECT job_id, key FROM images WHERE image_id = %s AND NOT deleted"
_REMOVE = "UPDATE images SET deleted = TRUE WHERE image_id = %s"
_REMOVE_IMAGES = "DELETE FROM images WHERE job_id = %s"
_REMOVE_JOB = "DELETE FROM image_jobs WHERE job_id = %s"
_METADATA = "SELECT metadata FROM image_jobs WHERE job_id = %s"
_UPDATE = "UPDATE image_jobs SET metadata = %s WHERE job_id = %s"
_STAMP = "SELECT stamp_ns FROM image_jobs WHERE job_id = %s"
_FIRST_PAGE = (
    "SELECT stamp_ns, job_id, metadata FROM image_jobs WHERE stamp_ns <= %s "
    "ORDER BY stamp_ns DESC, job_id DESC LIMIT %s"
)
_NEXT_PAGE = (
    "SELECT stamp_ns, job_id, metadata FROM image_jobs WHERE (stamp_ns, job_id) < (%s, %s) "
    "ORDER BY stamp_ns DESC, job_id DESC LIMIT %s"
)
# Kept notes, with `{now}` and `{since}` (now less a horizon) as each database writes them.
_KEEP = (
    "INSERT INTO kept_jobs (job_id, copy_ids, metadata, kept_at) VALUES (%s, %s, %s, {now}) "
    "ON CONFLICT (job_id, copy_ids) DO UPDATE "
    "SET metadata = EXCLUDED.metadata, kept_at = EXCLUDED.kept_at "
    "WHERE NOT kept_jobs.abandoned RETURNING job_id"
)
_KEPT = (
    "SELECT metadata FROM kept_jobs WHERE job_id = %s AND NOT abandoned AND kept_at > {since} "
    "ORDER BY kept_at DESC LIMIT 1"
)
_ABANDON_STALE = (
    "UPDATE kept_jobs SET abandoned = TRUE, kept_at = {now} "
    "WHERE job_id = %s AND NOT abandoned AND kept_at <= {since}"
)
_LIVE = "SELECT 1 FROM kept_jobs WHERE job_id = %s AND NOT abandoned LIMIT 1"
_NOTE_OF_COPY = "SELECT abandoned FROM kept_jobs WHERE job_id = %s AND copy_ids = %s"
# An abandoned note stays: its keeper, back, must find it so (or it would store its copy).
_UNKEEP = "DELETE FROM kept_jobs WHERE job_id = %s AND NOT abandoned"
_SWEEP_NOTES = "DELETE FROM kept_jobs WHERE kept_at <= {since}"
# How long a note is kept once abandoned (or last renewed): a keeper back later than that,
# whose job was made again and then deleted, could store its copy (a job stored meanwhile
# is still refused).
ABANDONED_KEPT_FOR = 30 * 86400.0
_NOW_NS = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000"


class _Tables:
    """The index's statements over `_read` and `_write` connections (the subclasses')."""

    _placeholder = "%s"
    _for_update = " FOR UPDATE"  # a row read to decide a write, locked until it is done

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _now_ns(self, db: Any) -> int:
        raise NotImplementedError

    def _kept_sql(
        self, statement: str, horizon: float = KEPT_FOR
    ) -> tuple[str, tuple[object, ...], tuple[object, ...]]:
        """A kept-note statement in this database's words, and the values of its `{now}`
        and of its `{since}` (now less `horizon` seconds), each where it stands."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("%s", self._placeholder)

    def _one(self, statement: str, *values: object) -> Any:
        with self._read() as db:
            return db.execute(self._sql(statement), values).fetchone()

    def stage(self, publication: Publication) -> None:
        """Nothing: the job's rows say all that a folder's `.lock` says on disk."""

    def add(
        self, job_id: str, entries: list[tuple[str, str]], metadata: dict[str, Any]
    ) -> durable.Pending:
        """The job's row and its images' rows, in one transaction (which ends its note
        as kept, if it was: from then on it is stored). Superseded, writing nothing, if the
        job is stored already (another copy of it) or this copy's note was abandoned: the
        note is locked until the rows are in, so an abandoning replica waits for them."""
        with self._write() as db:
            noted = self._sql(_NOTE_OF_COPY) + self._for_update
            note = db.execute(noted, (job_id, copy_of(metadata))).fetchone()
            if note is not None and note[0]:
                raise Superseded(f"job {job_id}: this copy's note was abandoned")
            stamp = self._now_ns(db)
            inserted = db.execute(self._sql(_INSERT_JOB), (job_id, stamp, _dump(metadata)))
            if not inserted.fetchall():
                raise Superseded(f"job {job_id} is stored already")
            insert = self._sql(_INSERT_IMAGE)
            for image_id, key in entries:
                db.execute(insert, (image_id, job_id, key))
            db.execute(self._sql(_UNKEEP), (job_id,))
        return durable.Pending()

    def note_kept(self, job_id: str, metadata: dict[str, Any]) -> bool:
        """Note (or renew the note of) a copy of a job that a replica's spool keeps, with the
        metadata it will be stored with; False if that copy's note was abandoned: never
        store it then."""
        sql, now, _ = self._kept_sql(_KEEP)
        values = (job_id, copy_of(metadata), _dump(metadata), *now)
        with self._write() as db:
            return bool(db.execute(sql, values).fetchall())

    def kept(self, job_id: str) -> dict[str, Any] | None:
        """The metadata of a copy of the job noted as kept and not stored (nor forgotten)
        since, its note renewed within KEPT_FOR seconds and not abandoned."""
        sql, _, since = self._kept_sql(_KEPT)
        with self._read() as db:
            row = db.execute(sql, (job_id, *since)).fetchone()
        return _loaded(row[0]) if row is not None else None

    def abandon_kept(self, job_id: str, *, stale: bool) -> bool:
        """Whether no spool is to store a copy of the job any more: there is no note of one
        but abandoned ones, once with `stale` (the caller has itself waited KEPT_FOR
        seconds for a renewal) the notes not renewed for KEPT_FOR seconds by the database's
        clock are abandoned. False while a keeper renews a note: it will be stored. In one
        transaction, and the rows a keeper renews are the rows abandoned, so a keeper
        renewing at that moment and an abandoning replica never both win."""
        with self._write() as db:
            if stale:
                sql, now, since = self._kept_sql(_ABANDON_STALE)
                db.execute(sql, (*now, job_id, *since))
            return db.execute(self._sql(_LIVE), (job_id,)).fetchone() is None

    def forget_kept(self, job_id: str) -> None:
        """The job is no longer kept (its entry was set aside as damaged, or it was stored)."""
        with self._write() as db:
            db.execute(self._sql(_UNKEEP), (job_id,))

    def import_job(
        self,
        job_id: str,
        stamp_ns: int,
        metadata: dict[str, Any],
        images: list[tuple[str, str, bool]],
    ) -> None:
        """Index a job another store holds (imagegen.migrate), in one transaction, replacing
        what is indexed of it: its listing time `stamp_ns` as the other store had it (so
        listings keep their order), its metadata, and (image id, blob key, deleted) of each
        image. Called after the job's blobs are in place, as `add` is. The job is
        remembered as moved (`moved`), after it is deleted too."""
        with self._write() as db:
            db.execute(self._sql(_IMPORT_JOB), (job_id, stamp_ns, _dump(metadata)))
            db.execute(self._sql(_MOVED), (job_id,))
            db.execute(self._sql(_REMOVE_IMAGES), (job_id,))
            insert = self._sql(_IMPORT_IMAGE)
            for image_id, key, deleted in images:
                db.execute(insert, (image_id, job_id, key, deleted))

    def moved(self, job_id: str) -> bool:
        """Whether `import_job` indexed this job once (it may have been deleted since)."""
        return self._one(_WAS_MOVED, job_id) is not None

    def find(self, image_id: str) -> tuple[str, str] | None:
        row = self._one(_FIND, image_id)
        return (str(row[0]), str(row[1])) if row is not None else None

    def contains(self, image_id: str) -> bool:
        return self.find(image_id) is not None

    def remove(self, image_id: str) -> None:
        """Marks the image's row deleted (it stays, as metadata.json keeps its entry)."""
        with self._write() as db:
            db.execute(self._sql(_REMOVE), (image_id,))

    def remove_job(self, job_id: str, image_ids: list[str]) -> None:
        """Every row of the job, whichever images the caller names."""
        with self._write() as db:
            db.execute(self._sql(_REMOVE_IMAGES), (job_id,))
            db.execute(self._sql(_REMOVE_JOB), (job_id,))

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        row = self._one(_METADATA, job_id)
        return _loaded(row[0]) if row is not None else None

    def update(self, job_id: str, metadata: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute(self._sql(_UPDATE), (_dump(metadata), job_id))

    def stamp(self, job_id: str) -> int | None:
        row = self._one(_STAMP, job_id)
        return int(row[0]) if row is not None else None

    def job_order(
        self, at_most: int | None = None
    ) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
        """A page of PAGE rows at a time, each read in a transaction of its own (no
        connection is held between pages: the caller may stop at any one)."""
        last: tuple[int, str] | None = None
        for _ in range(_NO_LIMIT):  # ends at the last page
            with self._read() as db:
                if last is None:
                    values: tuple[object, ...] = (_NO_LIMIT if at_most is None else at_most, PAGE)
                    rows = db.execute(self._sql(_FIRST_PAGE), values).fetchall()
                else:
                    rows = db.execute(self._sql(_NEXT_PAGE), (*last, PAGE)).fetchall()
            for stamp, job_id, metadata in rows:
                yield int(stamp), str(job_id), _loaded(metadata)
            if len(rows) < PAGE:
                return
            last = (int(rows[-1][0]), str(rows[-1][1]))

    def sweep(self, older_than: float, blobs: Blobs) -> int:
        """Remove blobs older than `older_than` s whose job has no row; how many.

        A job's blobs are put before its rows are written, so a writer that dies (or loses
        the database) between the two leaves blobs no row names, which nothing shows (and
        no metadata.json: it is put last). A job whose metadata.json is there was stored
        whole and is never swept, row or not: an index that lost it must not cost its
        images (a delete that died between its rows and its blobs leaks them). The rows
        themselves need no sweep: a crashed writer's transaction rolls back, and a
        committed row names blobs that were all put first. Bounded work: at most
        SWEEP_KEYS keys are listed, from a random first hex digit of the job ids on (so
        successive sweeps cover a large bucket), one query per _SWEEP_BATCH jobs, and a
        HEAD only for the blobs of jobs without a row, all within SWEEP_SECONDS (each
        worker sweeps as it boots). A store or database that cannot be reached ends the
        sweep (a service still starts without them, after the client's own timeouts).
        Notes of kept copies abandoned more than ABANDONED_KEPT_FOR ago go first."""
        cutoff_ns = time.time_ns() - int(older_than * 1e9)
        deadline = time.monotonic() + SWEEP_SECONDS
        start = secrets.randbelow(len(_HEX))
        listed = removed = 0
        try:
            self._sweep_notes()
            for digit in _HEX[start:] + _HEX[:start]:
                by_job: dict[str, list[str]] = {}
                for key in blobs.list(digit):
                    job, _, name = key.partition("/")
                    if normalize_id(job) == job and _OWN_NAME.match(name):
                        by_job.setdefault(job, []).append(key)
                    listed += 1
                    if listed >= SWEEP_KEYS or time.monotonic() > deadline:
                        break
                removed += self._remove_orphans(by_job, cutoff_ns, blobs, deadline)
                if listed >= SWEEP_KEYS or time.monotonic() > deadline:
                    break
        except (OSError, DatabaseUnavailable) as exc:
            log.warning("sweep of unindexed blobs stopped: %s", type(exc).__name__)
        return removed

    def _sweep_notes(self) -> None:
        """Remove the notes abandoned (or last renewed) more than ABANDONED_KEPT_FOR ago.
        A failure is logged, never raised: a worker sweeps as it boots."""
        sql, _, since = self._kept_sql(_SWEEP_NOTES, ABANDONED_KEPT_FOR)
        try:
            with self._write() as db:
                db.execute(sql, since)
        except Exception as exc:  # a sweep never stops a worker
            log.warning("sweep of old kept notes stopped: %s", type(exc).__name__)

    def _remove_orphans(
        self, by_job: dict[str, list[str]], cutoff_ns: int, blobs: Blobs, deadline: float
    ) -> int:
        """Delete the blobs in `by_job` written before `cutoff_ns` whose job has no row
        (until `deadline`, on the monotonic clock)."""
        jobs = sorted(by_job)
        indexed: set[str] = set()
        for first in range(0, len(jobs), _SWEEP_BATCH):
            batch = jobs[first : first + _SWEEP_BATCH]
            marks = ", ".join([self._placeholder] * len(batch))
            with self._read() as db:
                query = f"SELECT job_id FROM image_jobs WHERE job_id IN ({marks})"  # noqa: S608 - placeholders only
                rows = db.execute(query, batch).fetchall()
            indexed.update(str(row[0]) for row in rows)
        removed = stored = 0
        for job in jobs:
            if job in indexed:
                continue
            if time.monotonic() > deadline:
                break
            if self._was_stored(job, by_job[job], blobs):
                stored += 1
                continue
            for key in by_job[job]:
                if time.monotonic() > deadline:
                    return removed
                try:
                    written = blobs.info(key).modified_ns
                except BlobNotFound:
                    continue
                if written < cutoff_ns and blobs.delete(key):
                    removed += 1
        if stored:
            log.warning(
                "sweep: %d jobs of the bucket have their metadata.json but no row in the "
                "index; left alone (an index lost or reset? imagegen.migrate indexes them)",
                stored,
            )
        return removed

    @staticmethod
    def _was_stored(job: str, keys: list[str], blobs: Blobs) -> bool:
        """Whether the job's marker (metadata.json) is in the store: it is put last, after
        the job's rows were committed, so a job that has it was stored whole and its blobs
        are no crashed writer's. Without a row, the index lost it (a SQLite file gone with
        its images directory, a database reset or replaced), or a delete died between its
        rows and its blobs: both are left, as a leak is mended and a lost image is not."""
        marker = f"{job}/{METADATA}"
        if marker in keys:
            return True
        try:  # the listing may have stopped before the marker (it sorts after the images)
            blobs.info(marker)
        except BlobNotFound:
            return False
        return True


class _HeldTransaction(threading.local):
    """The connection whose transaction holds a job's lock in this thread, if any."""

    db: psycopg.Connection[Any] | None = None


class PostgresImageIndex(_Tables, _PostgresBook):
    """The index in PostgreSQL (tables of migration 3), shared by replicas on any host."""

    def __init__(self, pool: ConnectionPool, *, schema: Schema | None = None) -> None:
        super().__init__(pool, schema=schema)
        self._held = _HeldTransaction()

    @contextmanager
    def _transaction(self, wait: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """The thread's held transaction (a savepoint in it) while it holds a job's lock;
        otherwise a transaction of its own (waited for at most `wait` seconds)."""
        held = self._held.db
        if held is None:
            with super()._transaction(wait) as db:
                yield db
            return
        try:
            with held.transaction():
                yield held
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise DatabaseUnavailable() from None

    def _read(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._transaction()

    def _write(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._transaction()

    def _now_ns(self, db: psycopg.Connection[Any]) -> int:
        row = db.execute(_NOW_NS).fetchone()
        assert row is not None
        return int(row[0])

    def _kept_sql(
        self, statement: str, horizon: float = KEPT_FOR
    ) -> tuple[str, tuple[object, ...], tuple[object, ...]]:
        """The database server's clock, one for every replica."""
        since = "now() - make_interval(secs => %s)"
        return statement.format(now="now()", since=since), (), (horizon,)

    @contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """The job's row locked FOR UPDATE until the block ends, then committed (rolled
        back if the block raised); FileNotFoundError if there is no such job."""
        with self._transaction() as db:
            found = db.execute(
                "SELECT 1 FROM image_jobs WHERE job_id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if found is None:
                raise FileNotFoundError(job_id)
            outer, self._held.db = self._held.db, db
            try:
                yield
            finally:
                self._held.db = outer


class SQLiteImageIndex(_Tables, _SQLiteBook):
    """The index in one SQLite file under the images directory: one host only."""

    _placeholder = "?"
    _for_update = ""  # BEGIN IMMEDIATE: the writer's lock is taken at once

    def __init__(self, path: Path, locks: Path) -> None:
        super().__init__(path)
        self.locks = Path(locks)

    def prepare(self) -> None:
        """Create the database, its schema and the lock folder (every worker may run it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)
        self._connect().executescript(SQLITE_SCHEMA)
        with self._transaction() as db:  # an index from before notes were of copies
            columns = {row[1] for row in db.execute("PRAGMA table_info(kept_jobs)")}
            if "copy_ids" not in columns:
                rows = db.execute("SELECT job_id, metadata FROM kept_jobs").fetchall()
                db.execute("DROP TABLE kept_jobs")
                db.execute(_SQLITE_KEPT_JOBS)
                now = time.time()  # each counted as renewed now: its keeper renews it soon
                db.executemany(
                    "INSERT INTO kept_jobs (job_id, copy_ids, metadata, kept_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(job, copy_of(_loaded(text) or {}), text, now) for job, text in rows],
                )

    @contextmanager
    def _read(self) -> Iterator[Any]:
        yield self._connect()  # each statement reads in a transaction of its own

    def _write(self) -> AbstractContextManager[Any]:
        return self._transaction()

    def _now_ns(self, db: Any) -> int:
        return time.time_ns()

    def _kept_sql(
        self, statement: str, horizon: float = KEPT_FOR
    ) -> tuple[str, tuple[object, ...], tuple[object, ...]]:
        """This host's clock, in seconds."""
        now = time.time()
        sql = self._sql(statement.format(now="%s", since="%s"))
        return sql, (now,), (now - horizon,)

    @contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """The flock of the job's lock file (one of 256, by the job id's first byte); then
        FileNotFoundError if there is no such job."""
        fd = os.open(self.locks / job_id[:2], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.stamp(job_id) is None:
                raise FileNotFoundError(job_id)
            yield
        finally:
            os.close(fd)


def _dump(metadata: dict[str, Any]) -> str:
    return strictjson.dumps(metadata, ensure_ascii=False)


def _loaded(value: object) -> dict[str, Any] | None:
    """A metadata column's value (JSON text, or what psycopg made of a JSON column)."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None

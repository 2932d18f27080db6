"""The PostgreSQL books' schema, as numbered migrations applied once each, in order.

`migrate` runs in every process; under a session advisory lock one process applies what is
missing while the others wait, then find it done. Table `schema_version` records each
applied version. A service migrates through a `Schema`: in a background thread from start,
again and again until the database answers, so that a replica starts (and says
DATABASE_UNAVAILABLE meanwhile) even when its database does not, and needs no restart.
A migration is never edited once released: a change is a new entry at the end of MIGRATIONS.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

# The advisory lock key of the migrations (any fixed bigint; "imgmigr" in ASCII).
MIGRATION_LOCK = 0x696D676D696772
LOCK_TIMEOUT = "120s"  # how long a replica waits for another's migrations before failing
# A Schema tries again this long after a failed attempt, doubling up to RETRY_AT_MOST (or
# sooner, but never within RETRY_FIRST, when a request asks for the books).
RETRY_FIRST = 0.5
RETRY_AT_MOST = 5.0

# (version, name, SQL): applied in order, each in its own transaction with its record.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE spend (
            id BIGSERIAL PRIMARY KEY,
            token TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            images INTEGER NOT NULL,
            usd DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL,
            model TEXT NOT NULL,
            job_id TEXT
        );
        CREATE INDEX spend_at ON spend (at);
        CREATE INDEX spend_token_at ON spend (token, at);
        CREATE TABLE idempotency (
            token TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL,
            claim TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION NOT NULL,
            status INTEGER,
            headers TEXT,
            body BYTEA,
            PRIMARY KEY (token, key)
        );
        CREATE INDEX idempotency_created ON idempotency (created);
        """,
    ),
    (
        2,
        "jobs",
        """
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            marker TEXT NOT NULL,
            listed TEXT CHECK (listed IN ('active', 'delivering')),
            status TEXT NOT NULL,
            record JSON NOT NULL,
            version BIGINT NOT NULL DEFAULT 1,
            owner TEXT,
            lease TEXT,
            lease_until TIMESTAMPTZ,
            webhook_secret TEXT,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX jobs_listed ON jobs (listed, marker) WHERE listed IS NOT NULL;
        CREATE INDEX jobs_unlisted ON jobs (updated_at) WHERE listed IS NULL;
        CREATE TABLE job_inputs (
            job_id TEXT NOT NULL REFERENCES jobs ON DELETE CASCADE,
            name TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (job_id, name)
        );
        CREATE TABLE job_previews (
            job_id TEXT NOT NULL REFERENCES jobs ON DELETE CASCADE,
            name TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (job_id, name)
        );
        CREATE TABLE slots (
            slot INTEGER PRIMARY KEY,
            owner TEXT,
            lease TEXT,
            lease_until TIMESTAMPTZ
        );
        """,
    ),
    (
        3,
        "image index",
        # storage/tableindex.py: stored jobs and their images, for a store in a bucket.
        """
        CREATE TABLE image_jobs (
            job_id TEXT PRIMARY KEY,
            stamp_ns BIGINT NOT NULL,
            metadata JSON NOT NULL
        );
        CREATE INDEX image_jobs_stamp ON image_jobs (stamp_ns DESC, job_id DESC);
        CREATE TABLE images (
            image_id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES image_jobs (job_id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            deleted BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE INDEX images_job ON images (job_id);
        """,
    ),
    (
        4,
        "moved jobs",
        # imagegen.migrate: the jobs it indexed, so that one deleted since is not copied again.
        """
        CREATE TABLE moved_jobs (
            job_id TEXT PRIMARY KEY,
            moved_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        5,
        "kept jobs",
        # storage/images.py: a job one replica keeps in its spool while the bucket is away,
        # so that every replica answers `storing` for it; gone once the job is stored.
        """
        CREATE TABLE kept_jobs (
            job_id TEXT PRIMARY KEY,
            metadata JSON NOT NULL,
            kept_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        6,
        "kept copies renewed",
        # storage/spool.py: a note is of one copy of a job (copy_ids: its image ids), which
        # its keeping replica renews (kept_at) while its spool holds it; a note not renewed
        # for spool.KEPT_FOR may be abandoned by another replica, which then makes the job
        # again (the keeper, back, then never stores that copy). Notes from before are
        # counted as renewed now.
        """
        ALTER TABLE kept_jobs ADD COLUMN copy_ids TEXT NOT NULL DEFAULT '';
        ALTER TABLE kept_jobs ADD COLUMN abandoned BOOLEAN NOT NULL DEFAULT FALSE;
        UPDATE kept_jobs SET kept_at = now();
        DO $$
        DECLARE note record;
        BEGIN
            FOR note IN SELECT job_id FROM kept_jobs LOOP
                BEGIN  -- a note PostgreSQL's JSON functions cannot read (an escaped NUL) keeps ''
                    UPDATE kept_jobs SET copy_ids = coalesce((
                        SELECT string_agg(image ->> 'id', ',' ORDER BY place)
                        FROM json_array_elements(
                            CASE WHEN json_typeof(metadata -> 'images') = 'array'
                            THEN metadata -> 'images' ELSE '[]'::json END
                        ) WITH ORDINALITY AS listed (image, place)
                        WHERE json_typeof(image) = 'object'
                    ), '') WHERE job_id = note.job_id;
                EXCEPTION WHEN others THEN NULL;
                END;
            END LOOP;
        END $$;
        ALTER TABLE kept_jobs DROP CONSTRAINT kept_jobs_pkey;
        ALTER TABLE kept_jobs ADD PRIMARY KEY (job_id, copy_ids);
        """,
    ),
]

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def migrate(
    pool: ConnectionPool, migrations: list[tuple[int, str, str]] | None = None
) -> list[int]:
    """Bring the schema up to date; the versions this call applied (none when another
    process had done it). Blocks while another process migrates (at most LOCK_TIMEOUT)."""
    with pool.connection() as db:
        db.autocommit = True
        db.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        db.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            return apply_missing(db, MIGRATIONS if migrations is None else migrations)
        finally:
            db.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            db.execute("RESET lock_timeout")


def apply_missing(db: psycopg.Connection[Any], migrations: list[tuple[int, str, str]]) -> list[int]:
    """Apply the migrations not yet recorded, with the migration lock held by `db`
    (autocommit: each migration in its own transaction)."""
    with db.transaction():
        db.execute(_VERSION_TABLE)
    done = {row[0] for row in db.execute("SELECT version FROM schema_version")}
    applied = []
    for version, name, sql in migrations:
        if version in done:
            continue
        with db.transaction():
            db.execute(sql.encode())
            db.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name)
            )
        log.info("database schema: applied migration %04d_%s", version, name)
        applied.append(version)
    return applied


def schema_versions(pool: ConnectionPool) -> list[int]:
    """The versions recorded as applied, in order."""
    with pool.connection() as db:
        return [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY 1")]


class Schema:
    """One process's view of the books' schema: migrated by a background thread, retried
    until the database answers (with backoff), then known to be ready. The books ask
    `ready` before each transaction and answer DATABASE_UNAVAILABLE until it is; asking
    also cuts the backoff short, so a busy worker serves as soon as the database answers."""

    def __init__(self, migrations: list[tuple[int, str, str]] | None = None) -> None:
        self.migrations = migrations
        self._done = threading.Event()
        self._wake = threading.Event()  # set by `ready`: try again now
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def start(self, pool: ConnectionPool) -> None:
        """Start migrating over `pool` unless done or under way in this process (a fork
        leaves the thread behind: the child starts its own)."""
        with self._lock:
            if self._done.is_set():
                return
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._migrate_until_done, args=(pool,), name="imagegen-migrate", daemon=True
            )
            self._thread.start()

    def ready(self, pool: ConnectionPool) -> bool:
        """Whether the schema is up to date; if not, make sure it is being migrated."""
        if not self._done.is_set():
            self.start(pool)
            self._wake.set()
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the schema to be ready; whether it is."""
        return self._done.wait(timeout)

    def _migrate_until_done(self, pool: ConnectionPool) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                migrate(pool, self.migrations)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning(
                    "database schema: the database cannot be reached (%s); trying again in %.1f s",
                    type(exc).__name__,
                    delay,
                )
            except Exception:
                log.exception("database schema: migrating failed; trying again in %.1f s", delay)
            else:
                log.info("database schema: up to date")
                self._done.set()
                return
            failed_at = time.monotonic()
            self._wake.wait(delay)
            self._wake.clear()
            time.sleep(max(0.0, failed_at + RETRY_FIRST - time.monotonic()))
            delay = min(2 * delay, RETRY_AT_MOST)

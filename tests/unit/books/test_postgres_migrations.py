"""The PostgreSQL books' schema migrations, on a real server: from an empty database, run
again, and two processes migrating at once (one applies, the other waits and finds it done)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from imagegen.books.migrations import MIGRATION_LOCK, MIGRATIONS, apply_missing, migrate
from imagegen.storage.tableindex import PostgresImageIndex
from tests.support.postgres import pool_for

REPO = Path(__file__).resolve().parents[3]
EVERY = [version for version, _, _ in MIGRATIONS]


@pytest.fixture
def pool(tmp_path: Path) -> ConnectionPool:
    return pool_for(tmp_path)


def recorded(pool: ConnectionPool) -> list[int]:
    with pool.connection() as db:
        return [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY 1")]


def test_an_empty_database_gets_every_migration_in_order(pool):
    assert migrate(pool) == EVERY
    assert recorded(pool) == EVERY
    with pool.connection() as db:
        tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables")}
    assert {"spend", "idempotency", "schema_version", "image_jobs", "images"} <= tables
    assert {"jobs", "job_inputs", "job_previews", "slots", "moved_jobs"} <= tables


def test_the_image_index_comes_on_top_of_version_1_and_keeps_the_books(pool):
    assert migrate(pool, MIGRATIONS[:1]) == [1]
    with pool.connection() as db:
        db.execute(
            "INSERT INTO spend (token, at, images, usd, state, model) "
            "VALUES ('alice', 1, 2, 0.5, 'settled', 'gpt-image-2')"
        )

    assert migrate(pool) == EVERY[1:]
    with pool.connection() as db:
        assert db.execute("SELECT token, images FROM spend").fetchall() == [("alice", 2)]
        db.execute("INSERT INTO image_jobs (job_id, stamp_ns, metadata) VALUES ('j', 1, '{}')")
        db.execute("INSERT INTO images (image_id, job_id, key) VALUES ('i', 'j', 'j/k')")
        names = {row[0] for row in db.execute("SELECT name FROM schema_version")}
    assert "image index" in names


def test_moved_jobs_come_on_top_of_version_3_and_keep_the_image_index(pool):
    assert migrate(pool, MIGRATIONS[:3]) == [1, 2, 3]
    with pool.connection() as db:
        db.execute("INSERT INTO image_jobs (job_id, stamp_ns, metadata) VALUES ('j', 1, '{}')")

    assert migrate(pool) == EVERY[3:]
    with pool.connection() as db:
        assert db.execute("SELECT job_id FROM image_jobs").fetchall() == [("j",)]
        db.execute("INSERT INTO moved_jobs (job_id) VALUES ('j')")


def test_kept_notes_of_version_5_become_notes_of_their_copies_renewed_now(pool):
    assert migrate(pool, MIGRATIONS[:5]) == [1, 2, 3, 4, 5]
    copy = '{"job_id": "j", "images": [{"id": "a"}, {"id": "b"}]}'
    with pool.connection() as db:
        db.execute(
            "INSERT INTO kept_jobs (job_id, metadata, kept_at) VALUES "
            "('j', %s, now() - interval '1 day'), ('odd', '{\"images\": 3}', now()), "
            "('nul', %s, now())",
            (copy, '{"prompt": "a \\u0000", "images": [{"id": "c"}]}'),
        )

    assert migrate(pool) == EVERY[5:]
    index = PostgresImageIndex(pool)
    assert index.kept("j") == json.loads(copy)  # counted as renewed when migrated
    with pool.connection() as db:
        rows = db.execute("SELECT job_id, copy_ids, abandoned FROM kept_jobs ORDER BY 1")
        assert rows.fetchall() == [("j", "a,b", False), ("nul", "", False), ("odd", "", False)]
    assert index.note_kept("j", json.loads(copy)) is True  # its keeper renews the same row
    with pool.connection() as db:
        assert db.execute("SELECT count(*) FROM kept_jobs").fetchone() == (3,)


def test_migrating_again_applies_nothing(pool):
    migrate(pool)
    assert migrate(pool) == []
    assert recorded(pool) == EVERY


def test_a_later_migration_is_applied_on_top_of_the_previous_version(pool):
    migrate(pool)
    later = [*MIGRATIONS, (999, "test_later", "CREATE TABLE later_test (id INTEGER)")]
    assert migrate(pool, later) == [999]
    assert recorded(pool) == [*EVERY, 999]


def test_the_jobs_migration_applies_on_top_of_version_1_and_keeps_its_rows(pool):
    assert migrate(pool, MIGRATIONS[:1]) == [1]
    with pool.connection() as db:
        db.execute(
            "INSERT INTO spend (token, at, images, usd, state, model) "
            "VALUES ('alice', 1.0, 2, 0.5, 'settled', 'gpt-image-1')"
        )

    assert migrate(pool) == EVERY[1:]

    with pool.connection() as db:
        assert db.execute("SELECT token, images FROM spend").fetchall() == [("alice", 2)]
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    assert recorded(pool) == EVERY


def test_a_process_migrating_while_another_does_waits_and_finds_it_done(pool):
    dsn = pool.conninfo
    assert isinstance(dsn, str)
    script = (
        "import sys; from psycopg_pool import ConnectionPool; "
        "from imagegen.books.migrations import migrate; "
        "pool = ConnectionPool(sys.argv[1], min_size=1, max_size=1); "
        "print(migrate(pool)); pool.close()"
    )
    with psycopg.connect(dsn, autocommit=True) as first:
        first.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        second = subprocess.Popen(
            [sys.executable, "-c", script, dsn],
            cwd=REPO,
            env={"PYTHONPATH": f"{REPO / 'image-gen'}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            waiting = False
            deadline = time.monotonic() + 20
            while not waiting and time.monotonic() < deadline and second.poll() is None:
                row = first.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                waiting = bool(row and row[0])
                time.sleep(0.05)
            assert waiting, "the second process never waited for the migration lock"
            assert apply_missing(first, MIGRATIONS) == EVERY  # the first one migrates
            first.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            out, err = second.communicate(timeout=30)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(10)
    assert second.returncode == 0, err
    assert out.strip() == "[]"  # it found everything done
    assert recorded(pool) == EVERY

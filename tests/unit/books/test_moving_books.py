"""The books' export and import methods that `python -m imagegen.migrate` moves them with:
the SQLite ledger and keys and the file job book into PostgreSQL (a real server), each item
once however often it runs, nothing newer in the target overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen.access.tokens import Limits
from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import CapExceeded
from imagegen.books.migrations import migrate
from imagegen.books.postgres import PostgresCapsBook, PostgresIdempotencyBook
from imagegen.books.postgres_jobs import PostgresJobBook
from imagegen.books.sqlite import SQLiteCapsBook, SQLiteIdempotencyBook
from tests.contract.test_job_book import a_record
from tests.support.books import BookClock
from tests.support.postgres import pool_for

pytestmark = pytest.mark.slow
OPEN = Limits()


def reserve(book, token: str, *, images: int, usd: float, limits: Limits = OPEN):
    return book.reserve(
        token, token_limits=limits, global_limits=OPEN, images=images, usd=usd, model="m"
    )


@pytest.fixture
def pool(tmp_path: Path):
    opened = pool_for(tmp_path)
    migrate(opened)
    return opened


def test_ledger_entries_move_once_and_take_a_later_settlement(tmp_path, pool):
    clock = BookClock()
    source = SQLiteCapsBook(tmp_path / "ledger.sqlite3", clock=clock)
    source.prepare()
    first = reserve(source, "alice", images=2, usd=0.1)
    clock.advance(1.5)
    second = reserve(source, "bob", images=1, usd=0.05)
    source.settle(first, usd=0.08, job_id="job-1")
    target = PostgresCapsBook(pool, clock=clock)

    assert target.import_entries(source.entries()) == (2, 0)
    assert target.import_entries(source.entries()) == (0, 2)
    source.settle(second, usd=0.04, job_id="job-2")
    assert target.import_entries(source.entries()) == (0, 2)

    for token in ("alice", "bob", None):
        assert target.usage(token) == source.usage(token)
    capped = Limits(images_per_hour=3)
    with pytest.raises(CapExceeded):
        reserve(target, "alice", images=2, usd=0, limits=capped)


def test_keys_move_once_replay_there_and_never_replace_a_newer_claim(tmp_path, pool):
    clock = BookClock()
    source = SQLiteIdempotencyBook(tmp_path / "ledger.sqlite3", clock=clock)
    SQLiteCapsBook(tmp_path / "ledger.sqlite3").prepare()  # the file's schema
    done = source.claim("alice", "k-1", "fp", lease=60, ttl=3600)
    source.complete("alice", "k-1", done.claim, status=200, headers={"X": "1"}, body=b"{}")
    running = source.claim("alice", "k-2", "fp", lease=60, ttl=3600)
    target = PostgresIdempotencyBook(pool, clock=clock)
    taken = target.claim("bob", "k-3", "fp", lease=60, ttl=3600)  # made on the target
    source.claim("bob", "k-3", "other", lease=60, ttl=3600)

    assert target.import_keys(source.stored_keys()) == (2, 0, 1)
    assert target.import_keys(source.stored_keys()) == (0, 2, 1)
    replay = target.claim("alice", "k-1", "fp", lease=60, ttl=3600)
    assert (replay.state, replay.status, replay.headers, replay.body) == (
        "replay",
        200,
        {"X": "1"},
        b"{}",
    )
    assert target.claim("alice", "k-2", "fp", lease=60, ttl=3600).state == "running"
    source.complete("alice", "k-2", running.claim, status=201, headers={}, body=b"[]")
    assert target.import_keys(source.stored_keys()) == (0, 2, 1)
    assert target.claim("alice", "k-2", "fp", lease=60, ttl=3600).status == 201
    target.complete("bob", "k-3", taken.claim, status=202, headers={}, body=b"")
    assert target.claim("bob", "k-3", "fp", lease=60, ttl=3600).status == 202


def test_jobs_move_on_their_list_with_inputs_previews_and_secret_held_by_nobody(tmp_path, pool):
    source = FileJobBook(tmp_path / "images", fsync=False)
    queued = a_record()
    source.submit(queued, webhook_secret="whsec", inputs={"image-0.png": b"png"}).release()
    ended = a_record()
    lease = source.submit(ended)
    source.save_preview(ended["job_id"], "p0-0.png", b"preview")
    ended = {**ended, "status": "completed", "webhook": {"status": "pending"}}
    source.write(lease, ended)
    source.end(lease, ended, webhook_pending=True)
    lease.release()
    target = PostgresJobBook(pool)

    moved = [source.export(job_id) for job_id in source.job_ids()]
    assert all(copy is not None and target.import_job(copy) for copy in moved)
    assert not any(copy is not None and target.import_job(copy) for copy in moved)

    assert target.active() == source.active() and target.delivering() == source.delivering()
    assert target.read(queued["job_id"]) == queued
    assert target.read_input(queued["job_id"], "image-0.png") == b"png"
    assert target.webhook_secret(queued["job_id"]) == "whsec"
    assert target.preview(ended["job_id"], "p0-0.png") == b"preview"
    assert not target.is_held(queued["job_id"])
    claimed = target.claim("replica", 5.0)
    assert claimed is not None and claimed.record == queued  # unfinished ones first

"""What only a JobBook with timed leases does, on a real PostgreSQL server: a lease that is
not renewed lapses, its owner's writes raise LeaseLost and change nothing, and another owner
takes the job; the running slots are one bound for books on separate pools (as replicas)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from imagegen.books.interfaces import LeaseLost, QueueLimitReached, new_marker
from imagegen.books.migrations import migrate
from imagegen.books.postgres_jobs import PostgresJobBook
from tests.support.books import race
from tests.support.postgres import pool_for
from tests.support.service import wait_for

SHORT = 0.5  # seconds: a lease that lapses quickly
LAPSED_WITHIN = 10.0


def a_book(where: Path, max_running: int = 2) -> PostgresJobBook:
    """A book on its own pool, as another process or replica opens it."""
    pool = pool_for(where)
    migrate(pool)
    return PostgresJobBook(pool, max_running=max_running)


def a_record() -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    return {"job_id": job_id, "marker": new_marker(job_id), "status": "queued", "webhook": None}


def test_an_unrenewed_lease_lapses_and_its_owners_writes_raise_lease_lost(tmp_path):
    book, other = a_book(tmp_path), a_book(tmp_path)
    record = a_record()
    lease = book.submit(
        record, owner="stalled", lease_seconds=SHORT, inputs={"image-1.png": b"input"}
    )
    assert other.claim("thief", 30) is None  # held

    wait_for(lambda: not other.is_held(record["job_id"]), LAPSED_WITHIN, "the lease lapsing")

    assert not lease.renew()
    running = {**record, "status": "running"}
    with pytest.raises(LeaseLost):
        book.write(lease, running)
    with pytest.raises(LeaseLost):
        book.end(lease, {**record, "status": "failed"}, webhook_pending=False)
    with pytest.raises(LeaseLost):
        book.finish(lease, record)
    assert other.read(record["job_id"]) == record  # none of them changed anything
    assert other.active() == [(record["marker"], record["job_id"])]
    assert other.read_input(record["job_id"], "image-1.png") == b"input"

    claimed = other.claim("thief", 30)
    assert claimed is not None and claimed.record == record
    lease.release()  # the lapsed owner letting go frees nothing of the new owner's
    assert other.is_held(record["job_id"])
    other.write(claimed.lease, running)
    assert book.read(record["job_id"]) == running
    with pytest.raises(LeaseLost):
        book.write(lease, record)
    claimed.lease.release()


def test_a_renewed_lease_does_not_lapse_and_a_released_one_cannot_be_renewed(tmp_path):
    book = a_book(tmp_path)
    record = a_record()
    lease = book.submit(record, owner="alive", lease_seconds=2.0)

    for _ in range(3):
        assert lease.renew()
    book.write(lease, {**record, "status": "running"})
    lease.release()

    assert not lease.renew()
    with pytest.raises(LeaseLost):
        book.write(lease, record)


def test_a_lease_of_another_job_writes_nothing(tmp_path):
    book = a_book(tmp_path)
    first, second = a_record(), a_record()
    lease = book.submit(first, owner="one", lease_seconds=30)
    other_lease = book.submit(second, owner="one", lease_seconds=30)

    with pytest.raises(LeaseLost):
        book.write(lease, {**second, "status": "running"})

    assert book.read(second["job_id"]) == second
    lease.release()
    other_lease.release()


def test_a_lapsed_slot_is_taken_by_another_and_its_old_holder_cannot_renew_it(tmp_path):
    first, second = a_book(tmp_path, max_running=1), a_book(tmp_path, max_running=1)
    slot = first.take_slot("stalled", SHORT)
    assert slot is not None
    assert second.take_slot("waiting", 30) is None

    taken = wait_for(lambda: second.take_slot("waiting", 30), LAPSED_WITHIN, "the slot lapsing")

    assert not slot.renew()
    slot.release()
    assert first.busy_slots() == 1 and first.take_slot("stalled", 30) is None
    taken.release()
    assert first.busy_slots() == 0


def test_the_running_slots_are_one_bound_for_two_books_on_two_pools(tmp_path):
    replica_a, replica_b = a_book(tmp_path, max_running=2), a_book(tmp_path, max_running=2)

    results = race(8, lambda n: (replica_a, replica_b)[n % 2].take_slot(f"racer-{n}", 30))

    taken = [slot for slot in results if slot is not None and not isinstance(slot, Exception)]
    assert len(taken) == 2, results
    assert replica_a.busy_slots() == replica_b.busy_slots() == 2
    assert replica_a.take_slot("late", 30) is None and replica_b.take_slot("late", 30) is None
    taken[0].release()
    again = replica_b.take_slot("late", 30)
    assert again is not None and replica_a.take_slot("later", 30) is None
    for slot in (taken[1], again):
        slot.release()
    assert replica_a.busy_slots() == 0


def test_the_waiting_jobs_are_one_bound_for_two_books_on_two_pools(tmp_path):
    replica_a, replica_b = a_book(tmp_path), a_book(tmp_path)
    records = [a_record() for _ in range(16)]

    def attempt(n: int) -> Any:
        return (replica_a, replica_b)[n % 2].submit(
            records[n],
            owner=f"replica-{n % 2}",
            lease_seconds=30,
            webhook_secret="whsec-1234",
            inputs={"image-1.png": b"input"},
            max_waiting=5,
        )

    results = race(16, attempt)

    refused = [n for n, got in enumerate(results) if isinstance(got, QueueLimitReached)]
    accepted = [n for n in range(16) if n not in refused]
    assert len(accepted) == 5 and len(refused) == 11, results
    for book in (replica_a, replica_b):
        assert {job for _, job in book.active()} == {records[n]["job_id"] for n in accepted}
    with replica_a.pool.connection() as db:
        row = db.execute(
            "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_inputs)"
        ).fetchone()
    assert row == (5, 5)  # nothing of the refused eleven: no row, no input
    for n in accepted:
        results[n].release()


def test_previews_and_inputs_go_with_the_removed_job(tmp_path):
    book = a_book(tmp_path)
    record = a_record()
    lease = book.submit(record, owner="one", lease_seconds=30, inputs={"image-1.png": b"in"})
    book.save_preview(record["job_id"], "p0-1.png", b"partial")
    ended = {**record, "status": "completed"}
    book.write(lease, ended)
    book.end(lease, ended, webhook_pending=False)  # drops the inputs under the lease
    assert book.read_input(record["job_id"], "image-1.png") is None
    lease.release()

    assert book.remove(record["job_id"])

    assert book.preview(record["job_id"], "p0-1.png") is None
    book.save_preview(record["job_id"], "p0-2.png", b"late")  # the job is gone: nothing kept
    assert book.preview(record["job_id"], "p0-2.png") is None

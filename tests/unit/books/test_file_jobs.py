"""The job records' sweep: old finished records go, unfinished and fresh ones stay, and one
process sweeps at a time."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

import pytest

from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import new_marker
from tests.support.scans import change_after_listing


@pytest.fixture
def records(tmp_path: Path) -> FileJobBook:
    return FileJobBook(tmp_path / "images", fsync=False, max_running=1)


def a_job(records: FileJobBook, status: str) -> str:
    """A job record as a runner leaves it: `completed` ones are off the active list."""
    job_id = str(uuid.uuid4())
    record = {"job_id": job_id, "marker": new_marker(job_id), "status": "queued"}
    lease = records.submit(record)
    records.write(lease, {**record, "status": status})
    if status == "completed":
        records.finish(lease, record)
    lease.release()
    return job_id


def test_finished_records_older_than_the_retention_are_removed(records):
    done, waiting = a_job(records, "completed"), a_job(records, "queued")

    assert records.sweep(retention=3600) == 0
    assert records.read(done) is not None

    assert records.sweep(retention=0) == 1
    assert records.read(done) is None
    assert records.read(waiting)["status"] == "queued"  # unfinished and listed: kept
    assert [job for _, job in records.active()] == [waiting]


def test_while_another_process_sweeps_this_one_skips_and_removes_nothing(records):
    done = a_job(records, "completed")
    fd = os.open(records.root / ".sweep", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweeper holds it
    try:
        assert records.sweep(retention=0) == 0
        assert records.read(done) is not None
    finally:
        os.close(fd)

    assert records.sweep(retention=0) == 1
    assert records.read(done) is None


def test_a_service_that_never_queued_a_job_has_nothing_to_sweep(records):
    assert records.sweep(retention=0) == 0
    assert not records.root.exists()


def test_an_ended_job_waiting_for_its_webhook_is_off_the_queue_and_kept(records):
    job_id = str(uuid.uuid4())
    record = {"job_id": job_id, "marker": new_marker(job_id), "status": "queued"}
    lease = records.submit(record)
    records.write(lease, {**record, "status": "completed"})

    records.end(lease, record, webhook_pending=True)
    lease.release()

    assert records.active() == []
    assert records.delivering() == [(record["marker"], job_id)]
    assert records.sweep(retention=0) == 0  # its webhook is still to be delivered
    delivery = records.claim()  # the next process delivers it
    assert delivery is not None and delivery.record["job_id"] == job_id
    records.finish(delivery.lease, record)
    delivery.lease.release()
    assert records.delivering() == []
    assert records.sweep(retention=0) == 1


def test_sweep_skips_records_another_process_removes_after_the_listing(records, monkeypatch):
    done, gone = a_job(records, "completed"), a_job(records, "completed")

    listings = change_after_listing(monkeypatch, records.root, lambda e: records.remove(gone))

    assert records.sweep(retention=0) == 1
    assert listings == [1]
    assert records.read(done) is None and records.read(gone) is None

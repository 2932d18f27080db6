"""The contract of a JobBook: a job is held by one owner at a time, a released or dead
owner's job is claimed again (once), writes are seen everywhere, the lists follow a job
to its end, and the running slots are bounded over every holder. Runs against every
implementation (conftest.JOBS)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from imagegen.books.interfaces import ClaimedJob, JobBook, Lease, QueueLimitReached, new_marker
from tests.support.books import process_holding, race
from tests.support.service import wait_for

LEASE = 1.0  # seconds: short, so a timed lease of a dead owner lapses quickly
# A dead owner's job is claimable within its lease, plus the time to notice.
RESUMED_WITHIN = LEASE + 10.0


def a_record(**fields: Any) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    return {
        "job_id": job_id,
        "marker": new_marker(job_id),
        "status": "queued",
        "webhook": None,
        "progress": {"images_done": 0},
        **fields,
    }


def submit(book: JobBook, owner: str = "submitter", **kwargs: Any) -> tuple[dict, Lease]:
    record = a_record()
    return record, book.submit(record, owner=owner, lease_seconds=LEASE, **kwargs)


def claim(book: JobBook, owner: str = "claimant") -> ClaimedJob | None:
    return book.claim(owner, LEASE)


def test_a_submitted_job_is_queued_readable_and_held_by_its_submitter(job_books):
    book, other = job_books(), job_books()

    record, lease = submit(book)

    assert other.read(record["job_id"]) == record
    assert other.active() == [(record["marker"], record["job_id"])]
    assert other.delivering() == []
    assert other.is_held(record["job_id"])
    assert lease.renew()
    assert claim(other) is None
    assert claim(book, owner="submitter") is None  # a holder's own claim skips its jobs
    lease.release()


def test_a_released_job_is_claimed_once_with_its_record(job_books):
    book = job_books()
    record, lease = submit(book)

    lease.release()

    assert not lease.renew()  # ended
    lease.release()  # again: nothing happens
    assert not book.is_held(record["job_id"])
    claimed = claim(job_books())
    assert claimed is not None
    assert claimed.record == record
    assert claimed.lease.renew()
    assert book.is_held(record["job_id"])
    assert claim(job_books(), owner="third") is None
    claimed.lease.release()


def test_jobs_are_claimed_oldest_submission_first(job_books):
    book = job_books()
    submitted = [submit(book) for _ in range(3)]
    for _, lease in reversed(submitted):
        lease.release()

    claimed = [claim(book) for _ in range(3)]

    assert [c.record["job_id"] for c in claimed if c] == [r["job_id"] for r, _ in submitted]
    assert [job for _, job in book.active()] == [r["job_id"] for r, _ in submitted]
    assert claim(book) is None
    for c in claimed:
        assert c is not None
        c.lease.release()


def test_racing_claimants_each_get_a_different_job_and_every_job_once(job_books):
    book = job_books()
    jobs = [submit(book) for _ in range(5)]
    for _, lease in jobs:
        lease.release()
    handles = [job_books() for _ in range(4)]  # as four processes would

    def take_all(n: int) -> list[ClaimedJob]:
        taken = []
        for _ in range(10):  # more than there are jobs: stops at the first None
            got = claim(handles[n % 4], owner=f"claimant-{n}")
            if got is None:
                break
            taken.append(got)
        return taken

    results = race(12, take_all)

    assert not [r for r in results if isinstance(r, Exception)], results
    claimed = [c.record["job_id"] for taken in results for c in taken]
    assert sorted(claimed) == sorted(r["job_id"] for r, _ in jobs)  # each once, none lost
    for taken in results:
        for c in taken:
            c.lease.release()


def test_the_job_of_an_owner_that_died_is_claimed_again(job_books):
    book = job_books()
    record = a_record()

    def take() -> Lease:
        return job_books().submit(record, owner="doomed", lease_seconds=LEASE)

    with process_holding(take) as kill:
        assert book.read(record["job_id"]) == record
        assert claim(book) is None  # its owner lives
        assert book.is_held(record["job_id"])
        kill()

        claimed = wait_for(lambda: claim(book), RESUMED_WITHIN, "the dead owner's job claimed")

    assert claimed.record["job_id"] == record["job_id"]
    assert claim(job_books(), owner="third") is None
    claimed.lease.release()


def test_a_renewed_lease_outlives_its_lease_seconds(job_books):
    book = job_books()
    record, lease = submit(book)

    for _ in range(3):  # 1.5 lease periods, renewed every half period
        time.sleep(LEASE / 2)
        assert lease.renew()

    assert claim(job_books()) is None
    assert book.is_held(record["job_id"])
    lease.release()


def test_writes_are_seen_by_every_reader_and_change_the_version(job_books):
    book, reader = job_books(), job_books()
    record, lease = submit(book)
    before = reader.version(record["job_id"])

    running = {**record, "status": "running", "progress": {"images_done": 1}}
    book.write(lease, running)

    assert reader.read(record["job_id"]) == running
    assert reader.version(record["job_id"]) not in (None, before)
    book.write(lease, {**running, "status": "completed"}, durable=True)
    assert reader.read(record["job_id"])["status"] == "completed"
    lease.release()


def test_an_ended_job_leaves_the_queue_and_is_not_claimed_again(job_books):
    book = job_books()
    record, lease = submit(book)
    ended = {**record, "status": "failed"}
    book.write(lease, ended)

    book.end(lease, ended, webhook_pending=False)
    lease.release()

    assert book.active() == [] and book.delivering() == []
    assert claim(job_books()) is None
    assert book.read(record["job_id"]) == ended  # the record stays until removed


def test_an_ended_job_with_its_webhook_pending_is_claimed_for_delivery(job_books):
    book = job_books()
    record, lease = submit(book)
    ended = {**record, "status": "completed", "webhook": {"status": "pending", "attempts": 0}}
    book.write(lease, ended)

    book.end(lease, ended, webhook_pending=True)
    lease.release()  # its process died before delivering

    assert book.active() == []
    assert book.delivering() == [(record["marker"], record["job_id"])]
    delivery = claim(job_books())
    assert delivery is not None and delivery.record == ended
    book.finish(delivery.lease, ended)
    delivery.lease.release()
    assert book.delivering() == [] and claim(book) is None


def test_inputs_and_the_webhook_secret_are_kept_with_the_job_until_dropped(job_books):
    book = job_books()
    image = b"\x89PNG\r\n\x1a\n-an-input-"
    record, lease = submit(book, webhook_secret="whsec-1234", inputs={"image-1.png": image})
    other = job_books()

    assert other.read_input(record["job_id"], "image-1.png") == image
    assert other.webhook_secret(record["job_id"]) == "whsec-1234"
    assert "whsec-1234" not in str(other.read(record["job_id"]))  # not in the record
    book.drop_inputs(record["job_id"])
    assert other.read_input(record["job_id"], "image-1.png") is None
    lease.release()


def test_previews_are_kept_under_their_names(job_books):
    book = job_books()
    record, lease = submit(book)

    book.save_preview(record["job_id"], "p0-1.png", b"partial")

    assert job_books().preview(record["job_id"], "p0-1.png") == b"partial"
    assert book.preview(record["job_id"], "p0-2.png") is None
    with pytest.raises(ValueError):
        book.save_preview(record["job_id"], "../job.json", b"x")
    lease.release()


def test_racing_bounded_submissions_admit_exactly_max_waiting_and_write_nothing_else(job_books):
    handles = [job_books() for _ in range(4)]  # as four processes would
    records = [a_record() for _ in range(16)]

    def attempt(n: int) -> Lease:
        return handles[n % 4].submit(
            records[n],
            owner=f"submitter-{n}",
            lease_seconds=LEASE,
            webhook_secret=f"whsec-{n}",
            inputs={"image-1.png": b"input"},
            max_waiting=5,
        )

    results = race(16, attempt)

    accepted = [records[n]["job_id"] for n, got in enumerate(results) if isinstance(got, Lease)]
    refused = [records[n]["job_id"] for n, got in enumerate(results) if not isinstance(got, Lease)]
    assert len(accepted) == 5, results
    assert all(isinstance(got, QueueLimitReached) for got in results if not isinstance(got, Lease))
    assert {job for _, job in job_books().active()} == set(accepted)
    reader = job_books()
    for job_id in refused:
        assert reader.read(job_id) is None
        assert reader.read_input(job_id, "image-1.png") is None
        assert reader.webhook_secret(job_id) is None
    assert claim(reader) is None  # the accepted are held, the refused were never listed
    for got in results:
        if isinstance(got, Lease):
            got.release()


def test_a_bounded_submission_counts_only_waiting_jobs_not_running_or_ended_ones(job_books):
    book = job_books(max_running=2)
    (first, first_lease), (second, second_lease) = submit(book), submit(book)
    with pytest.raises(QueueLimitReached) as full:
        submit(book, max_waiting=2)
    assert (full.value.waiting, full.value.limit) == (2, 2)
    assert len(book.active()) == 2  # the refused one left nothing

    slot = book.take_slot("runner", LEASE)  # the first starts: one waits now
    assert slot is not None
    running = {**first, "status": "running"}
    book.write(first_lease, running)
    third, third_lease = submit(book, max_waiting=2)
    with pytest.raises(QueueLimitReached):
        submit(book, max_waiting=2)

    ended = {**second, "status": "failed"}  # ended, still listed for a moment: not waiting
    book.write(second_lease, ended)
    fourth, fourth_lease = submit(book, max_waiting=2)
    with pytest.raises(QueueLimitReached):
        submit(book, max_waiting=2)
    book.end(second_lease, ended, webhook_pending=False)

    assert [job for _, job in book.active()] == [r["job_id"] for r in (first, third, fourth)]
    for lease in (slot, first_lease, second_lease, third_lease, fourth_lease):
        lease.release()


def test_waiting_counts_queued_jobs_of_every_holder_not_running_or_ended_ones(job_books):
    book, other = job_books(max_running=2), job_books(max_running=2)  # as two processes
    held = 30.0  # seconds: no timed lease lapses while the test runs, however slow
    records = [a_record() for _ in range(3)]
    leases = [
        (book, book, other)[n].submit(records[n], owner=f"submitter-{n}", lease_seconds=held)
        for n in range(3)
    ]
    assert all(handle.waiting(5) == 3 for handle in (book, other))
    assert (book.waiting(3), book.waiting(2)) == (3, 3)  # exact from the limit up too

    slot = book.take_slot("runner", held)  # the first starts: two wait
    assert slot is not None
    book.write(leases[0], {**records[0], "status": "running"})
    assert (other.waiting(5), other.waiting(2), other.waiting(1)) == (2, 2, 2)

    ended = {**records[1], "status": "completed"}  # still listed for a moment: not waiting
    book.write(leases[1], ended)
    assert (other.waiting(2), other.waiting(1)) == (1, 1)  # exact once the limit is reached
    assert other.waiting(5) < 5  # below it, a number below the limit
    book.end(leases[1], ended, webhook_pending=True)  # delivering its webhook: not waiting
    assert (other.waiting(5), other.waiting(1)) == (1, 1)

    for lease in (slot, *leases):
        lease.release()


def test_running_slots_are_bounded_over_every_holder(job_books):
    first, second = job_books(max_running=2), job_books(max_running=2)

    held = [first.take_slot("one", LEASE), second.take_slot("two", LEASE)]

    assert all(held)
    assert first.take_slot("one", LEASE) is None
    assert job_books(max_running=2).busy_slots() == 2
    held[0].release()
    assert second.busy_slots() == 1
    again = second.take_slot("two", LEASE)
    assert again is not None
    for slot in (held[1], again):
        slot.release()
    assert first.busy_slots() == 0


def test_racing_for_slots_never_holds_more_than_max_running(job_books):
    handles = [job_books(max_running=3) for _ in range(4)]

    results = race(12, lambda n: handles[n % 4].take_slot(f"racer-{n}", LEASE))

    taken = [slot for slot in results if slot is not None and not isinstance(slot, Exception)]
    assert len(taken) == 3, results
    assert handles[0].busy_slots() == 3
    for slot in taken:
        slot.release()


def test_counting_busy_slots_takes_no_slot_and_is_not_counted_as_a_running_job(job_books):
    """Counts made over and over by other processes (early refusals, submits): while nothing
    runs, every count says 0; and a job starting meanwhile always finds its slot."""
    counters = [job_books(max_running=1) for _ in range(2)]
    book, starter = job_books(max_running=1), job_books(max_running=1)
    stop = threading.Event()

    def count_in_a_loop(counter: JobBook) -> None:
        for _ in range(20_000):  # bounded; ends once the test is done
            if stop.is_set():
                return
            counter.busy_slots()

    threads = [
        threading.Thread(target=count_in_a_loop, args=(counter,), daemon=True)
        for counter in counters
    ]
    for thread in threads:
        thread.start()
    try:
        counts = [book.busy_slots() for _ in range(300)]
        refused = 0
        for n in range(100):
            slot = starter.take_slot(f"starter-{n}", LEASE)
            if slot is None:
                refused += 1
            else:
                slot.release()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert set(counts) == {0}
    assert refused == 0


def test_the_slot_of_an_owner_that_died_is_free_again(job_books):
    book = job_books(max_running=1)

    with process_holding(lambda: job_books(max_running=1).take_slot("doomed", LEASE)) as kill:
        assert book.take_slot("claimant", LEASE) is None
        assert book.busy_slots() == 1
        kill()

        slot = wait_for(
            lambda: book.take_slot("claimant", LEASE), RESUMED_WITHIN, "the dead owner's slot"
        )

    assert book.busy_slots() == 1
    slot.release()


def test_a_removed_job_is_gone_for_every_reader(job_books):
    book = job_books()
    record, lease = submit(book)
    ended = {**record, "status": "completed"}
    book.write(lease, ended)
    book.end(lease, ended, webhook_pending=False)
    lease.release()

    assert job_books().remove(record["job_id"])

    assert book.read(record["job_id"]) is None
    assert book.version(record["job_id"]) is None
    assert not book.remove(record["job_id"])


def test_versions_gives_every_existing_jobs_version_at_once_and_leaves_out_the_others(
    job_books,
):
    book, reader = job_books(), job_books()
    (kept, kept_lease), (written, written_lease), (removed, removed_lease) = (
        submit(book) for _ in range(3)
    )
    ids = [kept["job_id"], written["job_id"], removed["job_id"]]
    before = reader.versions(ids)
    one_by_one = {job_id: reader.version(job_id) for job_id in ids}

    book.write(written_lease, {**written, "status": "running"})
    ended = {**removed, "status": "completed"}
    book.write(removed_lease, ended)
    book.end(removed_lease, ended, webhook_pending=False)
    removed_lease.release()
    assert book.remove(removed["job_id"])
    unknown = str(uuid.uuid4())
    after = reader.versions([*ids, unknown, "../../etc", "not-a-uuid", "", "0" * 36])

    assert before == one_by_one  # the same versions as `version` gives, one for each job
    assert set(after) == {kept["job_id"], written["job_id"]}  # removed, unknown, malformed: absent
    assert after[kept["job_id"]] == before[kept["job_id"]] == reader.version(kept["job_id"])
    assert after[written["job_id"]] != before[written["job_id"]]
    assert after[written["job_id"]] == reader.version(written["job_id"])
    shouted = kept["job_id"].upper()  # a UUID in capitals names the same job, as for `read`
    assert reader.versions([shouted]) == {shouted: after[kept["job_id"]]}
    assert reader.versions([]) == {}
    assert reader.versions(["not-a-uuid", unknown]) == {}
    kept_lease.release()
    written_lease.release()


@pytest.mark.parametrize("job_id", ["../../etc", "not-a-uuid", "", "0" * 36])
def test_ids_that_are_not_uuids_name_no_job(job_books, job_id):
    book = job_books()

    assert book.read(job_id) is None
    assert book.version(job_id) is None
    assert book.versions([job_id]) == {}
    assert not book.remove(job_id)
    assert book.preview(job_id, "p0-1.png") is None


def test_sweeping_removes_old_finished_jobs_and_keeps_unfinished_ones(job_books):
    book = job_books()
    done, done_lease = submit(book)
    ended = {**done, "status": "completed"}
    book.write(done_lease, ended)
    book.finish(done_lease, ended)
    done_lease.release()
    waiting, waiting_lease = submit(book)
    waiting_lease.release()

    assert book.sweep(retention=3600) == 0
    assert book.sweep(retention=0) == 1

    assert book.read(done["job_id"]) is None
    assert book.read(waiting["job_id"]) == waiting
    assert [job for _, job in book.active()] == [waiting["job_id"]]

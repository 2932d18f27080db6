"""The job runner: each process's share of the asynchronous jobs.

Each Gunicorn worker has one JobRunner: a dispatcher thread and one daemon thread per
running job. A job is run by the process that accepted it; it holds the job's lease (a
JobBook's: a flock with the files, a timed row lease in PostgreSQL) until the job is finished
and its webhook delivered. A third thread renews this process's leases every third of
`IMAGE_GEN_JOB_LEASE_SECONDS`, whatever the dispatcher is doing, so a timed lease never
lapses while its process lives and can reach the book. At most `IMAGE_GEN_MAX_RUNNING_JOBS`
jobs run at once over all processes (slot leases); the rest wait, in submission order per
process.
A job that has ended leaves the queue at once: delivering its webhook (retries, backoff)
takes neither a queue place nor a slot.

Every dispatcher also looks, every `IMAGE_GEN_JOB_POLL_INTERVAL` seconds and at start-up,
for unfinished jobs nobody holds, and claims them: their process died (SIGKILL, a crash, a
recycled worker, a restarted container). A queued one is simply run. A running one is
started again if it has been started fewer than `IMAGE_GEN_JOB_ATTEMPTS` times (the
interrupted call may already have been billed), else failed with JOB_INTERRUPTED. How a
job is rebuilt from its record is `jobs.resumable`'s table; an edit or variation keeps its
input images with its record until it ends, so it is resumed the same way. With timed
leases a dead process's jobs are claimed within the lease plus one poll interval.

A lease that has ended under a live process (not renewed for the lease: the database was
out of reach, or the process was frozen) means another process may run the job now: the
book refuses this one's writes (LeaseLost), and the runner lets go of the job at once,
writing nothing more. Its images are stored only if the lease still holds when the upstream
has answered (looked at just before storing them).

A run that meets the database out of reach before it has asked the upstream for anything
(the caps' reservation, the book, the index) has cost nothing: the job is queued again, the
start not counted, and runs once the database is back. A run whose outcome cannot be written
(the database went away meanwhile) is let go of unended; whoever takes the job up carries on
from its stored record.

A job whose images were made while the image store (or its database) was out of reach is
`storing`: its images wait in this replica's spool (storage/spool.py) and the job completes
once they are stored. It holds no running slot meanwhile, and is never run again: a process
that adopts it (after a restart) waits for its images the same way, as does one that finds
a job's images in this replica's spool while its record still says running (its process went
away before the database took `storing`). If the spool sets its
entry aside as damaged, the images are never stored: the job fails with JOB_INTERRUPTED.
If no spool has been heard from for the job for spool.KEPT_FOR seconds (the replica keeping
its images is gone, with its disk), whoever waits for it abandons their note and makes the
job again from its kept inputs (paid again: nothing else can store the images); a keeper
that comes back then sets its copy aside (storage/spool.py), so the job is stored once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from imagegen import clock
from imagegen.access.tokens import ANONYMOUS_CALLER, Caller
from imagegen.books.interfaces import (
    FINAL,
    JobBook,
    Lease,
    LeaseLost,
    QueueLimitReached,
    new_marker,
)
from imagegen.clock import utc_now
from imagegen.errors import (
    DatabaseUnavailable,
    JobInterrupted,
    JobKept,
    QueueFull,
    ServiceError,
)
from imagegen.imaging.core import Admission, ImageMaker, Produce
from imagegen.imaging.request import ImageRequest
from imagegen.jobs import webhooks
from imagegen.jobs.answers import completed_body, emit, pending_body, status_data
from imagegen.jobs.progress import JobProgress
from imagegen.jobs.resumable import REBUILDERS
from imagegen.settings import Settings
from imagegen.storage.spool import KEPT_FOR
from imagegen.upstream.providers import Generation
from imagegen.upstream.retry import Deadline

log = logging.getLogger(__name__)
_SWEEP_EVERY = 3600.0
_STORING_PAUSE = 10.0  # at most, between looks at whether a storing job's images are stored
_NOT_KEPT = (
    "The images this job made (and that were billed) could not be kept: the copy this "
    "service held while the image store was out of reach is damaged, so they were never "
    "stored (the copy is set aside in the spool's .damaged folder for the operator). "
    "Submit the job again."
)
_KEEPER_LOST = (
    "The images this job made were kept by a replica that has not been heard from since "
    "(lost, with its disk), and this job has been started as often as it may be; it is not "
    "started again. Submit it again."
)


def _queue_full(waiting: int) -> QueueFull:
    return QueueFull(
        f"{waiting} asynchronous jobs are waiting, the most this service queues; "
        "try again after Retry-After seconds.",
        retry_after=30,
    )


def _warnings(image_request: ImageRequest) -> dict[str, Any]:
    warnings = image_request.model.warnings(clock.today())
    return {"warnings": warnings} if warnings else {}


@dataclass(eq=False)
class _Job:
    """A job this process owns: queued here, running here, or finishing its webhook."""

    record: dict[str, Any]
    lease: Lease
    image_request: ImageRequest | None = None
    produce: Produce | None = None
    caller: Caller | None = None
    admission: Admission | None = None
    asked_upstream: bool = False  # this run has called the upstream (it may be billed)
    ended: threading.Event = field(default_factory=threading.Event)  # completed or failed
    done: threading.Event = field(default_factory=threading.Event)  # and let go of
    mutex: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_id(self) -> str:
        job_id: str = self.record["job_id"]
        return job_id


class JobRunner:
    """One process's share of the asynchronous jobs: its queue, its running jobs, adoption."""

    def __init__(self, records: JobBook, maker: ImageMaker, settings: Settings) -> None:
        self.records = records
        self.maker = maker
        self.store = maker.store
        self.settings = settings
        self._lock = threading.Lock()
        self._owned: dict[str, _Job] = {}
        self._queue: list[_Job] = []  # owned and waiting for a slot, oldest marker first
        self._slots: set[Lease] = set()  # the slots this process's running jobs hold
        self._wake = threading.Event()
        self._stop = threading.Event()  # set on shutdown: start nothing, cut waits short
        self._thread: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        self._pid: int | None = None
        self._last_sweep = 0.0
        # The store was swept as this process started (build_services): next, in an hour.
        self._last_store_sweep = time.monotonic()
        # How long a lease lives unrenewed where leases are timed, and how often the lease
        # thread renews them: a dead process's jobs are free at most `lease_seconds` after it
        # died, and a live one has two more renewals before a lease lapses if one fails.
        self.lease_seconds = settings.job_lease_seconds
        self.renew_every = self.lease_seconds / 3

    def start(self) -> None:
        """Run jobs in this process (Gunicorn's post_worker_init): adopt at once any job left
        unfinished and any webhook left undelivered by a process that died."""
        self.ensure_started()

    @property
    def owner(self) -> str:
        """Who holds this process's leases: the host and the process (after a fork too)."""
        return f"{socket.gethostname()}/{os.getpid()}"

    # --- accepting --------------------------------------------------------------------

    def check_capacity(self) -> None:
        """QueueFull when `max_queued_jobs` jobs already wait (over every process).

        A cheap early refusal, before the caps are reserved and the inputs prepared; the
        bound that holds is `submit`'s, counted and inserted in one step by the book."""
        limit = self.settings.max_queued_jobs
        waiting = self.records.waiting(limit)
        if waiting >= limit:
            raise _queue_full(waiting)

    def submit(
        self,
        image_request: ImageRequest,
        *,
        operation: str,
        produce: Produce | None,
        source: dict[str, Any] | None,
        caller: Caller,
        admission: Admission,
        webhook: tuple[str, str | None] | None,
        inputs: dict[str, bytes] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Record and queue a job this process will run; return its record. `inputs` are
        kept with the record (see JobBook.submit) for the operation's rebuilder. QueueFull,
        and nothing recorded, when `max_queued_jobs` jobs wait already (over every process)."""
        job_id = str(uuid.uuid4())
        now = utc_now()
        record: dict[str, Any] = {
            "job_id": job_id,
            "status": "queued",
            "operation": operation,
            "created_at": now,
            "updated_at": now,
            "marker": new_marker(job_id),
            "request": image_request.as_dict(),
            "source": source,
            "request_id": request_id,
            "caller": caller.name,
            "resumable": (produce is None or inputs is not None) and operation in REBUILDERS,
            "attempts": 0,
            "runner": None,
            "progress": {"images_done": 0, "count": image_request.count, "partial_images": 0},
            "previews": [],
            "events": [],
            "error": None,
            **_warnings(image_request),
            "webhook": None
            if webhook is None
            else {"url": webhook[0], "status": "pending", "attempts": 0, "error": None},
        }
        emit(record, "status", status_data(record))
        try:
            lease = self.records.submit(
                record,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                webhook_secret=webhook[1] if webhook else None,
                inputs=inputs,
                max_waiting=self.settings.max_queued_jobs,
            )
        except QueueLimitReached as full:
            raise _queue_full(full.waiting) from None
        job = _Job(record, lease, image_request, produce, caller, admission)
        with self._lock:
            self._owned[job_id] = job
            self._queue.append(job)
        log.info(
            "job queued request_id=%s job_id=%s operation=%s model=%s count=%d",
            record["request_id"],
            job_id,
            operation,
            image_request.model.id,
            image_request.count,
        )
        self.ensure_started()
        self._wake.set()
        return record

    def wait(self, job_id: str, timeout: float) -> bool:
        """Wait up to `timeout` s for a job this process owns to end; True if it has."""
        with self._lock:
            job = self._owned.get(job_id)
        return True if job is None else job.ended.wait(timeout)

    def notice(self, record: dict[str, Any]) -> None:
        """A reader saw this unfinished job: if nobody holds it, adopt it now."""
        if record["status"] not in FINAL and not self.records.is_held(record["job_id"]):
            self.ensure_started()
            self._wake.set()

    # --- the dispatcher ---------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the dispatcher and the lease threads (again, after a fork) unless shutting
        down."""
        with self._lock:
            if self._stop.is_set():
                return
            alive = self._thread is not None and self._thread.is_alive()
            if alive and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="imagegen-jobs", daemon=True)
            self._thread.start()
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="imagegen-leases", daemon=True
                )
                self._renewer.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except DatabaseUnavailable:
                log.warning("job dispatcher: database unavailable; trying again next tick")
            except Exception:
                log.exception("job dispatcher: unexpected error")
            self._wake.wait(self.settings.job_poll_interval)
            self._wake.clear()

    def _renew_loop(self) -> None:
        """Renew the leases every `renew_every` s; after shutdown, until the last job is let go."""
        while True:
            time.sleep(self.renew_every)
            with self._lock:
                holding = bool(self._owned or self._slots)
            if self._stop.is_set() and not holding:
                return
            try:
                self._renew_leases()
            except Exception:
                log.exception("job leases: unexpected error")

    def _tick(self) -> None:
        self._start_queued()
        self._adopt_orphans()
        self._start_queued()
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY or not self._last_sweep:
            self._last_sweep = time.monotonic()
            removed = self.records.sweep(self.settings.job_retention)
            if removed:
                log.info("job records swept: %d", removed)
        if time.monotonic() - self._last_store_sweep > _SWEEP_EVERY:
            # The store's leftovers too, hourly: a worker's boot sweep finds a database
            # whose schema is not ready yet (it is migrated in the background) and stops.
            self._last_store_sweep = time.monotonic()
            removed = self.store.sweep()
            if removed:
                log.info("store leftovers swept: %d", removed)

    def _start_queued(self) -> None:
        """Start this process's queued jobs, oldest first, while slots are free."""
        while not self._stop.is_set():
            with self._lock:
                if not self._queue:
                    return
                job = self._queue[0]
            slot = self.records.take_slot(self.owner, self.lease_seconds)
            if slot is None:
                return
            with self._lock:
                queued = job in self._queue  # shutdown() may have let go of it meanwhile
                if queued:
                    self._queue.remove(job)
                    self._slots.add(slot)
            if not queued:
                slot.release()
                continue
            threading.Thread(
                target=self._run,
                args=(job, slot),
                name=f"imagegen-job-{job.job_id[:8]}",
                daemon=True,
            ).start()

    def _adopt_orphans(self) -> None:
        """Take every unfinished job, and every undelivered webhook, whose process is gone."""
        claimed_now: set[str] = set()
        while not self._stop.is_set():
            claimed = self.records.claim(self.owner, self.lease_seconds)
            if claimed is None:
                return
            job_id = claimed.record["job_id"]
            with self._lock:
                again = job_id in claimed_now or job_id in self._owned
            if again:  # let go of already this tick (it could not finish): next tick
                claimed.lease.release()
                return
            claimed_now.add(job_id)
            job = _Job(claimed.record, claimed.lease)
            try:
                self._adopt(job)
            except LeaseLost as exc:
                self._let_go(job, exc)
            except Exception:
                log.exception("job %s: cannot adopt it; it stays for a later try", job_id)
                self._let_go(job, None)

    def _renew_leases(self) -> None:
        """Renew the leases of the jobs and slots this process holds. A queued job whose
        lease has ended is let go of (another process may have it now); a running one stops
        at its next write (LeaseLost). A book out of reach is tried again next time."""
        with self._lock:
            jobs = list(self._owned.values())
            slots = list(self._slots)
        for job in jobs:
            try:
                renewed = job.lease.renew()
            except DatabaseUnavailable:
                log.warning("job lease not renewed job_id=%s: database unavailable", job.job_id)
                continue
            if renewed:
                continue
            with self._lock:
                owned = self._owned.get(job.job_id) is job
                queued = owned and job in self._queue
            if queued:
                self._let_go(job, LeaseLost("its lease lapsed while it waited for a slot"))
            elif owned:
                log.error("lease lost job_id=%s: another process may run it", job.job_id)
        for slot in slots:
            try:
                renewed = slot.renew()
            except DatabaseUnavailable:
                log.warning("running slot lease not renewed: database unavailable")
                continue
            if not renewed and slot in self._slots:
                log.error("running slot lease lost: more jobs than the limit may run")

    def _let_go(self, job: _Job, lost: LeaseLost | None) -> None:
        """Forget a job without writing it (its lease has ended: `lost`, or it could not be
        taken on); whoever holds it next, or claims it, carries on."""
        if lost is not None:
            log.warning(
                "lease lost job_id=%s: %s; this process lets go of it without writing it",
                job.job_id,
                lost,
            )
        with self._lock:
            if self._owned.get(job.job_id) is job:
                del self._owned[job.job_id]
            if job in self._queue:
                self._queue.remove(job)
        job.lease.release()
        job.ended.set()
        job.done.set()

    def _adopt(self, job: _Job) -> None:
        """Take on a claimed job; if this process is shutting down meanwhile, let go of it
        (shutdown lets go of the queued ones it sees, and this one it would not)."""
        record = job.record
        status = record["status"]
        with self._lock:
            stopping = self._stop.is_set()
            if not stopping:
                self._owned[job.job_id] = job
        if stopping:
            job.lease.release()
            return
        log.warning(
            "adopting job job_id=%s status=%s attempts=%d (its process is gone)",
            job.job_id,
            status,
            record["attempts"],
        )
        stored = self.store.job_metadata(job.job_id) if status not in FINAL else None
        if stored is not None:  # its process died between storing the images and saying so
            self._complete(job, stored)
        elif status == "running" and not self.store.give_up_kept(job.job_id, stale=False):
            # Its images are in a replica's spool: its process died (or let go of it) before
            # it could record `storing` (the database being away, or just then). Never made
            # again while a note of them is there, even one not renewed lately (its keeper
            # may have been cut off with the database): the spool that keeps them stores
            # them, after a restart too.
            status = "storing"
            self._update(job, lambda r: r.update(status=status), event="status", durable=True)
        elif status == "running" and record["attempts"] >= self.settings.job_attempts:
            self._fail(
                job,
                JobInterrupted(
                    f"The process running this job stopped (killed, crashed or restarted) "
                    f"after it had been started {record['attempts']} time(s); it is not "
                    "started again, and any images it made were not kept. Submit it again."
                ),
            )
        if record["status"] in FINAL:
            threading.Thread(target=self._finish, args=(job,), daemon=True).start()
            return
        if status == "storing":  # made and paid for: kept by its replica until stored
            threading.Thread(target=self._finish_when_stored, args=(job,), daemon=True).start()
            return
        if status == "running":
            self._update(
                job,
                lambda r: r.update(status="queued", runner=None),
                event="status",
                durable=True,
            )
        self._enqueue(job)

    def _enqueue(self, job: _Job) -> None:
        """Queue an owned job in marker order; if shutting down, let go of it instead."""
        with self._lock:
            stopping = self._stop.is_set()
            if stopping:
                self._owned.pop(job.job_id, None)
            else:
                self._queue.append(job)
                self._queue.sort(key=lambda queued: queued.record["marker"])
        if stopping:
            job.lease.release()
            job.done.set()  # shutdown may be waiting for it

    # --- running ----------------------------------------------------------------------

    def _run(self, job: _Job, slot: Lease) -> None:
        lost: LeaseLost | None = None
        storing = again = unrecorded = False
        job.asked_upstream = False
        try:
            try:
                runner = {"pid": os.getpid(), "host": socket.gethostname()}
                self._update(
                    job,
                    lambda r: r.update(status="running", attempts=r["attempts"] + 1, runner=runner),
                    event="status",
                    durable=True,
                )
                metadata = self._make(job)
            except LeaseLost:
                raise
            except JobKept:
                storing = True
                self._update(
                    job, lambda r: r.update(status="storing"), event="status", durable=True
                )
            except DatabaseUnavailable as exc:
                if job.asked_upstream:
                    self._failed(job, exc)
                else:  # a passing outage before anything was asked (or paid) for
                    again = True
            except Exception as exc:
                self._failed(job, exc)
            else:
                self._complete(job, metadata)
        except LeaseLost as exc:
            lost = exc
        except DatabaseUnavailable:
            # The outcome is in memory only: ending the job now would take it off the
            # queue with its stored record unfinished. Whoever takes it up carries on.
            unrecorded = True
        except Exception:
            log.exception("job %s: cannot record its progress", job.job_id)
        finally:
            with self._lock:
                self._slots.discard(slot)
            slot.release()
            if not again:  # it is tried again at the next poll, not at once
                self._wake.set()  # a slot is free
        if lost is not None:
            self._let_go(job, lost)
        elif storing:
            self._finish_when_stored(job)
        elif again:
            self._again(job)
        elif unrecorded:
            log.warning("job %s: database unavailable; its outcome is not recorded", job.job_id)
            self._let_go(job, None)
        else:
            self._finish(job)

    def _failed(self, job: _Job, exc: Exception) -> None:
        """Fail the job for `exc`, unless its images are stored already: a previous owner
        whose lease lapsed (the database was out of its reach) may have stored them while
        this one made them again; they stand."""
        stored = self.store.job_metadata(job.job_id)
        if stored is not None:
            log.warning("job %s: stored by a previous owner; completed", job.job_id)
            self._complete(job, stored)
        elif isinstance(exc, ServiceError):
            self._fail(job, exc)
        else:
            log.exception("job %s failed unexpectedly", job.job_id, exc_info=exc)
            self._fail(job, ServiceError("Internal error; see the service log."))

    def _again(self, job: _Job) -> None:
        """Queue again a job whose run met the database out of reach before the upstream
        was asked: not failed, and the start not counted (nothing can have been billed).
        It starts once a running slot can be taken, so once the database is back; if its
        lease lapses meanwhile it is let go of, and whoever claims it runs it."""
        log.warning(
            "job %s: database unavailable before its upstream call; queued again", job.job_id
        )

        def mutate(record: dict[str, Any]) -> None:
            record.update(status="queued", attempts=record["attempts"] - 1, runner=None)

        try:
            self._update(job, mutate, event="status", durable=True)
        except DatabaseUnavailable:
            pass  # the record in memory is written when the job starts again
        except LeaseLost as exc:
            self._let_go(job, exc)
            return
        self._enqueue(job)

    def _finish_when_stored(self, job: _Job) -> None:
        """Complete and finish a `storing` job once the store holds its images (this
        replica's spool flushes them), or fail it once the spool has set their entry aside
        as damaged (they are never stored). On shutdown first, or if the database fails the
        write, let go of it: it stays storing, and whoever adopts it waits for the images
        the same way, never making them again while a spool keeps them. If no spool has
        been heard from for it for spool.KEPT_FOR seconds, it is made again (_keeper_lost)."""
        pause = 1.0
        heard = time.monotonic()  # when a spool was last known to keep the job
        while not self._stop.is_set():
            lost = False
            try:
                metadata = self.store.job_metadata(job.job_id)
                damaged = metadata is None and self.store.kept_damaged(job.job_id)
                if metadata is None and not damaged:
                    if self.store.kept_job(job.job_id) is not None:
                        heard = time.monotonic()
                    elif time.monotonic() - heard >= KEPT_FOR:  # waited itself, not only
                        # the note's age: after the database was away every note is old
                        lost = self.store.give_up_kept(job.job_id, stale=True)
                        if lost:  # stored just before the note was given up?
                            metadata = self.store.job_metadata(job.job_id)
                            lost = metadata is None
            except ServiceError:  # the database holding the index is still away
                metadata, damaged = None, False
                heard = time.monotonic()  # nobody could renew a note meanwhile
            if lost:
                self._keeper_lost(job)
                return
            if metadata is not None or damaged:
                try:
                    if metadata is not None:
                        self._complete(job, metadata)
                    else:
                        self._fail(job, JobInterrupted(_NOT_KEPT))
                except LeaseLost as exc:
                    self._let_go(job, exc)
                    return
                except DatabaseUnavailable:
                    break
                self._finish(job)
                return
            self._stop.wait(pause)
            pause = min(pause * 2, _STORING_PAUSE)
        self._let_go(job, None)

    def _keeper_lost(self, job: _Job) -> None:
        """Make a `storing` job again whose images no spool keeps any more (their replica
        was lost): queued again, it is rebuilt from its kept inputs (a job whose inputs were
        not kept then fails, as any resumed one), unless it has been started too often."""
        record = job.record
        log.warning(
            "job %s: no replica has kept its images for %.0f s; it is made again",
            job.job_id,
            KEPT_FOR,
        )
        try:
            if record["attempts"] >= self.settings.job_attempts:
                self._fail(job, JobInterrupted(_KEEPER_LOST))
                self._finish(job)
                return
            self._update(
                job,
                lambda r: r.update(status="queued", runner=None),
                event="status",
                durable=True,
            )
        except LeaseLost as exc:
            self._let_go(job, exc)
            return
        except DatabaseUnavailable:
            self._let_go(job, None)
            return
        self._enqueue(job)

    def _make(self, job: _Job) -> dict[str, Any]:
        """Make and store the job's images (or find them stored by a runner that died)."""
        record = job.record
        stored = self.store.job_metadata(job.job_id)
        if stored is not None:
            return stored
        image_request, caller, admission = job.image_request, job.caller, job.admission
        produce = job.produce
        if image_request is None:
            rebuild = REBUILDERS.get(record["operation"]) if record.get("resumable") else None
            if rebuild is None:
                raise JobInterrupted(
                    f"The process that accepted this {record['operation']} job stopped before "
                    "it finished, and its inputs were not kept, so it cannot be resumed. "
                    "Submit it again."
                )
            rebuilt = rebuild(record, self.settings, self.records, self.maker)
            image_request, produce = rebuilt.request, rebuilt.produce
            caller = self._restore_caller(record.get("caller"))  # `make` admits it again
        assert caller is not None  # a job submitted here has its caller; a rebuilt one too
        produce = produce or self._progressive(job) or self.maker.provider.generate
        return self.maker.make(
            image_request,
            caller=caller,
            produce=self._while_held(job, produce),
            operation=record["operation"],
            source=record.get("source"),
            admission=admission,
            job_id=job.job_id,
            request_id=record.get("request_id"),
            before_store=partial(self._not_kept_meanwhile, job) if record["attempts"] > 1 else None,
        )

    def _while_held(self, job: _Job, produce: Produce) -> Produce:
        """`produce`, then a look at the lease before the images are stored: if it has
        ended, another process may be making them, so this one stores nothing (LeaseLost;
        the reservation is released). A book out of reach cannot say: the images, paid for,
        are stored, and the record follows once it is back (or its next owner finds them)."""

        def produced(request: ImageRequest, deadline: Deadline) -> Generation:
            job.asked_upstream = True
            generation = produce(request, deadline)
            try:
                held = job.lease.renew()
            except DatabaseUnavailable:
                held = True
            if not held:
                raise LeaseLost("its lease lapsed while the upstream made its images")
            return generation

        return produced

    def _not_kept_meanwhile(self, job: _Job) -> None:
        """Raise JobKept if images an earlier start made have come to light while this one
        made them again: stored, or noted by a spool that keeps them (its replica had lost
        the database when it kept them, so its note came only after the job was taken up
        here). Those stand; these, made again (and billed: their cost is settled), are not
        stored. A database out of reach cannot say: these are stored."""
        try:
            earlier = self.store.job_metadata(job.job_id) or self.store.kept_job(job.job_id)
        except ServiceError:
            return
        if earlier is not None:
            log.warning(
                "job %s: the images an earlier start made were kept after all; the ones "
                "made again are not stored",
                job.job_id,
            )
            images = [image.get("id") for image in earlier.get("images") or []]
            raise JobKept(
                "Kept by the replica that made it first.",
                job_id=job.job_id,
                images=[str(image_id) for image_id in images],
                retry_after=1,
            )

    def _progressive(self, job: _Job) -> Produce | None:
        """A generation that reports previews and finished images as they come."""
        if job.record["operation"] != "generate":
            return None
        progress = JobProgress(self.records, job.job_id, lambda mutate: self._update(job, mutate))
        provider = self.maker.provider
        partials = self.settings.partial_images
        return lambda request, deadline: provider.generate_with_progress(
            request, deadline, progress, partials
        )

    def _restore_caller(self, name: str | None) -> Caller:
        """The caller of an adopted job, from its token's name (anonymous on an open service)."""
        tokens = self.settings.tokens
        if tokens is None or name is None:
            return ANONYMOUS_CALLER
        for token in tokens:
            if token.name == name:
                return Caller(
                    token.name, admin=token.admin, limits=token.limits, authenticated=True
                )
        raise JobInterrupted(
            "The process running this job stopped, and the client token that submitted it is "
            "no longer configured, so it is not resumed."
        )

    def _complete(self, job: _Job, metadata: dict[str, Any]) -> None:
        body = completed_body(metadata, job.record)
        count = len(metadata.get("images", []))

        def mutate(record: dict[str, Any]) -> None:
            record["status"] = "completed"
            record["progress"]["images_done"] = count
            record["error"] = None
            emit(record, "status", status_data(record))
            emit(record, "completed", body)

        self._update(job, mutate, durable=True)
        job.ended.set()

    def _fail(self, job: _Job, exc: ServiceError) -> None:
        error = {"error": exc.message, "code": exc.code, "http_status": exc.status}
        error.update(exc.details)
        log.info("job failed job_id=%s code=%s", job.job_id, exc.code)

        def mutate(record: dict[str, Any]) -> None:
            record["status"] = "failed"
            record["error"] = error
            emit(record, "status", status_data(record))
            emit(record, "failed", pending_body(record))

        self._update(job, mutate, durable=True)
        job.ended.set()

    def _finish(self, job: _Job) -> None:
        """Take the ended job off the queue, deliver its webhook, and let go of it."""
        try:
            hook = job.record.get("webhook")
            pending = isinstance(hook, dict) and hook.get("status") == "pending"
            self.records.end(job.lease, job.record, webhook_pending=pending)
            self.records.drop_inputs(job.job_id)
            if pending and not self._deliver(job):
                return  # interrupted by shutdown: the next process delivers it
            self.records.finish(job.lease, job.record)
        except LeaseLost as exc:
            log.warning("lease lost job_id=%s: %s; its next owner finishes it", job.job_id, exc)
        except Exception:
            log.exception("job %s: cannot finish", job.job_id)
        finally:
            with self._lock:
                self._owned.pop(job.job_id, None)
            job.lease.release()
            job.ended.set()
            job.done.set()

    def _deliver(self, job: _Job) -> bool:
        """Send the webhook; False if shutdown interrupted it."""
        record = job.record
        hook = record["webhook"]
        secret = self.records.webhook_secret(job.job_id) or self.settings.webhook_secret
        status = record["status"]
        if status == "completed":
            metadata = self.store.job_metadata(job.job_id)
            data = completed_body(metadata, record) if metadata else pending_body(record)
        else:
            data = pending_body(record)
        if secret is None:
            result = webhooks.Delivery(False, 0, "no signing secret is configured any more")
        else:
            result = webhooks.deliver(
                hook["url"],
                secret,
                f"job_{job.job_id}_{status}",
                webhooks.payload(f"job.{status}", data, utc_now()),
                hosts=self.settings.webhook_hosts,
                attempts=max(1, self.settings.webhook_attempts - hook["attempts"]),
                backoff=self.settings.webhook_backoff,
                timeout=self.settings.webhook_timeout,
                stop=self._stop,
            )
        log.info(
            "webhook job_id=%s delivered=%s attempts=%d error=%s",
            job.job_id,
            result.delivered,
            result.attempts,
            result.error,
        )

        def mutate(record: dict[str, Any]) -> None:
            hook = record["webhook"]
            hook["attempts"] += result.attempts
            hook["error"] = result.error
            if not result.interrupted:
                hook["status"] = "delivered" if result.delivered else "failed"

        self._update(job, mutate, durable=True)
        return not result.interrupted

    def _update(
        self,
        job: _Job,
        mutate: Callable[[dict[str, Any]], Any],
        *,
        event: str | None = None,
        durable: bool = False,
    ) -> None:
        """Change the owned record in memory and on disk (an `event` appends the status)."""
        with job.mutex:
            mutate(job.record)
            job.record["updated_at"] = utc_now()
            if event == "status":
                emit(job.record, "status", status_data(job.record))
            self.records.write(job.lease, job.record, durable=durable)

    # --- stopping ---------------------------------------------------------------------

    def stop_claiming(self) -> None:
        """Start no more jobs (SIGTERM): queued ones stay for the next process."""
        self._stop.set()
        self._wake.set()

    def shutdown(self, timeout: float) -> None:
        """Stop claiming, give running jobs up to `timeout` s, and let go of queued ones.

        Jobs still running afterwards are cut short when the process exits; the next
        process adopts them (an interrupted run counts as an attempt).
        """
        self.stop_claiming()
        deadline = time.monotonic() + timeout
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            for job in queued:
                self._owned.pop(job.job_id, None)
            running = list(self._owned.values())
        for job in queued:
            job.lease.release()
        for job in running:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:  # the dispatcher ends within its tick: wait for it
            self._thread.join(2.0)

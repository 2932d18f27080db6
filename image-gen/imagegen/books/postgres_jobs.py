"""The asynchronous jobs in PostgreSQL: records, the queue, timed leases and the running slots.

    jobs          one row per job: its record (JSON text, as the service wrote it), `marker`
                  (its place in the queue), `listed` ('active', 'delivering' or NULL: on no
                  list), `status`, `version`, the lease (`owner`, `lease`, `lease_until`) and
                  the caller's webhook signing secret (never served)
    job_inputs    an edit's input images (bytea) until the job ends
    job_previews  a running job's previews (bytea), kept with the record
    slots         rows 0..max_running-1, leased like jobs: at most N jobs run at once

A lease is the row's `lease` (a random id per claim; `owner` says who holds it, for people)
and `lease_until`, on the database server's clock (`clock_timestamp()`), one clock for every
replica. `submit` and `claim` set both in the transaction that takes the row (`claim` with
`FOR UPDATE SKIP LOCKED`, so racing claimants each get another job); `renew` moves
`lease_until` only while the lease is still its own and unlapsed; `release` clears it. A
lease that is not renewed for `lease_seconds` lapses: another owner may claim the job, and
every write of the lapsed owner (`write`, `end`, `finish`) raises LeaseLost, so two owners
never run a job at once. A process that dies simply stops renewing: its jobs and slots are
free `lease_seconds` later.

A bounded `submit` (`max_waiting`) takes a transaction advisory lock (_QUEUE_LOCK) before it
counts the jobs that wait and inserts its own, so bounded submitters over every replica count
one after another, each seeing the rows its predecessors committed.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from psycopg_pool import ConnectionPool

from imagegen import strictjson
from imagegen.books.interfaces import (
    FINAL,
    PREVIEW_NAME,
    ClaimedJob,
    JobCopy,
    Lease,
    LeaseLost,
    QueueLimitReached,
    Record,
    checked_input_name,
)
from imagegen.books.migrations import Schema
from imagegen.books.postgres import _PostgresBook
from imagegen.errors import DatabaseUnavailable
from imagegen.storage.index import normalize_id

log = logging.getLogger(__name__)

_SWEEP_LOCK = 0x696D6773776570  # the sweepers' advisory lock ("imgswep" in ASCII)
# The bounded submitters' advisory lock ("imgqueue" in ASCII), held from counting the waiting
# jobs to inserting one, so that concurrent submitters (threads, workers, replicas) count in turn.
_QUEUE_LOCK = 0x696D677175657565
_STALE = 3600.0  # an unfinished record on no list (a bug's leftover) is removed this late
# Seconds a progress write (not durable) or a preview waits for a connection: they are made
# from the thread reading the upstream's stream, which must not stall while the database is
# out of reach (the progress is a courtesy; the final record has it all).
_COURTESY_WAIT = 1.0
# Seconds a lease's renewal waits for a connection: the renewing thread has every other lease
# to renew too, and the runner looks at a job's lease just after its upstream answered, when
# "the database cannot say" must come quickly (the paid images are stored then) rather than
# after the pool's timeout, when the lease may have lapsed in the meantime.
_RENEW_WAIT = 2.0
# Where the queue starts: unfinished jobs first, then ended ones with a webhook to deliver,
# each oldest submission first; only rows nobody holds.
_CLAIM = """
UPDATE jobs
SET owner = %s, lease = %s, lease_until = clock_timestamp() + make_interval(secs => %s)
WHERE job_id = (
    SELECT job_id FROM jobs
    WHERE listed IS NOT NULL AND (lease_until IS NULL OR lease_until <= clock_timestamp())
    ORDER BY listed <> 'active', marker
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING record::text
"""
_TAKE_SLOT = """
UPDATE slots
SET owner = %s, lease = %s, lease_until = clock_timestamp() + make_interval(secs => %s)
WHERE slot = (
    SELECT slot FROM slots
    WHERE slot < %s AND (lease_until IS NULL OR lease_until <= clock_timestamp())
    ORDER BY slot
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING slot
"""
_SUBMIT = """
INSERT INTO jobs (job_id, marker, listed, status, record, owner, lease, lease_until,
                  webhook_secret)
VALUES (%s, %s, 'active', %s, %s::json, %s, %s, clock_timestamp() + make_interval(secs => %s),
        %s)
"""
# The jobs that wait: unended on the active list, less those running (the slots held). One
# statement, so both counts come from one snapshot.
_WAITING = """
SELECT (SELECT count(*) FROM jobs
        WHERE listed = 'active' AND status NOT IN ('completed', 'failed'))
     - (SELECT count(*) FROM slots WHERE slot < %s AND lease_until > clock_timestamp())
"""
# A lease's renewal and release, by table; the key, then the lease's id.
_RENEW = {
    "jobs": "UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => %s) "
    "WHERE job_id = %s AND lease = %s AND lease_until > clock_timestamp()",
    "slots": "UPDATE slots SET lease_until = clock_timestamp() + make_interval(secs => %s) "
    "WHERE slot = %s AND lease = %s AND lease_until > clock_timestamp()",
}
_RELEASE = {
    "jobs": "UPDATE jobs SET owner = NULL, lease = NULL, lease_until = NULL "
    "WHERE job_id = %s AND lease = %s",
    "slots": "UPDATE slots SET owner = NULL, lease = NULL, lease_until = NULL "
    "WHERE slot = %s AND lease = %s",
}
# A holder's writes: the changes, then the job id and the lease's id, while it holds.
_WRITE = (
    "UPDATE jobs SET record = %s::json, status = %s, version = version + 1, "
    "updated_at = clock_timestamp() "
    "WHERE job_id = %s AND lease = %s AND lease_until > clock_timestamp()"
)
_LIST = (
    "UPDATE jobs SET listed = %s "
    "WHERE job_id = %s AND lease = %s AND lease_until > clock_timestamp()"
)


class PostgresLease:
    """A job's or a slot's lease: a row's `lease` id and `lease_until` (an interfaces.Lease)."""

    def __init__(
        self, book: PostgresJobBook, table: str, key: str | int, seconds: float, token: str
    ) -> None:
        self.book = book
        self.table = table  # "jobs" or "slots"
        self.key = key
        self.token = token  # the row's `lease` while this lease holds it
        self.seconds = seconds
        self._released = False
        self._mutex = threading.Lock()

    @property
    def ended(self) -> bool:
        """Released by its owner (a lapse is only known to the database)."""
        return self._released

    def renew(self) -> bool:
        """Extend the lease by `seconds` from now on the database's clock; False once it has
        ended (released, or lapsed: another owner may hold it now). DatabaseUnavailable when
        the database cannot say."""
        if self._released:
            return False
        with self.book._transaction(_RENEW_WAIT) as db:
            renewed = db.execute(_RENEW[self.table], (self.seconds, self.key, self.token)).rowcount
        return renewed == 1

    def release(self) -> None:
        """End the lease now; releasing again does nothing. With the database unreachable
        the lease is left to lapse by itself."""
        with self._mutex:
            if self._released:
                return
            self._released = True
        try:
            with self.book._transaction() as db:
                db.execute(_RELEASE[self.table], (self.key, self.token))
        except DatabaseUnavailable:
            log.warning(
                "a %s lease was not released (database unavailable): it lapses within %.0f s",
                self.table[:-1],
                self.seconds,
            )


class PostgresJobBook(_PostgresBook):
    """The asynchronous jobs in PostgreSQL, shared by every process and replica (a JobBook)."""

    def __init__(
        self, pool: ConnectionPool, *, max_running: int = 4, schema: Schema | None = None
    ) -> None:
        super().__init__(pool, schema=schema)
        self.max_running = max_running
        self._slots_ready = False

    # --- the queue and the leases --------------------------------------------------------

    def submit(
        self,
        record: Record,
        *,
        owner: str,
        lease_seconds: float,
        webhook_secret: str | None = None,
        inputs: Mapping[str, bytes] | None = None,
        max_waiting: int | None = None,
    ) -> PostgresLease:
        """Insert the job, listed as active and held by `owner`, with its inputs and webhook
        secret, in one transaction: nobody sees half of it, nobody claims it first. With
        `max_waiting`, the transaction first takes the submitters' advisory lock and counts
        the jobs that wait: QueueLimitReached, and nothing inserted, when they are that many."""
        job_id = record["job_id"]
        if normalize_id(job_id) != job_id:
            raise ValueError(f"not a job id: {job_id!r}")
        names = [checked_input_name(name) for name in inputs or {}]
        lease = PostgresLease(self, "jobs", job_id, lease_seconds, secrets.token_hex(16))
        with self._transaction() as db:
            if max_waiting is not None:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_QUEUE_LOCK,))
                waiting = self._count_waiting(db)
                if waiting >= max_waiting:
                    raise QueueLimitReached(waiting=waiting, limit=max_waiting)
            db.execute(
                _SUBMIT,
                (
                    job_id,
                    record["marker"],
                    record["status"],
                    _dump(record),
                    owner,
                    lease.token,
                    lease_seconds,
                    webhook_secret,
                ),
            )
            for name in names:
                assert inputs is not None
                db.execute(
                    "INSERT INTO job_inputs (job_id, name, data) VALUES (%s, %s, %s)",
                    (job_id, name, inputs[name]),
                )
        return lease

    def waiting(self, limit: int) -> int:
        """How many jobs wait, over every replica: unended on the active list, less the
        slots held, from one snapshot. Exact whatever `limit` is (the status is a column)."""
        with self._transaction() as db:
            return self._count_waiting(db)

    def _count_waiting(self, db: Any) -> int:
        """The jobs that wait, counted in `db`'s transaction (`submit`'s, under its lock)."""
        row = db.execute(_WAITING, (self.max_running,)).fetchone()
        assert row is not None
        return int(row[0])

    def import_job(self, copy: JobCopy) -> bool:
        """Add a job another book kept (imagegen.migrate), on the list it was on and held
        by nobody, so that a replica takes it up as it takes up a dead one's; with its
        inputs, previews and webhook secret, in one transaction. False if the job is here
        already (then it is left as it is: it may have moved on since)."""
        record = copy.record
        job_id = record["job_id"]
        if normalize_id(job_id) != job_id:
            raise ValueError(f"not a job id: {job_id!r}")
        if copy.listed not in (None, "active", "delivering"):
            raise ValueError(f"not a list: {copy.listed!r}")
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT INTO jobs (job_id, marker, listed, status, record, webhook_secret) "
                "VALUES (%s, %s, %s, %s, %s::json, %s) ON CONFLICT (job_id) DO NOTHING "
                "RETURNING job_id",
                (
                    job_id,
                    record["marker"],
                    copy.listed,
                    record["status"],
                    _dump(record),
                    copy.webhook_secret,
                ),
            ).fetchone()
            if inserted is None:
                return False
            for name, data in copy.inputs.items():
                db.execute(
                    "INSERT INTO job_inputs (job_id, name, data) VALUES (%s, %s, %s)",
                    (job_id, checked_input_name(name), data),
                )
            for name, data in copy.previews.items():
                if PREVIEW_NAME.match(name):
                    db.execute(
                        "INSERT INTO job_previews (job_id, name, data) VALUES (%s, %s, %s)",
                        (job_id, name, data),
                    )
        return True

    def claim(self, owner: str, lease_seconds: float) -> ClaimedJob | None:
        """Take the oldest listed job nobody holds (released, or its lease lapsed)."""
        token = secrets.token_hex(16)
        with self._transaction() as db:
            row = db.execute(_CLAIM, (owner, token, lease_seconds)).fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        lease = PostgresLease(self, "jobs", record["job_id"], lease_seconds, token)
        return ClaimedJob(record, lease)

    def is_held(self, job_id: str) -> bool:
        """Whether an unlapsed lease holds the job right now."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return False
        with self._transaction() as db:
            row = db.execute(
                "SELECT lease_until > clock_timestamp() FROM jobs WHERE job_id = %s",
                (canonical,),
            ).fetchone()
        return bool(row and row[0])

    def active(self) -> list[tuple[str, str]]:
        """(marker, job id) of every unfinished job, oldest submission first."""
        return self._listed("active")

    def delivering(self) -> list[tuple[str, str]]:
        """(marker, job id) of every ended job whose webhook is still to be delivered."""
        return self._listed("delivering")

    def _listed(self, listing: str) -> list[tuple[str, str]]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT marker, job_id FROM jobs WHERE listed = %s ORDER BY marker", (listing,)
            ).fetchall()
        return [(marker, job_id) for marker, job_id in rows]

    def end(self, lease: Lease, record: Record, *, webhook_pending: bool) -> None:
        """Take an ended job off the active list (onto the delivery list while its webhook is
        pending) and drop its inputs, in one transaction; LeaseLost if the lease has ended."""
        listing = "delivering" if webhook_pending else None
        with self._transaction() as db:
            self._held_update(db, _LIST, lease, record, (listing,))
            db.execute("DELETE FROM job_inputs WHERE job_id = %s", (record["job_id"],))

    def finish(self, lease: Lease, record: Record) -> None:
        """Take the job off every list; LeaseLost if the lease has ended."""
        with self._transaction() as db:
            self._held_update(db, _LIST, lease, record, (None,))

    def take_slot(self, owner: str, lease_seconds: float) -> PostgresLease | None:
        """One of the `max_running` slots, if one is free over every process."""
        token = secrets.token_hex(16)
        with self._transaction() as db:
            if not self._slots_ready:
                db.execute(
                    "INSERT INTO slots (slot) SELECT generate_series(0, %s - 1) "
                    "ON CONFLICT DO NOTHING",
                    (self.max_running,),
                )
            row = db.execute(_TAKE_SLOT, (owner, token, lease_seconds, self.max_running)).fetchone()
        self._slots_ready = True
        if row is None:
            return None
        return PostgresLease(self, "slots", int(row[0]), lease_seconds, token)

    def busy_slots(self) -> int:
        """How many of the `max_running` slots are held right now, by every process."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT count(*) FROM slots WHERE slot < %s AND lease_until > clock_timestamp()",
                (self.max_running,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    # --- records -------------------------------------------------------------------------

    def read(self, job_id: str) -> Record | None:
        """The job's record, or None if there is none (or the id is not a UUID)."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        with self._transaction() as db:
            row = db.execute(
                "SELECT record::text FROM jobs WHERE job_id = %s", (canonical,)
            ).fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        return record if isinstance(record, dict) else None

    def version(self, job_id: str) -> int | None:
        """A number that grows with every write of the record; None once it is gone."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return None
        with self._transaction() as db:
            row = db.execute("SELECT version FROM jobs WHERE job_id = %s", (canonical,)).fetchone()
        return None if row is None else int(row[0])

    def versions(self, job_ids: Iterable[str]) -> dict[str, int]:
        """`version` of each job that exists, by the id as given, in one query however many
        jobs are asked for (the stream hub asks for every job it follows at each poll)."""
        asked: dict[str, list[str]] = {}  # canonical id -> the ids given for it
        for job_id in job_ids:
            canonical = normalize_id(job_id)
            if canonical is not None:
                asked.setdefault(canonical, []).append(job_id)
        if not asked:
            return {}
        with self._transaction() as db:
            rows = db.execute(
                "SELECT job_id, version FROM jobs WHERE job_id = ANY(%s)", (list(asked),)
            ).fetchall()
        return {given: int(version) for job_id, version in rows for given in asked[job_id]}

    def write(self, lease: Lease, record: Record, *, durable: bool = False) -> None:
        """Replace the record; LeaseLost if `lease` no longer holds the job. Not `durable`:
        committed without waiting for the server's disk, and given up (DatabaseUnavailable)
        after _COURTESY_WAIT s without a connection: progress, which a crash may lose."""
        with self._transaction(None if durable else _COURTESY_WAIT) as db:
            if not durable:
                db.execute("SET LOCAL synchronous_commit = off")
            self._held_update(db, _WRITE, lease, record, (_dump(record), record["status"]))

    def _held_update(
        self, db: Any, statement: str, lease: Lease, record: Record, values: tuple[Any, ...]
    ) -> None:
        """Change the job's row (`statement` with `values`, then the job id and the lease's
        id) where `lease` still holds it; LeaseLost where it does not."""
        if not isinstance(lease, PostgresLease) or lease.table != "jobs":
            raise TypeError("not a job lease of a PostgresJobBook")
        job_id = record["job_id"]
        if lease.key != job_id or lease.ended:
            raise LeaseLost(f"the lease on job {job_id} has ended")
        updated = db.execute(statement, (*values, job_id, lease.token)).rowcount
        if updated != 1:
            raise LeaseLost(f"the lease on job {job_id} has lapsed: another owner may hold it")

    def read_input(self, job_id: str, name: str) -> bytes | None:
        """One of the inputs kept with the job by `submit`; None once they are dropped."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT data FROM job_inputs WHERE job_id = %s AND name = %s",
                (job_id, checked_input_name(name)),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def drop_inputs(self, job_id: str) -> None:
        """Forget the job's inputs (`end` does it too, under the lease)."""
        with self._transaction() as db:
            db.execute("DELETE FROM job_inputs WHERE job_id = %s", (job_id,))

    def webhook_secret(self, job_id: str) -> str | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT webhook_secret FROM jobs WHERE job_id = %s", (job_id,)
            ).fetchone()
        return None if row is None else row[0]

    # --- previews ------------------------------------------------------------------------

    def save_preview(self, job_id: str, name: str, data: bytes) -> None:
        """Keep a preview with the job (replacing one of the same name); nothing if the job
        is gone."""
        if not PREVIEW_NAME.match(name):
            raise ValueError(f"not a preview name: {name!r}")
        with self._transaction(_COURTESY_WAIT) as db:
            db.execute(
                "INSERT INTO job_previews (job_id, name, data) "
                "SELECT job_id, %s, %s FROM jobs WHERE job_id = %s "
                "ON CONFLICT (job_id, name) DO UPDATE SET data = EXCLUDED.data",
                (name, data, job_id),
            )

    def preview(self, job_id: str, name: str) -> bytes | None:
        """The preview's bytes, if the job and the preview exist."""
        canonical = normalize_id(job_id)
        if canonical is None or not PREVIEW_NAME.match(name):
            return None
        with self._transaction() as db:
            row = db.execute(
                "SELECT data FROM job_previews WHERE job_id = %s AND name = %s", (canonical, name)
            ).fetchone()
        return None if row is None else bytes(row[0])

    # --- removing ------------------------------------------------------------------------

    def remove(self, job_id: str) -> bool:
        """Remove the job's row with its inputs and previews; False if there was none."""
        canonical = normalize_id(job_id)
        if canonical is None:
            return False
        with self._transaction() as db:
            removed = db.execute("DELETE FROM jobs WHERE job_id = %s", (canonical,)).rowcount
        return removed > 0

    def sweep(self, retention: float, *, stale: float = _STALE) -> int:
        """Remove the jobs on no list and nobody holds: finished ones unchanged for
        `retention` seconds, unfinished ones (leftovers) for `stale`. One process sweeps at
        a time (the others return 0)."""
        with self._transaction() as db:
            locked = db.execute("SELECT pg_try_advisory_xact_lock(%s)", (_SWEEP_LOCK,)).fetchone()
            if not (locked and locked[0]):
                return 0
            removed = db.execute(
                "DELETE FROM jobs WHERE listed IS NULL "
                "AND (lease_until IS NULL OR lease_until <= clock_timestamp()) "
                "AND updated_at <= clock_timestamp() - make_interval(secs => "
                "CASE WHEN status = ANY(%s) THEN %s ELSE %s END)",
                (list(FINAL), retention, stale),
            ).rowcount
        return removed


def _dump(record: Record) -> str:
    return strictjson.dumps(record, ensure_ascii=False, separators=(",", ":"))

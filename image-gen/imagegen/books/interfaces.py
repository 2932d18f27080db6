"""What the service asks of its books, whatever keeps them (SQLite and files, PostgreSQL).

Three books, each shared by every process (Gunicorn workers, replicas) that serves the same
images:

- `CapsBook`: reservations against the caps, settled at the real cost or released.
- `IdempotencyBook`: one claim per (token, Idempotency-Key), and the answer to replay.
- `JobBook`: the asynchronous jobs' records, their queue, the leases that say who runs a
  job, and the running slots.

Each implementation passes the contract tests in tests/contract/ unchanged; what those
tests check is written here as the guarantees an implementation must give.

Leases: a job (and a running slot) is held by one owner at a time, through a `Lease`. The
owner renews it while it works; a lease ends when released or when its owner dies, and
only then can another owner claim the job. The files implementation uses flock, a lease
the kernel ends with the process (it never lapses while the process lives, so `renew`
only says whether it is still held). An implementation with timed leases (PostgreSQL:
`lease_until` on the row, claimed with `FOR UPDATE SKIP LOCKED`) must let a lease lapse
`lease_seconds` after its last renewal, and must refuse the writes of an owner whose lease
has lapsed (`LeaseLost`), so that a job is never run by two owners at once.

Time: the caps' windows and the idempotency leases use the book's clock (tests pass one).
Books shared by several hosts should take one clock for all of them (the database's), not
each host's own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# A job record is a JSON object; a JobBook relies on these keys: "job_id" (a UUID),
# "marker" (`new_marker`: its place in the queue), "status" (one of STATUSES) and
# "webhook" (None, or an object whose "status" is "pending" until delivered or given up).
Record = dict[str, Any]
STATUSES = ("queued", "running", "completed", "failed")
FINAL = ("completed", "failed")

GLOBAL = "*"  # the scope of the service-wide caps: not a possible token name


def new_marker(job_id: str) -> str:
    """A job's place in the queue: sorts by submission time, then by id."""
    return f"{time.time_ns():020d}-{job_id}"


# The inputs a job keeps (`submit`'s file names): an edit's images, mask and markup, named by
# position (jobs.resumable.kept_inputs), never by the caller.
INPUT_NAME = re.compile(r"^[a-z0-9-]{1,32}\.(?:png|jpg|webp)$")


def checked_input_name(name: str) -> str:
    """`name` if a JobBook may keep an input under it; ValueError otherwise."""
    if not INPUT_NAME.match(name):
        raise ValueError(f"not an input name: {name!r}")
    return name


# A running job's previews: partial preview n of image i (p<i>-<n>.<ext>), or image i once
# finished (i<i>.<ext>); jobs.answers.preview_name makes them.
PREVIEW_NAME = re.compile(
    r"^(?:p(?P<image>[0-9]{1,2})-(?P<index>[0-9])|i(?P<done>[0-9]{1,2}))\.(?P<ext>png|jpg|webp|gif|svg)$"
)


# --- caps -------------------------------------------------------------------------------


class CapExceeded(Exception):
    """A reservation would cross a cap; `retry_after` is when the window frees room."""

    def __init__(
        self, *, scope: str, cap: str, limit: float, used: float, retry_after: float | None
    ) -> None:
        super().__init__(f"{scope} cap {cap} reached")
        self.scope = scope
        self.cap = cap
        self.limit = limit
        self.used = used
        # None: the request alone is larger than the cap, so waiting cannot help.
        self.retry_after = retry_after


@dataclass(frozen=True)
class Reservation:
    """Images and dollars held against the caps until settled or released."""

    id: int
    token: str
    images: int
    usd: float


class Caps(Protocol):
    """Limits as a CapsBook reads them (access.tokens.Limits is one)."""

    def caps(self) -> Mapping[str, float]:
        """The caps that are set, by name (caps.CAPS): images_per_hour, usd_per_day..."""
        ...


@runtime_checkable
class CapsBook(Protocol):
    """What each token (and the whole service) has made and spent, in sliding windows.

    Guarantees: `reserve` checks every cap and records the reservation as one atomic step
    over all processes sharing the book, so N concurrent reservations against room for k
    admit exactly k. Windows (caps.CAPS) slide on the book's clock. A reservation counts
    from `reserve` until it leaves the window, unless released; settling changes its
    dollars, not its time. A reservation whose process died stays counted.

    SQLite serialises `reserve` with BEGIN IMMEDIATE. PostgreSQL: read the windows and
    insert in one transaction that holds a lock on each scope it checks (a transaction
    advisory lock on the token and on GLOBAL, say), or SERIALIZABLE retried on conflict;
    `caps.check_room` decides, as here.
    """

    def reserve(
        self,
        token: str,
        *,
        token_limits: Caps,
        global_limits: Caps,
        images: int,
        usd: float,
        model: str,
    ) -> Reservation:
        """Check the token's caps and the service's (scope GLOBAL) and hold the amounts;
        CapExceeded when one would be crossed, ValueError for dollars that are not a
        finite amount from 0."""
        ...

    def settle(self, reservation: Reservation, *, usd: float, job_id: str | None) -> None:
        """Book the real cost in place of the estimate (an invalid amount keeps it)."""
        ...

    def release(self, reservation: Reservation) -> None:
        """Give the reservation back: nothing was made."""
        ...

    def usage(self, token: str | None) -> dict[str, Any]:
        """images_last_hour, images_last_day, usd_last_day, usd_reserved: for one token, or
        (None) the whole service."""
        ...

    def tokens_seen(self) -> list[str]:
        """Names of the tokens with entries in the last day, sorted."""
        ...


# --- idempotency keys -------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming an idempotency key.

    state: "new" (run the request, then complete or abandon), "replay" (answer the stored
    response), "running" (another request holds it), "mismatch" (different body).
    """

    state: str
    claim: str = ""
    status: int = 0
    headers: dict[str, str] | None = None
    body: bytes = b""


@runtime_checkable
class IdempotencyBook(Protocol):
    """Idempotency keys, scoped to a token: a key runs once; its answer is replayed.

    Guarantees: of any number of concurrent claims of one (token, key), over all processes,
    at most one is "new" while its claim is held; a claim is held until completed,
    abandoned, or `lease` seconds after it was made (then the next claim takes the key
    over, and the old claim's complete and abandon do nothing). Keys older than `ttl` are
    forgotten. Times come from the book's clock. PostgreSQL: the look-up and the insert (or
    the takeover) in one transaction, the row locked (`SELECT ... FOR UPDATE`, or
    `INSERT ... ON CONFLICT DO NOTHING` and then read).
    """

    def claim(self, token: str, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """Claim the key for the request with this fingerprint, or say why not."""
        ...

    def complete(
        self, token: str, key: str, claim: str, *, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        """Store the answer of a held claim, so the key replays it."""
        ...

    def abandon(self, token: str, key: str, claim: str) -> None:
        """Free the key of a held claim whose request failed, so a retry runs it again."""
        ...


# --- asynchronous jobs ------------------------------------------------------------------


class LeaseLost(Exception):
    """The owner's lease on a job has ended: another owner may have it now."""


class QueueLimitReached(Exception):
    """`submit` found `limit` jobs waiting already (`waiting` of them): nothing was written."""

    def __init__(self, *, waiting: int, limit: int) -> None:
        super().__init__(f"{waiting} jobs are waiting; the limit is {limit}")
        self.waiting = waiting
        self.limit = limit


@runtime_checkable
class Lease(Protocol):
    """The right to run one job, or to use one running slot, until released or lapsed."""

    def renew(self) -> bool:
        """Extend the lease by its `lease_seconds` from now; False if it has already ended
        (released, or lapsed and perhaps claimed by another owner). A book that cannot be
        reached raises (DatabaseUnavailable): the lease's fate is then unknown."""
        ...

    def release(self) -> None:
        """End the lease now; releasing again does nothing."""
        ...


@dataclass(frozen=True)
class ClaimedJob:
    """A job taken with `JobBook.claim`: its record as it was when claimed, and the lease."""

    record: Record
    lease: Lease


@runtime_checkable
class JobBook(Protocol):
    """The asynchronous jobs: records, the queue, who runs what, and the running slots.

    A job is on the active list (`active`) from `submit` until `end`, then on the delivery
    list (`delivering`) while its webhook is pending, until `finish`. Guarantees:

    - A job is held by one lease at a time. `submit` returns the submitter's lease, held
      already; `claim` returns an unfinished job, or an ended one whose webhook is pending,
      only when nobody holds it (its lease was released, or its owner died or let it lapse),
      and to one claimant only, however many race for it. A holder's own claim does not
      return the jobs it holds.
    - At most `max_running` slots are held at once over all processes (`take_slot`).
    - At most `max_waiting` jobs wait, over all processes, when `submit` is given one: a job
      waits while it is on the active list, unended, and not running (the unended active jobs
      less the slots held, as `waiting` counts them). `submit` counts them and inserts in one
      step that every other submitter's waits for, so N concurrent submissions against room
      for k admit exactly k; the others raise QueueLimitReached and write nothing.
    - Readers (`read`, `version`, `versions`, `active`...) see every write as soon as it
      returns, from every process sharing the book.
    - Only the holder of a job's lease writes it (`write`, `end`, `finish`); an
      implementation with timed leases raises LeaseLost to a holder whose lease has lapsed.

    `owner` names the process that claims (host and pid, say); `lease_seconds` is how long
    a lease lives without renewal. Files: a flock, held until released or the process dies,
    so neither is needed. PostgreSQL: the row's `owner` and `lease_until`; `claim` takes
    the oldest row that is listed and unheld (`lease_until` passed) with `FOR UPDATE SKIP
    LOCKED` and sets both in the same transaction; `renew` moves `lease_until` only where
    `owner` is still its own; a slot is a row of a `slots` table leased the same way.
    A bounded `submit` holds a lock every submitter takes (PostgreSQL: a transaction advisory
    lock; files: a flock) from counting to inserting.
    """

    max_running: int

    # --- the queue and the leases

    def submit(
        self,
        record: Record,
        *,
        owner: str,
        lease_seconds: float,
        webhook_secret: str | None = None,
        inputs: dict[str, bytes] | None = None,
        max_waiting: int | None = None,
    ) -> Lease:
        """Store a new job and queue it, held by `owner`; no reader sees half of it.
        `inputs` (file name to bytes: an edit's images) and the caller's webhook signing
        secret are kept with it until the job ends. With `max_waiting`, QueueLimitReached
        (and nothing written) when that many jobs wait already, over every process."""
        ...

    def claim(self, owner: str, lease_seconds: float) -> ClaimedJob | None:
        """Take a job nobody holds (unfinished, or with its webhook pending); oldest first."""
        ...

    def is_held(self, job_id: str) -> bool:
        """Whether a live owner holds the job's lease right now."""
        ...

    def active(self) -> list[tuple[str, str]]:
        """(marker, job id) of every unfinished job, oldest submission first."""
        ...

    def delivering(self) -> list[tuple[str, str]]:
        """(marker, job id) of every ended job whose webhook is still pending."""
        ...

    def end(self, lease: Lease, record: Record, *, webhook_pending: bool) -> None:
        """Take an ended job (its record says so already) off the active list: onto the
        delivery list while its webhook is pending, else off every list. Its inputs are no
        longer needed (an implementation may drop them here, under the lease)."""
        ...

    def finish(self, lease: Lease, record: Record) -> None:
        """Take the job off every list: it has ended and its webhook is done with."""
        ...

    def take_slot(self, owner: str, lease_seconds: float) -> Lease | None:
        """One of the `max_running` running slots, if one is free."""
        ...

    def busy_slots(self) -> int:
        """How many slots are held right now, by every process."""
        ...

    def waiting(self, limit: int) -> int:
        """How many jobs wait, over all processes and replicas: those on the active list,
        unended and not running (the unended active jobs less the slots held), as `submit`
        counts them against `max_waiting`. Exact whenever it is `limit` or more, so
        `waiting(limit) >= limit` says exactly whether `limit` jobs wait; below that, a
        number below `limit` that may still count a job whose record has just said it ended
        (its listing moves next). The cheap early look of a submitter; `submit`'s count is
        the one that holds."""
        ...

    # --- records

    def read(self, job_id: str) -> Record | None:
        """The job's record; None if there is none (or the id is not a UUID)."""
        ...

    def version(self, job_id: str) -> object | None:
        """A value that changes whenever the record is written; None once it is gone."""
        ...

    def versions(self, job_ids: Iterable[str]) -> Mapping[str, object]:
        """`version` of each of `job_ids` in one look at the book (a follower of many jobs
        asks once per poll, not once per job), keyed by the id as given; a job that is gone,
        or an id that is not a UUID, is absent."""
        ...

    def write(self, lease: Lease, record: Record, *, durable: bool = False) -> None:
        """Replace the record, atomically (`durable`: it survives a power cut on return)."""
        ...

    def read_input(self, job_id: str, name: str) -> bytes | None:
        """One of the inputs kept with the job; None once they are dropped."""
        ...

    def drop_inputs(self, job_id: str) -> None:
        """Forget the job's inputs: it has ended."""
        ...

    def webhook_secret(self, job_id: str) -> str | None:
        """The caller's webhook signing secret given at submission (never served)."""
        ...

    def save_preview(self, job_id: str, name: str, data: bytes) -> None:
        """Keep a preview image of a running job under a name PREVIEW_NAME matches."""
        ...

    def preview(self, job_id: str, name: str) -> bytes | None:
        """The preview's bytes, if the job and the preview exist."""
        ...

    def remove(self, job_id: str) -> bool:
        """Remove the job's record, previews and inputs; False if there was none."""
        ...

    def sweep(self, retention: float) -> int:
        """Remove finished jobs unchanged for `retention` seconds, and crash leftovers;
        how many were removed (0 when another process is sweeping)."""
        ...


# --- moving books to another implementation (imagegen.migrate) --------------------------


@dataclass(frozen=True)
class SpendEntry:
    """One entry of a caps ledger as it is kept: who, when (seconds since the epoch), what."""

    token: str
    at: float
    images: int
    usd: float
    state: str  # "reserved" or "settled"
    model: str
    job_id: str | None


@dataclass(frozen=True)
class StoredKey:
    """One idempotency key as it is kept, with the answer it replays once done."""

    token: str
    key: str
    fingerprint: str
    state: str  # "running" or "done"
    claim: str
    created: float
    lease_until: float
    status: int | None
    headers: str | None  # JSON text
    body: bytes | None


@dataclass(frozen=True)
class JobCopy:
    """Everything a JobBook keeps of one asynchronous job, to move it to another book:
    its record, the list it is on ("active", "delivering" or None), its webhook signing
    secret, its kept inputs and its previews."""

    record: Record
    listed: str | None
    webhook_secret: str | None
    inputs: dict[str, bytes]
    previews: dict[str, bytes]

"""The caps ledger and the idempotency keys in one SQLite file, for processes on one host.

One SQLite database in WAL mode under the images directory (`.ledger/ledger.sqlite3`) is
shared by every Gunicorn worker (and every replica on the same host). A reservation is
checked against the caps and written in one `BEGIN IMMEDIATE` transaction, which SQLite
serialises across processes, so 50 simultaneous requests against a cap of 10 images admit
exactly 10; an idempotency key is claimed the same way.

A reservation holds the estimate until the upstream answers; it is then settled at the
real cost, or released if the call failed. A reservation whose process died stays counted
(the money may have been spent) until it leaves the window.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagegen import strictjson
from imagegen.books.caps import DAY, HOUR, amount, check_every_cap, settled_amount
from imagegen.books.interfaces import GLOBAL, Caps, Claim, Reservation, SpendEntry, StoredKey
from imagegen.books.keys import stored_claim
from imagegen.errors import InsufficientStorage

log = logging.getLogger(__name__)

# Spend entries older than every window are deleted now and then (job metadata keeps costs).
_KEEP = 2 * DAY
_PRUNE_EVERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL,
    at REAL NOT NULL,
    images INTEGER NOT NULL,
    usd REAL NOT NULL,
    state TEXT NOT NULL,
    model TEXT NOT NULL,
    job_id TEXT
);
CREATE INDEX IF NOT EXISTS spend_at ON spend (at);
CREATE INDEX IF NOT EXISTS spend_token_at ON spend (token, at);
CREATE TABLE IF NOT EXISTS idempotency (
    token TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    claim TEXT NOT NULL,
    created REAL NOT NULL,
    lease_until REAL NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB,
    PRIMARY KEY (token, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
"""

# Entries of one token (or, with the second parameter true, of all) in a window, oldest first.
_SPEND_IN_WINDOW = {
    "images": "SELECT at, images FROM spend WHERE at > ? AND (? OR token = ?) ORDER BY at",
    "usd": "SELECT at, usd FROM spend WHERE at > ? AND (? OR token = ?) ORDER BY at",
}


def _switch_to_wal(db: sqlite3.Connection, *, within: float = 30.0) -> None:
    """Put the database in WAL mode. While another worker creates the same fresh database,
    SQLite can refuse the switch with "database is locked" at once, without the busy handler:
    try again for a while (the mode is persistent, so one worker's switch is everyone's)."""
    deadline = time.monotonic() + within
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class _ThreadConnection(threading.local):
    """One thread's SQLite connection and the process that opened it."""

    db: sqlite3.Connection | None = None
    pid = 0


class _SQLiteBook:
    """One SQLite file shared by every process and thread: a connection per thread (and
    per process: SQLite handles cannot cross a fork), write transactions that take the
    write lock at once."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = _ThreadConnection()

    def prepare(self) -> None:
        """Create the database and its schema (idempotent; every worker may run it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connect().executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork: SQLite handles cannot cross it)."""
        db = self._local.db
        if db is not None and self._local.pid == os.getpid():
            return db
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        _switch_to_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes SQLite's write lock at once, so checks and writes in it
        see no other writer in between. A full disk is the store's 507, as for images."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if "full" in str(exc):  # SQLITE_FULL: "database or disk is full"
                raise InsufficientStorage(
                    "The disk under the images directory is full; nothing was done. Free "
                    "space or delete images, then try again."
                ) from None
            raise


class SQLiteCapsBook(_SQLiteBook):
    """Reservations and settled costs (table `spend`), safe across processes and threads."""

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
        """Check every cap and record the reservation, atomically; raise CapExceeded.

        ValueError for an amount that is not a finite number of dollars from 0: it would
        count against every cap for a day (see `caps.amount`)."""
        usd = amount(usd)
        with self._transaction() as db:
            now = self.clock()
            check_every_cap(
                [(token, token_limits.caps()), (GLOBAL, global_limits.caps())],
                images=images,
                usd=usd,
                now=now,
                entries=lambda column, since, scope: db.execute(
                    _SPEND_IN_WINDOW[column], (since, scope == GLOBAL, scope)
                ).fetchall(),
            )
            cursor = db.execute(
                "INSERT INTO spend (token, at, images, usd, state, model) "
                "VALUES (?, ?, ?, ?, 'reserved', ?)",
                (token, now, images, usd, model),
            )
            entry = int(cursor.lastrowid or 0)
            if entry % _PRUNE_EVERY == 0:  # forget what every window has left behind
                db.execute("DELETE FROM spend WHERE at < ?", (now - _KEEP,))
            return Reservation(entry, token, images, usd)

    def settle(self, reservation: Reservation, *, usd: float, job_id: str | None) -> None:
        """Replace the estimate with the real cost once the upstream has answered.

        A cost that is not a finite number of dollars from 0 is not booked: the estimate
        stays, and the error is logged."""
        usd = settled_amount(reservation, usd)
        with self._transaction() as db:
            db.execute(
                "UPDATE spend SET usd = ?, state = 'settled', job_id = ? WHERE id = ?",
                (usd, job_id, reservation.id),
            )

    def release(self, reservation: Reservation) -> None:
        """Give the reservation back: the upstream call failed and made nothing."""
        with self._transaction() as db:
            db.execute("DELETE FROM spend WHERE id = ?", (reservation.id,))

    def usage(self, token: str | None) -> dict[str, Any]:
        """Images and US dollars in each window, for one token or (None) the whole service."""
        now = self.clock()
        scope = token or GLOBAL
        everyone = scope == GLOBAL
        db = self._connect()
        hour = db.execute(
            "SELECT COALESCE(SUM(images), 0) FROM spend WHERE at > ? AND (? OR token = ?)",
            (now - HOUR, everyone, scope),
        ).fetchone()[0]
        images_day, usd_day, reserved = db.execute(
            "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(usd), 0), "
            "COALESCE(SUM(CASE WHEN state = 'reserved' THEN usd END), 0) "
            "FROM spend WHERE at > ? AND (? OR token = ?)",
            (now - DAY, everyone, scope),
        ).fetchone()
        return {
            "images_last_hour": int(hour),
            "images_last_day": int(images_day),
            "usd_last_day": round(float(usd_day), 6),
            "usd_reserved": round(float(reserved), 6),
        }

    def tokens_seen(self) -> list[str]:
        """Names of the tokens with entries in the last day."""
        rows = self._connect().execute(
            "SELECT DISTINCT token FROM spend WHERE at > ? ORDER BY token",
            (self.clock() - DAY,),
        )
        return [name for (name,) in rows]

    def entries(self) -> list[SpendEntry]:
        """Every entry kept, oldest first (to move the ledger: imagegen.migrate)."""
        rows = self._connect().execute(
            "SELECT token, at, images, usd, state, model, job_id FROM spend ORDER BY at, id"
        )
        return [SpendEntry(*row) for row in rows]


class SQLiteIdempotencyBook(_SQLiteBook):
    """Idempotency keys (table `idempotency`), in the same file as the caps."""

    def claim(self, token: str, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """Claim an idempotency key for this request, or say why it cannot be claimed."""
        with self._transaction() as db:
            now = self.clock()
            db.execute("DELETE FROM idempotency WHERE created < ?", (now - ttl,))
            row = db.execute(
                "SELECT fingerprint, state, lease_until, status, headers, body "
                "FROM idempotency WHERE token = ? AND key = ?",
                (token, key),
            ).fetchone()
            if row is not None:
                found = stored_claim(row, token, fingerprint, now)
                if found is not None:
                    return found
            claim = hashlib.sha256(os.urandom(16)).hexdigest()[:32]
            db.execute(
                "INSERT OR REPLACE INTO idempotency "
                "(token, key, fingerprint, state, claim, created, lease_until) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (token, key, fingerprint, claim, now, now + lease),
            )
            return Claim("new", claim=claim)

    def complete(
        self, token: str, key: str, claim: str, *, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        """Store the response of a claimed key, so retries replay it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ? "
                "WHERE token = ? AND key = ? AND claim = ?",
                (status, strictjson.dumps(headers), body, token, key, claim),
            )

    def abandon(self, token: str, key: str, claim: str) -> None:
        """Free a claimed key whose request failed, so a retry runs it again."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM idempotency WHERE token = ? AND key = ? AND claim = ?",
                (token, key, claim),
            )

    def stored_keys(self) -> list[StoredKey]:
        """Every key kept, with its answer (to move them: imagegen.migrate)."""
        rows = self._connect().execute(
            "SELECT token, key, fingerprint, state, claim, created, lease_until, status, "
            "headers, body FROM idempotency ORDER BY created"
        )
        return [
            StoredKey(
                token=row[0],
                key=row[1],
                fingerprint=row[2],
                state=row[3],
                claim=row[4],
                created=row[5],
                lease_until=row[6],
                status=row[7],
                headers=row[8],
                body=None if row[9] is None else bytes(row[9]),
            )
            for row in rows
        ]

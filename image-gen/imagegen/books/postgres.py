"""The caps ledger and the idempotency keys in PostgreSQL, shared by replicas on any host.

psycopg 3 over a `psycopg_pool.ConnectionPool`; the schema is `migrations.MIGRATIONS`
(`migrations.migrate` before first use, or a `migrations.Schema` given: until it is ready
every call is DatabaseUnavailable). Same tables and rules as the SQLite books
(books/sqlite.py, books/caps.py):

- `reserve` runs in one transaction that first takes transaction advisory locks on the
  token's scope and on the service's (GLOBAL; shared when the service has no caps to
  check, exclusive when it has), always in that order, so no two transactions wait on each
  other in a circle; it then reads the windows, decides with `caps.check_every_cap` and inserts.
  Two reservations of one token, or two checks of the service caps, never overlap, over
  every process and host, so N concurrent reservations against room for k admit exactly k.
- `claim` inserts the key with `INSERT ... ON CONFLICT DO NOTHING`; when the key exists
  it locks the row (`SELECT ... FOR UPDATE`) and replays, refuses, or takes over a claim
  whose lease ran out, in the same transaction.

Time: with `clock=None` (the service) every time comes from the database server
(`clock_timestamp()`), one clock for every replica; a `clock` given (the tests) is used
instead, as the SQLite books use theirs. Times are stored as seconds since the epoch.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from imagegen import strictjson
from imagegen.books.caps import DAY, HOUR, amount, check_every_cap, settled_amount
from imagegen.books.interfaces import GLOBAL, Caps, Claim, Reservation, SpendEntry, StoredKey
from imagegen.books.keys import stored_claim
from imagegen.books.migrations import Schema
from imagegen.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_KEEP = 2 * DAY  # spend entries older than every window are deleted now and then
_PRUNE_EVERY = 500
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"
# The advisory lock of a caps scope: a 64-bit hash of its name (a collision only makes two
# scopes wait for each other).
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
_LOCKS_AND_NOW = (  # a token's lock, then the whole service's: exclusive (a global cap)
    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0)), "
    "pg_advisory_xact_lock(hashtextextended(%s, 0)), "
    "extract(epoch FROM clock_timestamp())::float8"
)
_LOCKS_SHARED_AND_NOW = (  # ... or shared (no global cap: tokens only wait for their own)
    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0)), "
    "pg_advisory_xact_lock_shared(hashtextextended(%s, 0)), "
    "extract(epoch FROM clock_timestamp())::float8"
)
_SPEND_IN_WINDOW = {
    "images": "SELECT at, images FROM spend WHERE at > %s AND (%s OR token = %s) ORDER BY at",
    "usd": "SELECT at, usd FROM spend WHERE at > %s AND (%s OR token = %s) ORDER BY at",
}
_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout)


# Every connection's libpq settings: a server that vanishes without closing its side (its
# node lost, a network cut) is found out within about half a minute, not the kernel's
# quarter of an hour: TCP keep-alives on an idle connection (10 s, then 3 probes 5 s apart)
# and, while a query waits, data unacknowledged for 30 s ends the connection.
_CONNECTION = {
    "connect_timeout": 5,
    "application_name": "image-gen",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms
}


# How long the pool goes on trying to replace a lost connection before it gives up on that
# attempt: its waits double (1, 2, 4 s...), so after a long outage the next try could come
# half a minute after the database is back; given up after this, the next request that
# wants a connection starts a fresh attempt at once (psycopg_pool's default is 5 minutes).
RECONNECT_SECONDS = 8.0


def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 10.0
) -> ConnectionPool:
    """A pool of at most `max_size` connections to `url` (IMAGE_GEN_DATABASE_POOL_SIZE in
    the service), connecting in the background; a caller waits at most
    `timeout` seconds for a connection (then DatabaseUnavailable from the books). A
    connection is checked before it is handed out, so that once a restarted server is back
    no request gets one that the restart broke."""
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        reconnect_timeout=RECONNECT_SECONDS,
        check=ConnectionPool.check_connection,
        open=True,
        name="imagegen-books",
        kwargs=_CONNECTION,
    )


class _PostgresBook:
    """A book on a connection pool shared by the process's threads."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        clock: Callable[[], float] | None = None,
        schema: Schema | None = None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.schema = schema  # None: migrated before the book was made
        self._pid = os.getpid()
        self._inherited: list[ConnectionPool] = []

    def _pool(self) -> ConnectionPool:
        """The pool, or after a fork a new one like it: the parent's connections and the
        pool's threads do not cross a fork (kept, never closed: closing would end the
        parent's sessions)."""
        if self._pid != os.getpid():
            old = self.pool
            self._inherited.append(old)
            url = old.conninfo if isinstance(old.conninfo, str) else old.conninfo()
            self.pool = open_pool(url, min_size=old.min_size, max_size=old.max_size)
            self._pid = os.getpid()
        return self.pool

    @contextmanager
    def _transaction(self, wait: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A connection from the pool inside one transaction (committed on success), waited
        for at most `wait` seconds (default: the pool's timeout). An unreachable database is
        DatabaseUnavailable, never a DSN in a message; so is a schema not yet migrated."""
        pool = self._pool()
        if self.schema is not None and not self.schema.ready(pool):
            raise DatabaseUnavailable()
        try:
            with pool.connection(timeout=wait) as db, db.transaction():
                yield db
        except _UNAVAILABLE as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable() from None

    def reachable(self, timeout: float = 2.0) -> bool:
        """Whether the database answers a query within about `timeout` seconds, its schema
        migrated (/health)."""
        pool = self._pool()
        if self.schema is not None and not self.schema.ready(pool):
            return False
        try:
            with pool.connection(timeout=timeout) as db:
                db.execute("SELECT 1")
            return True
        except (*_UNAVAILABLE, psycopg.DatabaseError):
            return False

    def _now(self, db: psycopg.Connection[Any]) -> float:
        """The book's time: its clock, or the database server's."""
        if self.clock is not None:
            return float(self.clock())
        row = db.execute(_NOW).fetchone()
        assert row is not None
        return float(row[0])


class PostgresCapsBook(_PostgresBook):
    """Reservations and settled costs (table `spend`), exact across replicas."""

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
        """Check every cap and record the reservation in one locked transaction; raise
        CapExceeded, or ValueError for dollars that are not a finite amount from 0."""
        usd = amount(usd)
        checks = [(token, token_limits.caps()), (GLOBAL, global_limits.caps())]
        with self._transaction() as db:
            # Both locks and the time in one round trip: the target list runs left to
            # right, so the clock is read once both locks are held.
            locked = db.execute(
                _LOCKS_AND_NOW if checks[1][1] else _LOCKS_SHARED_AND_NOW,
                (f"caps:token:{token}", "caps:*"),
            ).fetchone()
            assert locked is not None
            now = float(self.clock()) if self.clock is not None else float(locked[-1])
            check_every_cap(
                checks,
                images=images,
                usd=usd,
                now=now,
                entries=lambda column, since, scope: db.execute(
                    _SPEND_IN_WINDOW[column], (since, scope == GLOBAL, scope)
                ).fetchall(),
            )
            row = db.execute(
                "INSERT INTO spend (token, at, images, usd, state, model) "
                "VALUES (%s, %s, %s, %s, 'reserved', %s) RETURNING id",
                (token, now, images, usd, model),
            ).fetchone()
            assert row is not None
            entry = int(row[0])
            if entry % _PRUNE_EVERY == 0:  # forget what every window has left behind
                db.execute("DELETE FROM spend WHERE at < %s", (now - _KEEP,))
            return Reservation(entry, token, images, usd)

    def settle(self, reservation: Reservation, *, usd: float, job_id: str | None) -> None:
        """Replace the estimate with the real cost (an invalid cost keeps the estimate)."""
        usd = settled_amount(reservation, usd)
        with self._transaction() as db:
            db.execute(
                "UPDATE spend SET usd = %s, state = 'settled', job_id = %s WHERE id = %s",
                (usd, job_id, reservation.id),
            )

    def release(self, reservation: Reservation) -> None:
        """Give the reservation back: the upstream call failed and made nothing."""
        with self._transaction() as db:
            db.execute("DELETE FROM spend WHERE id = %s", (reservation.id,))

    def usage(self, token: str | None) -> dict[str, Any]:
        """Images and US dollars in each window, for one token or (None) the whole service."""
        scope = token or GLOBAL
        everyone = scope == GLOBAL
        with self._transaction() as db:
            now = self._now(db)
            row = db.execute(
                "SELECT COALESCE(SUM(images) FILTER (WHERE at > %s), 0), "
                "COALESCE(SUM(images), 0), COALESCE(SUM(usd), 0), "
                "COALESCE(SUM(usd) FILTER (WHERE state = 'reserved'), 0) "
                "FROM spend WHERE at > %s AND (%s OR token = %s)",
                (now - HOUR, now - DAY, everyone, scope),
            ).fetchone()
        assert row is not None
        hour, images_day, usd_day, reserved = row
        return {
            "images_last_hour": int(hour),
            "images_last_day": int(images_day),
            "usd_last_day": round(float(usd_day), 6),
            "usd_reserved": round(float(reserved), 6),
        }

    def tokens_seen(self) -> list[str]:
        """Names of the tokens with entries in the last day, sorted."""
        with self._transaction() as db:
            since = self._now(db) - DAY
            rows = db.execute(
                "SELECT DISTINCT token FROM spend WHERE at > %s ORDER BY token", (since,)
            ).fetchall()
        return [name for (name,) in rows]

    def import_entries(self, entries: list[SpendEntry]) -> tuple[int, int]:
        """Add another ledger's entries, in one transaction, each once however often this
        runs: an entry is the same one when its token, time, images and model are (a time
        to the microsecond of one token's reservation). An entry there already takes the
        other's dollars and state (settled since). (added, already there or updated)."""
        added = 0
        with self._transaction() as db:
            db.execute(_LOCK, ("caps:*",))  # no reservation checks the windows meanwhile
            for entry in entries:
                usd = amount(entry.usd)
                found = db.execute(
                    "SELECT id FROM spend WHERE token = %s AND at = %s AND images = %s "
                    "AND model = %s LIMIT 1",
                    (entry.token, entry.at, entry.images, entry.model),
                ).fetchone()
                if found is not None:
                    db.execute(
                        "UPDATE spend SET usd = %s, state = %s, job_id = %s WHERE id = %s",
                        (usd, entry.state, entry.job_id, found[0]),
                    )
                    continue
                db.execute(
                    "INSERT INTO spend (token, at, images, usd, state, model, job_id) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        entry.token,
                        entry.at,
                        entry.images,
                        usd,
                        entry.state,
                        entry.model,
                        entry.job_id,
                    ),
                )
                added += 1
        return added, len(entries) - added


class PostgresIdempotencyBook(_PostgresBook):
    """Idempotency keys (table `idempotency`), one claim per key across replicas."""

    def claim(self, token: str, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """Claim an idempotency key for this request, or say why it cannot be claimed."""
        with self._transaction() as db:
            now = self._now(db)
            # This key's expired entry, and now and then every expired one.
            db.execute(
                "DELETE FROM idempotency WHERE token = %s AND key = %s AND created < %s",
                (token, key, now - ttl),
            )
            if secrets.randbelow(_PRUNE_EVERY) == 0:
                db.execute("DELETE FROM idempotency WHERE created < %s", (now - ttl,))
            claim = secrets.token_hex(16)
            for _ in range(3):  # the row met by the insert can be abandoned before we lock it
                inserted = db.execute(
                    "INSERT INTO idempotency "
                    "(token, key, fingerprint, state, claim, created, lease_until) "
                    "VALUES (%s, %s, %s, 'running', %s, %s, %s) "
                    "ON CONFLICT (token, key) DO NOTHING RETURNING claim",
                    (token, key, fingerprint, claim, now, now + lease),
                ).fetchone()
                if inserted is not None:
                    return Claim("new", claim=claim)
                found = self._existing(db, token, key, fingerprint, claim, now=now, lease=lease)
                if found is not None:
                    return found
            return Claim("running")

    def _existing(
        self,
        db: psycopg.Connection[Any],
        token: str,
        key: str,
        fingerprint: str,
        claim: str,
        *,
        now: float,
        lease: float,
    ) -> Claim | None:
        """The key is taken: lock its row, then replay, refuse, or take over a lapsed claim."""
        row = db.execute(
            "SELECT fingerprint, state, lease_until, status, headers, body "
            "FROM idempotency WHERE token = %s AND key = %s FOR UPDATE",
            (token, key),
        ).fetchone()
        if row is None:  # abandoned since the insert met it
            return None
        found = stored_claim(row, token, fingerprint, now)
        if found is not None:
            return found
        db.execute(
            "UPDATE idempotency SET claim = %s, created = %s, lease_until = %s "
            "WHERE token = %s AND key = %s",
            (claim, now, now + lease, token, key),
        )
        return Claim("new", claim=claim)

    def complete(
        self, token: str, key: str, claim: str, *, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        """Store the response of a held claim, so retries replay it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE idempotency SET state = 'done', status = %s, headers = %s, body = %s "
                "WHERE token = %s AND key = %s AND claim = %s",
                (status, strictjson.dumps(headers), body, token, key, claim),
            )

    def abandon(self, token: str, key: str, claim: str) -> None:
        """Free a held claim's key whose request failed, so a retry runs it again."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM idempotency WHERE token = %s AND key = %s AND claim = %s",
                (token, key, claim),
            )

    def import_keys(self, keys: list[StoredKey]) -> tuple[int, int, int]:
        """Add another book's keys, in one transaction. A key not here is added; one here
        with the same claim takes the other's state and answer (done since); one here with
        another claim (a request to this book since) is kept as it is. (added, already
        there or updated, kept)."""
        added = kept = 0
        with self._transaction() as db:
            for stored in keys:
                values = (
                    stored.fingerprint,
                    stored.state,
                    stored.claim,
                    stored.created,
                    stored.lease_until,
                    stored.status,
                    stored.headers,
                    stored.body,
                )
                row = db.execute(
                    "INSERT INTO idempotency (token, key, fingerprint, state, claim, created, "
                    "lease_until, status, headers, body) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (token, key) DO NOTHING RETURNING claim",
                    (stored.token, stored.key, *values),
                ).fetchone()
                if row is not None:
                    added += 1
                    continue
                updated = db.execute(
                    "UPDATE idempotency SET fingerprint = %s, state = %s, claim = %s, "
                    "created = %s, lease_until = %s, status = %s, headers = %s, body = %s "
                    "WHERE token = %s AND key = %s AND claim = %s",
                    (*values, stored.token, stored.key, stored.claim),
                ).rowcount
                kept += updated == 0
        return added, len(keys) - added - kept, kept

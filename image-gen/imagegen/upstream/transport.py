"""The wire under the upstream client: urllib openers whose sockets a watchdog shuts at the
deadline, multipart bodies, and Server-Sent Events read as they arrive."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import http.client
import ipaddress
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from imagegen.upstream.errors import InvalidResponseError
from imagegen.upstream.retry import Deadline

_CHUNK = 1024 * 1024


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class FormFile:
    """One file part of a multipart/form-data upload."""

    field: str  # e.g. "image", "image[]", "mask"
    filename: str
    content_type: str
    data: bytes


def encode_multipart(
    fields: Sequence[tuple[str, str]], files: Sequence[FormFile]
) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) and its Content-Type, with a fresh boundary.

    Field names and file names are the service's own (ASCII, no quotes); values are UTF-8.
    """
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        parts.append(value.encode("utf-8"))
    for upload in files:
        parts.append(
            f'Content-Disposition: form-data; name="{upload.field}"; '
            f'filename="{upload.filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n'.encode()
        )
        parts.append(upload.data)
    for _ in range(8):  # a 128-bit random boundary inside the data is all but impossible
        boundary = f"image-gen-{secrets.token_hex(16)}"
        marker = f"--{boundary}".encode()
        if not any(marker in part for part in parts):
            break
    else:
        raise ValueError("could not choose a multipart boundary")
    chunks: list[bytes] = []
    for head, body in zip(parts[::2], parts[1::2], strict=True):
        chunks += [marker, b"\r\n", head, body, b"\r\n"]
    chunks += [marker, b"--\r\n"]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class _Watchdog:
    """Shuts an exchange's sockets down when the deadline passes.

    Socket timeouts bound each wait, not the total: an upstream that sends a byte now and
    then would otherwise hold a request for hours. One alarm thread serves every exchange
    of the process (see _Alarms), so an exchange starts no thread of its own.
    """

    def __init__(self, deadline: Deadline) -> None:
        self.fired = False
        self.when = time.monotonic() + max(0.0, deadline.remaining())
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> _Watchdog:
        _ALARMS.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ALARMS.discard(self)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


class _Alarms:
    """The watchdogs of the exchanges in flight, and one thread that fires each at its time.

    The thread starts on first use in each process (Gunicorn workers are forks).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: set[_Watchdog] = set()
        self._wake = float("inf")  # when the thread will next look
        self._pid = 0

    def add(self, watchdog: _Watchdog) -> None:
        with self._cond:
            self._armed.add(watchdog)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._wake = float("inf")
                threading.Thread(target=self._run, name="upstream-watchdog", daemon=True).start()
            if watchdog.when < self._wake:
                self._cond.notify()

    def discard(self, watchdog: _Watchdog) -> None:
        with self._cond:
            self._armed.discard(watchdog)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [w for w in self._armed if w.when <= now]
                self._armed.difference_update(due)
                self._wake = min((w.when for w in self._armed), default=float("inf"))
                if not due:
                    self._cond.wait(None if self._wake == float("inf") else self._wake - now)
                    continue
            for watchdog in due:
                watchdog.fire()


_ALARMS = _Alarms()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def describe_failure(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


# The watchdog of the exchange this thread is making: the shared opener's connections
# report their sockets to it.
_WATCHDOG: contextvars.ContextVar[_Watchdog] = contextvars.ContextVar("upstream_watchdog")


def _opener(proxies: dict[str, str], connect_timeout: float) -> urllib.request.OpenerDirector:
    """An opener with only http(s) handlers (no file:, ftp:, data:, and no redirects), the
    environment's proxies, and sockets the current exchange's watchdog can shut at its
    deadline. Built once per client: openers are safe to share between threads."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(proxies),
        _HTTPHandler(connect_timeout),
        _HTTPSHandler(connect_timeout, ssl.create_default_context()),
    ):
        opener.add_handler(handler)
    return opener


class _WatchedConnection(http.client.HTTPConnection):
    """A connection that connects within `connect_timeout`, then reads with its own timeout,
    its socket watched by the current exchange's watchdog."""

    def __init__(self, *args: Any, connect_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        read_timeout = self.timeout
        # None would mean no limit: never ours, every exchange passes a timeout.
        self.timeout = (
            self.connect_timeout
            if read_timeout is None
            else min(self.connect_timeout, read_timeout)
        )
        try:
            super().connect()
        finally:
            self.timeout = read_timeout
        self.sock.settimeout(read_timeout)
        _WATCHDOG.get().watch(self.sock)


class _WatchedHTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    """The same over TLS: the handshake is part of connecting."""


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_timeout: float) -> None:
        super().__init__()
        self._class = functools.partial(_WatchedConnection, connect_timeout=connect_timeout)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._class, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connect_timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._class = functools.partial(_WatchedHTTPSConnection, connect_timeout=connect_timeout)
        self._ctx = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._class, req, context=self._ctx)


def _read_capped(raw: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """A whole (non-streamed) body, refused beyond `max_bytes`."""
    chunks, total = [], 0
    while chunk := raw.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise InvalidResponseError("the upstream's answer is larger than allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _sse_events(
    raw: http.client.HTTPResponse, *, max_event: int, max_total: int
) -> Iterator[tuple[str, str]]:
    """(event name, data) of each Server-Sent Event on `raw`, as the bytes arrive.

    Lines end in LF or CRLF; `data:` lines are joined with newlines; comments and other
    fields are skipped. A line longer than `max_event` or a stream longer than `max_total`
    is refused.
    """
    buffer = bytearray()
    scanned = total = 0
    name = ""
    data: list[str] = []
    while True:
        end = buffer.find(b"\n", scanned)
        if end < 0:
            if len(buffer) > max_event:
                raise InvalidResponseError("an upstream event is larger than allowed")
            scanned = len(buffer)
            chunk = raw.read1(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_total:
                raise InvalidResponseError("the upstream's answer is larger than allowed")
            buffer += chunk
            continue
        line = bytes(buffer[:end]).rstrip(b"\r")
        del buffer[: end + 1]
        scanned = 0
        if not line:
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", []
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value.decode("utf-8", "replace"))
    if data:
        yield name or "message", "\n".join(data)

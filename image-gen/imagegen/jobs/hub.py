"""Event streams served by one thread per worker, not one request thread each.

Under Gunicorn (plain HTTP/1.x), GET /jobs/<id>/events answers its head and the events
recorded so far from the request thread, then hands the connection to this process's
`StreamHub` and frees the thread. The hub's one thread follows every handed-off stream:
each poll (a quarter second) it asks the job book for the versions of every job followed
in one call (`versions`: one query with PostgreSQL, however many jobs and streams), reads a
record only when its version changed, and writes the new events to each of the job's
streams without blocking. The answer says `Connection: close` and has no
Transfer-Encoding: its body ends when the connection closes (HTTP/1.1 allows it).

A stream ends after its job's `completed` or `failed` event, when the job is deleted,
after MAX_STREAM_SECONDS, when its client leaves (the hub sees the socket readable at its
end, or an error), or when its client lets more than MAX_BUFFERED bytes wait unread. Its
place (a StreamLease, streams.py) is given back the moment it ends.

Anywhere else (Flask's test client, the development server, TLS served by Gunicorn) the
answer is the generator of events.py on the request thread, as before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import selectors
import socket
import ssl
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Response
from werkzeug.http import http_date

from imagegen.books.interfaces import FINAL, JobBook
from imagegen.jobs import events
from imagegen.jobs.streams import StreamLease

log = logging.getLogger(__name__)

MAX_BUFFERED = 1024 * 1024  # bytes a client may leave unread before it is dropped
LINGER_SECONDS = 10.0  # an ended stream's last bytes wait this long for a slow reader
HEAD_TIMEOUT = 10.0  # the request thread's write of the head and the events so far
_READ_LIMIT = 64 * 1024  # bytes a client may send on a stream (ignored) before it is dropped
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


@dataclass(eq=False)
class _Stream:
    """One handed-off stream: its socket (the hub's own descriptor) and where it is."""

    sock: socket.socket
    job_id: str
    last_id: int
    lease: StreamLease
    started: float
    sent_at: float
    out: bytearray = field(default_factory=bytearray)
    received: int = 0
    ending_at: float | None = None  # set once its last event is queued: close when flushed
    writing: bool = False  # registered for EVENT_WRITE too (the kernel's buffer was full)


@dataclass(eq=False)
class _Job:
    """What the hub knows of one followed job, shared by all its streams."""

    version: object | None = None
    record: dict[str, Any] = field(default_factory=dict)
    noticed: float = 0.0
    failing: bool = False  # the last read failed (logged once until one succeeds)


class StreamHub:
    """This process's handed-off event streams, followed by one daemon thread.

    The thread starts with the first stream (so in each Gunicorn worker, after the fork)
    and `stop()` ends every stream (at the worker's exit)."""

    def __init__(
        self,
        records: JobBook,
        notice: Callable[[dict[str, Any]], None],
        *,
        poll: float = events.POLL_SECONDS,
        max_seconds: float = events.MAX_STREAM_SECONDS,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.records = records
        self.notice = notice
        self.poll = poll
        self.max_seconds = max_seconds
        self.max_buffered = max_buffered
        self._lock = threading.Lock()
        self._incoming: deque[_Stream] = deque()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._versions_failing = False  # the last poll's versions() failed (logged once)

    def add(self, sock: socket.socket, job_id: str, last_id: int, lease: StreamLease) -> None:
        """Follow `job_id` on `sock` (non-blocking, owned by the hub from now on) after the
        event `last_id`; `lease` is released when the stream ends."""
        now = time.monotonic()
        stream = _Stream(sock, job_id, last_id, lease, started=now, sent_at=now)
        with self._lock:
            if self._stopping.is_set():
                _close(stream)
                return
            self._start_locked()
            self._incoming.append(stream)
            assert self._wake_w is not None
            with contextlib.suppress(BlockingIOError):  # else a wake-up is pending already
                self._wake_w.send(b"\0")

    def stop(self, timeout: float = 5.0) -> None:
        """End every stream and the thread (waiting for it at most `timeout` seconds)."""
        with self._lock:
            self._stopping.set()
            thread = self._thread if self._pid == os.getpid() else None
            if self._wake_w is not None and thread is not None:
                with contextlib.suppress(OSError):
                    self._wake_w.send(b"\0")
        if thread is not None:
            thread.join(timeout)

    def _start_locked(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        if self._pid == os.getpid():
            self._close_wake_locked()
        self._pid = os.getpid()  # a fork keeps no thread: start one for this process
        self._incoming.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, args=(self._wake_r,), name="event-stream-hub", daemon=True
        )
        self._thread.start()

    def _close_wake_locked(self) -> None:
        """Close this process's wake-up pair of a thread that has ended (its reader, too,
        when the thread never ran)."""
        for end in (self._wake_w, self._wake_r):
            if end is not None:
                end.close()
        self._wake_r = self._wake_w = None

    # --- the hub's thread -------------------------------------------------------------

    def _run(self, wake: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(wake, selectors.EVENT_READ, None)
        streams: set[_Stream] = set()
        jobs: dict[str, _Job] = {}
        next_tick = time.monotonic()
        try:
            while not self._stopping.is_set():
                timeout = max(0.0, next_tick - time.monotonic())
                for key, mask in selector.select(timeout):
                    if key.data is None:
                        _drain(wake)
                        continue
                    step = functools.partial(self._on_ready, key.data, mask)
                    self._guarded(key.data, streams, selector, step)
                self._take_incoming(streams, selector)
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(streams, jobs, selector, now)
                    next_tick = now + self.poll
            # Stopping (the worker exits once its jobs have ended): a last poll sends the
            # events they just recorded, `completed` or `failed`, before the streams close.
            self._take_incoming(streams, selector)
            self._tick(streams, jobs, selector, time.monotonic())
        except Exception:  # the loop itself: log it; the streams end below, clients reconnect
            log.exception("the event stream hub stopped")
        finally:
            for stream in list(streams):
                self._end(stream, streams, selector)
            with self._lock:
                for stream in self._incoming:
                    _close(stream)
                self._incoming.clear()
                if self._thread is threading.current_thread():  # the next add() starts one
                    self._thread = None
                    self._close_wake_locked()
            selector.close()
            wake.close()

    def _take_incoming(self, streams: set[_Stream], selector: selectors.BaseSelector) -> None:
        with self._lock:
            arrived = list(self._incoming)
            self._incoming.clear()
        for stream in arrived:
            try:
                selector.register(stream.sock, selectors.EVENT_READ, stream)
            except (OSError, ValueError):
                _close(stream)
                continue
            streams.add(stream)

    def _guarded(
        self,
        stream: _Stream,
        streams: set[_Stream],
        selector: selectors.BaseSelector,
        step: Callable[[], bool],
    ) -> None:
        """Run one stream's step; a step that says so, or fails, ends that stream only."""
        try:
            keep = step()
        except Exception:
            log.exception("event stream of job %s failed; closing it", stream.job_id)
            keep = False
        if not keep:
            self._end(stream, streams, selector)
        else:
            self._watch_writes(stream, selector)

    def _on_ready(self, stream: _Stream, mask: int) -> bool:
        if mask & selectors.EVENT_READ:
            try:
                data = stream.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset: the client is gone
                return False
            if data == b"":  # the client closed (or half-closed) its side
                return False
            stream.received += len(data or b"")
            if stream.received > _READ_LIMIT:  # nothing is read on a stream: not a client
                return False
        if mask & selectors.EVENT_WRITE:
            return self._flush(stream)
        return True

    def _tick(
        self,
        streams: set[_Stream],
        jobs: dict[str, _Job],
        selector: selectors.BaseSelector,
        now: float,
    ) -> None:
        """One poll: every followed job's version in one call to the book, the record of
        each job whose version changed, then each stream."""
        by_job: dict[str, list[_Stream]] = {}
        for stream in streams:
            by_job.setdefault(stream.job_id, []).append(stream)
        for job_id in list(jobs):
            if job_id not in by_job:
                del jobs[job_id]
        if not by_job:
            return
        versions: Mapping[str, object] | None
        try:
            versions = self.records.versions(list(by_job))
            self._versions_failing = False
        except Exception:  # the book cannot be read: keep-alives until it can again
            if not self._versions_failing:
                log.exception(
                    "reading the versions of %d jobs for their streams failed", len(by_job)
                )
            self._versions_failing, versions = True, None
        for job_id, following in by_job.items():
            job = jobs.setdefault(job_id, _Job(noticed=now))
            gone = False
            if versions is not None:
                try:
                    gone = self._refresh(job_id, job, versions.get(job_id), now)
                    job.failing = False
                except Exception:  # its record cannot be read: keep-alives until it can
                    if not job.failing:
                        log.exception("reading job %s for its event streams failed", job_id)
                    job.failing = True
            for stream in following:
                step = functools.partial(self._advance, stream, job, gone, now)
                self._guarded(stream, streams, selector, step)

    def _refresh(self, job_id: str, job: _Job, version: object | None, now: float) -> bool:
        """Bring `job` up to date with its `version` (None: gone); True when the job no
        longer exists."""
        if version is None:
            return True
        if version != job.version:
            job.record = self.records.read(job_id) or {}
            job.version = version
            if not job.record:
                return True
        if now - job.noticed >= events.NOTICE_SECONDS and job.record.get("status") not in FINAL:
            job.noticed = now
            try:
                self.notice(job.record)
            except Exception:  # adoption is retried at the next notice; the events go on
                log.exception("noticing job %s for its event streams failed", job_id)
        return False

    def _advance(self, stream: _Stream, job: _Job, gone: bool, now: float) -> bool:
        """Queue the stream's new events (or a keep-alive) and send what it can."""
        if stream.ending_at is None:
            if gone:
                stream.ending_at = now
            else:
                for event in job.record.get("events", []):
                    if event["id"] > stream.last_id:
                        stream.out += events.format_event(event).encode()
                        stream.last_id = event["id"]
                        stream.sent_at = now
                        if event["event"] in FINAL:
                            stream.ending_at = now
                            break
                if job.record.get("status") in FINAL or now - stream.started >= self.max_seconds:
                    stream.ending_at = now
                elif now - stream.sent_at >= events.KEEPALIVE_SECONDS:
                    stream.out += b": keep-alive\n\n"
                    stream.sent_at = now
        if not self._flush(stream):
            return False
        if len(stream.out) > self.max_buffered:  # what the kernel's buffer did not take
            log.info("event stream of job %s dropped: its client reads too slowly", stream.job_id)
            return False
        if stream.ending_at is not None:
            return bool(stream.out) and now - stream.ending_at < LINGER_SECONDS
        return True

    @staticmethod
    def _flush(stream: _Stream) -> bool:
        """Send what the kernel takes now; False when the client is gone."""
        while stream.out:
            try:
                sent = stream.sock.send(stream.out)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del stream.out[:sent]
        return True

    @staticmethod
    def _watch_writes(stream: _Stream, selector: selectors.BaseSelector) -> None:
        wanted = bool(stream.out)
        if wanted != stream.writing:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            selector.modify(stream.sock, mask, stream)
            stream.writing = wanted

    @staticmethod
    def _end(stream: _Stream, streams: set[_Stream], selector: selectors.BaseSelector) -> None:
        if stream in streams:
            streams.discard(stream)
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(stream.sock)
        _close(stream)


def _close(stream: _Stream) -> None:
    stream.lease.release()
    with contextlib.suppress(OSError):
        stream.sock.close()


def _drain(wake: socket.socket) -> None:
    for _ in range(64):  # bounded: wake-ups are one byte each and coalesce
        try:
            if not wake.recv(4096):
                return
        except (BlockingIOError, InterruptedError):
            return


class EventStreamResponse(Response):
    """A job's event stream that is handed to the hub under Gunicorn (see the module's
    docstring), and is `fallback` (the generator on the request thread) anywhere else.

    The hand-off happens in `__call__`, after Flask applied its after-request hooks, so the
    head carries the service's usual headers."""

    def __init__(
        self,
        fallback: Iterator[str],
        *,
        hub: StreamHub,
        job_id: str,
        last_id: int,
        recorded: Iterable[dict[str, Any]],
        lease: StreamLease,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(fallback, mimetype="text/event-stream", headers=dict(headers))
        self._hub = hub
        self._job_id = job_id
        self._last_id = last_id
        self._recorded = list(recorded)
        self._lease = lease

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        gunicorn_response = _gunicorn_response(environ, start_response)
        if gunicorn_response is None or self.status_code != 200:
            return super().__call__(environ, start_response)
        _, status, headers = self.get_wsgi_response(environ)
        self._hand_off(environ["gunicorn.socket"], gunicorn_response, status, list(headers))
        return []  # not closed by Gunicorn: the lease is the hub's now (no call_on_close)

    def _hand_off(
        self,
        sock: socket.socket,
        gunicorn_response: Any,
        status: str,
        headers: list[tuple[str, str]],
    ) -> None:
        """Write the head and the events so far, tell Gunicorn the answer is sent and its
        connection to be closed, and give the connection to the hub."""
        version = gunicorn_response.req.version
        lines = [
            f"HTTP/{version[0]}.{version[1]} {status}",
            f"Server: {gunicorn_response.version}",
            f"Date: {http_date()}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP),
        ]
        body = f"retry: {events.RECONNECT_MS}\n\n"
        last_id, final = self._last_id, False
        for event in self._recorded:
            if event["id"] > last_id:
                body += events.format_event(event)
                last_id = event["id"]
                if event["event"] in FINAL:
                    final = True
                    break
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        own = _take_over(sock)  # Gunicorn's descriptor now closes nothing of the client's
        gunicorn_response.status = status
        gunicorn_response.status_code = 200
        gunicorn_response.headers = headers
        gunicorn_response.headers_sent = True
        gunicorn_response.chunked = False
        gunicorn_response.must_close = True
        if own is None:
            self._lease.release()
            return
        try:
            own.settimeout(HEAD_TIMEOUT)
            own.sendall(head + body.encode())
            own.setblocking(False)
        except OSError:  # the client left already
            final = True
        if not final:
            try:
                self._hub.add(own, self._job_id, last_id, self._lease)
                return
            except Exception:  # no hub thread (out of descriptors?): end this stream only
                log.exception("event stream of job %s could not be handed off", self._job_id)
        self._lease.release()
        own.close()


def _gunicorn_response(environ: Mapping[str, Any], start_response: Any) -> Any | None:
    """Gunicorn's response object for this request when the connection can be handed off:
    Gunicorn's HTTP/1.x response over a plain (not TLS) socket, for a GET."""
    try:
        from gunicorn.http.wsgi import Response as GunicornResponse
    except ImportError:  # not under Gunicorn
        return None
    sock = environ.get("gunicorn.socket")
    if not isinstance(start_response, types.MethodType):
        return None
    owner = start_response.__self__
    if (
        type(owner) is not GunicornResponse  # not HTTP/2's, nor a subclass of another framing
        or not isinstance(sock, socket.socket)
        or isinstance(sock, ssl.SSLSocket)
        or sock.type != socket.SOCK_STREAM
        or environ.get("REQUEST_METHOD") != "GET"
        or owner.cfg.protocol != "http"  # uwsgi frames answers its own way
        or owner.headers_sent
    ):
        return None
    return owner


def _take_over(sock: socket.socket) -> socket.socket | None:
    """A descriptor of our own for the client's connection, and Gunicorn's descriptor made
    a fresh unconnected socket: Gunicorn's graceful close (a half-close, then reading until
    the client closes) would otherwise end the stream. None when the client is gone."""
    try:
        own = sock.dup()
    except OSError:
        return None
    try:
        placeholder = socket.socket(sock.family, socket.SOCK_STREAM)
        try:
            os.dup2(placeholder.fileno(), sock.fileno(), inheritable=False)
        finally:
            placeholder.close()
    except OSError:
        own.close()
        return None
    return own

"""A job's progress as Server-Sent Events, followed from its record on disk.

The record is shared through the images directory, so a stream served by one Gunicorn
worker follows a job that another worker runs. Each event has an `id`; a client that
reconnects with `Last-Event-ID` gets only the events after it.

A stream ends within a poll (a quarter second) of its client leaving: under Gunicorn each
poll asks the client's socket whether the peer has closed it, so the request thread is freed
without waiting for the next keep-alive write to fail (up to 15 s later).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from imagegen import strictjson
from imagegen.books.interfaces import FINAL, JobBook

POLL_SECONDS = 0.25  # how often the record is read
KEEPALIVE_SECONDS = 15.0  # a comment line when nothing else was sent, so proxies keep it open
NOTICE_SECONDS = 2.0  # how often a stream checks that someone still runs its job
MAX_STREAM_SECONDS = 900.0  # then the stream ends; EventSource reconnects by itself
RECONNECT_MS = 2000
# Linux's "the peer closed its side", even with unread bytes before the end (a TLS
# close_notify, a pipelined request); elsewhere end-of-file is found by peeking.
_PEER_CLOSED = getattr(select, "POLLRDHUP", 0)


def format_event(event: dict[str, Any]) -> str:
    """One event on the wire: id, event name and its data as one line of JSON."""
    data = strictjson.dumps(event["data"], ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['event']}\ndata: {data}\n\n"


def follow(
    records: JobBook,
    job_id: str,
    last_id: int,
    *,
    notice: Callable[[dict[str, Any]], None],
    gone: Callable[[], bool] = lambda: False,
    poll: float = POLL_SECONDS,
    max_seconds: float = MAX_STREAM_SECONDS,
) -> Iterator[str]:
    """The events after `last_id`, as they are recorded, until `completed` or `failed`.

    `notice` is called with the record every few seconds while the job is unfinished, so a
    job whose process died is adopted even if only a stream is watching it. The stream ends
    as soon as `gone()` says its client has left.
    """
    yield f"retry: {RECONNECT_MS}\n\n"
    started = sent_at = noticed = time.monotonic()
    record: dict[str, Any] = {}
    seen: object | None = None
    while True:
        version = records.version(job_id)
        if version is None:  # deleted meanwhile
            return
        if version != seen:  # read the record only when it was rewritten
            record = records.read(job_id) or {}
            seen = version
            if not record:
                return
            for event in record.get("events", []):
                if event["id"] > last_id:
                    yield format_event(event)
                    last_id = event["id"]
                    sent_at = time.monotonic()
                    if event["event"] in FINAL:
                        return
            if record.get("status") in FINAL:
                return
        if gone():
            return
        now = time.monotonic()
        if now - noticed >= NOTICE_SECONDS:
            notice(record)
            noticed = now
        if now - sent_at >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            sent_at = now
        if now - started >= max_seconds:
            return
        time.sleep(poll)


def client_gone(environ: Mapping[str, Any]) -> Callable[[], bool]:
    """A check that the request's client has left: its socket (Gunicorn's, or Werkzeug's
    development server's) has seen the peer close, or an error. Nothing is read from it;
    always False where the server does not expose the socket (then the next write fails).
    A client that only half-closes its side also counts as gone, as with most servers."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return lambda: False
    poller = select.poll()  # not select(): descriptors above 1023 are common under load
    try:
        poller.register(sock.fileno(), select.POLLIN | _PEER_CLOSED)
    except (OSError, ValueError):  # closed already: the next write says so
        return lambda: False

    def gone() -> bool:
        try:
            ready = poller.poll(0)
            if not ready:
                return False
            if ready[0][1] & (_PEER_CLOSED | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
            # Readable without POLLRDHUP (not Linux): end-of-file, or bytes the client sent
            # on (a pipelined request). The plain socket's recv, also under TLS: a peek.
            return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):  # reset, or closed under us
            return True

    return gone


def last_event_id(header: str | None, query: str | None) -> int:
    """The id a reconnecting client saw last (header, or `?last_event_id=`), else 0."""
    for raw in (header, query):
        if raw and raw.isascii() and raw.strip().isdigit() and len(raw.strip()) <= 9:
            return int(raw.strip())
    return 0

"""A job's progress as Server-Sent Events, followed from its record on disk.

The record is shared through the images directory, so a stream served by one Gunicorn
worker follows a job that another worker runs. Each event has an `id`; a client that
reconnects with `Last-Event-ID` gets only the events after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from . import strictjson
from .jobrecords import FINAL, JobRecords

POLL_SECONDS = 0.25  # how often the record is read
KEEPALIVE_SECONDS = 15.0  # a comment line when nothing else was sent, so proxies keep it open
NOTICE_SECONDS = 2.0  # how often a stream checks that someone still runs its job
MAX_STREAM_SECONDS = 900.0  # then the stream ends; EventSource reconnects by itself
RECONNECT_MS = 2000


def format_event(event: dict[str, Any]) -> str:
    """One event on the wire: id, event name and its data as one line of JSON."""
    data = strictjson.dumps(event["data"], ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['event']}\ndata: {data}\n\n"


def follow(
    records: JobRecords,
    job_id: str,
    last_id: int,
    *,
    notice: Callable[[dict[str, Any]], None],
    poll: float = POLL_SECONDS,
    max_seconds: float = MAX_STREAM_SECONDS,
) -> Iterator[str]:
    """The events after `last_id`, as they are recorded, until `completed` or `failed`.

    `notice` is called with the record every few seconds while the job is unfinished, so a
    job whose process died is adopted even if only a stream is watching it.
    """
    yield f"retry: {RECONNECT_MS}\n\n"
    started = sent_at = noticed = time.monotonic()
    record: dict[str, Any] = {}
    seen: tuple[int, int] | None = None
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


def last_event_id(header: str | None, query: str | None) -> int:
    """The id a reconnecting client saw last (header, or `?last_event_id=`), else 0."""
    for raw in (header, query):
        if raw and raw.isascii() and raw.strip().isdigit() and len(raw.strip()) <= 9:
            return int(raw.strip())
    return 0

"""The stream hub on its own, over real TCP connections on 127.0.0.1: a client that leaves
its events unread past the bound is dropped, a job whose record cannot be read (or whose
`notice` fails) costs neither its streams' places nor the other jobs' streams, a book that
cannot give versions keeps every stream waiting until it can, the hub asks the book once
per poll for every job it follows however many streams follow them, and a hub whose thread
failed serves the next stream with a new one."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from imagegen.jobs.hub import StreamHub
from imagegen.jobs.streams import StreamLimiter
from tests.support.service import wait_for

READ_LIMIT = 8 * 1024 * 1024


class Book:
    """The two reads the hub makes of a job book, over records held in memory, and what it
    was asked: `asked` holds the ids of each call to `versions`, `reads` counts each job's
    reads. While `down`, `versions` raises as a book that cannot be reached does; reading a
    job in `failing` raises too."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.failing: set[str] = set()
        self.down = False
        self.asked: list[list[str]] = []
        self.reads: Counter[str] = Counter()

    def put(self, job_id: str, status: str, events: list[tuple[str, Any]]) -> None:
        numbered = [{"id": i, "event": e, "data": d} for i, (e, d) in enumerate(events, 1)]
        self.records[job_id] = {"job_id": job_id, "status": status, "events": numbered}

    def versions(self, job_ids: Iterable[str]) -> dict[str, object]:
        asked = list(job_ids)
        self.asked.append(asked)
        if self.down:
            raise ConnectionError("the book is down")
        records = {job_id: self.records.get(job_id) for job_id in asked}
        return {
            job_id: (record["status"], len(record["events"]))
            for job_id, record in records.items()
            if record is not None
        }

    def read(self, job_id: str) -> dict[str, Any] | None:
        self.reads[job_id] += 1
        if job_id in self.failing:
            raise ConnectionError("the book is down")
        return self.records.get(job_id)


@pytest.fixture
def book() -> Book:
    return Book()


@pytest.fixture
def limiter() -> StreamLimiter:
    return StreamLimiter(total=10, per_token=10)


@pytest.fixture
def hub(book: Book) -> Iterator[StreamHub]:
    def notice(record: dict[str, Any]) -> None:
        raise RuntimeError("adoption failed")

    running = StreamHub(book, notice, poll=0.01)  # type: ignore[arg-type]
    yield running
    running.stop()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def connect(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(the hub's end, the client's end) of one TCP connection."""
    client = socket.create_connection(listener.getsockname(), timeout=10)
    served, _ = listener.accept()
    served.setblocking(False)
    return served, client


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < READ_LIMIT:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the stream did not end")


def test_a_client_that_leaves_more_than_the_bound_unread_is_dropped(listener, limiter, book):
    book.put("big", "running", [("status", {"text": "x" * 60_000})] * 100)  # 6 MB of events
    hub = StreamHub(book, lambda record: None, poll=0.01, max_buffered=256 * 1024)  # type: ignore[arg-type]
    served, client = connect(listener)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    served.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel keeps little
    lease = limiter.open(None)
    try:
        hub.add(served, "big", 0, lease)
        wait_for(lambda: not lease.held, timeout=10, what="the slow client dropped")
        received = read_to_end(client)
    finally:
        client.close()
        hub.stop()

    assert 0 < len(received) < 6_000_000  # some events, then the connection closed


def test_a_job_that_cannot_be_read_keeps_its_stream_and_other_jobs_streams_go_on(
    listener, limiter, book, hub
):
    book.put("down", "running", [("status", {"status": "running"})])
    book.failing.add("down")
    book.put("up", "running", [("status", {"status": "running"})])
    waiting, waiting_client = connect(listener)
    following, following_client = connect(listener)
    waiting_lease, following_lease = limiter.open(None), limiter.open(None)
    with waiting_client, following_client:
        hub.add(waiting, "down", 0, waiting_lease)
        hub.add(following, "up", 0, following_lease)
        book.put("up", "completed", [("status", {"status": "running"}), ("completed", {"ok": 1})])
        received = read_to_end(following_client).decode()

        assert received.index("id: 1\n") < received.index("id: 2\nevent: completed\n")
        assert not following_lease.held
        assert waiting_lease.held  # still open, waiting for its book
        waiting_client.close()
        wait_for(lambda: not waiting_lease.held, timeout=10, what="the left stream's place")


class FailingOnce(StreamHub):
    """A hub whose loop fails unexpectedly at its first poll, and whose thread then takes
    its time to finish (as a thread does between its last line and its end)."""

    def __init__(self, book: Book) -> None:
        super().__init__(book, lambda record: None, poll=0.01)  # type: ignore[arg-type]
        self.failures = 1
        self.loop_ended = threading.Event()
        self.finish = threading.Event()

    def _tick(self, *args: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("unexpected")
        super()._tick(*args)

    def _run(self, wake: socket.socket) -> None:
        super()._run(wake)
        self.loop_ended.set()
        self.finish.wait(10)


def test_after_the_hub_thread_fails_its_streams_end_and_the_next_stream_is_served(
    listener, limiter, book
):
    book.put("job", "running", [("status", {"status": "running"})])
    hub = FailingOnce(book)
    first, first_client = connect(listener)
    second, second_client = connect(listener)
    first_lease, second_lease = limiter.open(None), limiter.open(None)
    try:
        hub.add(first, "job", 0, first_lease)
        assert hub.loop_ended.wait(10)
        assert read_to_end(first_client) == b""  # ended: the client reconnects
        assert not first_lease.held

        hub.add(second, "job", 0, second_lease)  # the failed thread has not finished yet
        book.put("job", "completed", [("status", {"status": "running"}), ("completed", {})])
        received = read_to_end(second_client).decode()
    finally:
        hub.finish.set()
        first_client.close()
        second_client.close()
        hub.stop()

    assert "id: 2\nevent: completed\n" in received
    assert not second_lease.held


def test_stopping_sends_the_events_of_a_job_that_just_ended_before_closing(listener, limiter, book):
    book.put("job", "running", [("status", {"status": "running"})])
    hub = StreamHub(book, lambda record: None, poll=60)  # type: ignore[arg-type]
    served, client = connect(listener)
    lease = limiter.open(None)
    try:
        hub.add(served, "job", 0, lease)
        assert client.recv(65536).startswith(b"id: 1\n")  # the hub's first poll
        book.put("job", "completed", [("status", {"status": "running"}), ("completed", {})])
        hub.stop()  # as the worker exits, its jobs just finished: long before the next poll
        received = read_to_end(client).decode()
    finally:
        client.close()
        hub.stop()

    assert received.startswith("id: 2\nevent: completed\n")
    assert not lease.held


def test_while_the_book_cannot_give_versions_every_stream_waits_then_goes_on(
    listener, limiter, book, hub
):
    book.put("job", "running", [("status", {"status": "running"})])
    book.down = True
    served, client = connect(listener)
    lease = limiter.open(None)
    with client:
        hub.add(served, "job", 0, lease)
        book.put("job", "completed", [("status", {"status": "running"}), ("completed", {})])
        wait_for(lambda: len(book.asked) >= 5, timeout=10, what="five polls of a book down")
        assert lease.held  # still open, waiting for its book
        book.down = False
        received = read_to_end(client).decode()

    assert received.startswith("id: 1\n")
    assert "id: 2\nevent: completed\n" in received
    assert not lease.held


class CountingPolls(StreamHub):
    """A hub that counts its polls with streams to follow."""

    def __init__(self, book: Book) -> None:
        super().__init__(book, lambda record: None, poll=0.01)  # type: ignore[arg-type]
        self.polls = 0

    def _tick(self, streams: set[Any], *args: Any) -> None:
        if streams:
            self.polls += 1
        super()._tick(streams, *args)


def test_the_hub_asks_the_book_once_per_poll_for_all_jobs_however_many_streams(
    listener, limiter, book
):
    jobs = ["a", "b", "c"]
    for job_id in jobs:
        book.put(job_id, "running", [("status", {"status": "running"})])
    hub = CountingPolls(book)
    connections = [(job_id, *connect(listener)) for job_id in jobs for _ in range(3)]
    leases = [limiter.open(None) for _ in connections]
    try:
        for (job_id, served, _), lease in zip(connections, leases, strict=True):
            hub.add(served, job_id, 0, lease)
        for _, _, client in connections:
            assert client.recv(65536).startswith(b"id: 1\n")
        polls_with_every_stream = len(book.asked)
        wait_for(lambda: len(book.asked) >= polls_with_every_stream + 5, what="five more polls")
        for job_id in jobs:
            book.put(job_id, "completed", [("status", {"status": "running"}), ("completed", {})])
        received = [read_to_end(client).decode() for _, _, client in connections]
        wait_for(lambda: not any(lease.held for lease in leases), what="every stream ended")
    finally:
        for _, _, client in connections:
            client.close()
        hub.stop()

    assert all("id: 2\nevent: completed\n" in text for text in received)
    assert len(book.asked) == hub.polls  # one call per poll, never one per job or stream
    assert all(len(asked) == len(set(asked)) for asked in book.asked)  # each job once
    assert sorted(book.asked[polls_with_every_stream]) == jobs  # 9 streams, 3 ids
    assert book.reads == {job_id: 2 for job_id in jobs}  # running, then completed

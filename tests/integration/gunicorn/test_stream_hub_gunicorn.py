"""Event streams under real Gunicorn are served by each worker's stream hub, not by a
request thread each: more streams than threads stay open while the worker answers other
requests, every stream gets its job's events in order and ends after the last, a stream
resumes after Last-Event-ID, a client that leaves gives its place back, the answer's head
carries the service's usual headers, and a stream open when the service stops gets its
running job's `completed` before it ends."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen.books.files import FileJobBook, FileLease
from tests.support.gunicorn_server import HTTPAnswer, Service, read_head, run_gunicorn
from tests.support.jobs import parse_sse
from tests.support.metrics import scrape_service, value
from tests.support.service import TEST_KEY, wait_for

pytestmark = pytest.mark.slow

READ_LIMIT = 1024 * 1024  # bytes read from one stream at most


def environment(**extra: str) -> dict[str, str]:
    return {
        "IMAGE_GEN_PROVIDER": "placeholder",
        "IMAGE_GEN_MAX_RUNNING_JOBS": "1",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "4",
        **extra,
    }


@contextlib.contextmanager
def held_slot(service: Service) -> Iterator[FileLease]:
    """The only running slot, held by the test: submitted jobs stay queued until released."""
    holder = FileJobBook(service.images, fsync=False, max_running=1).take_slot()
    assert holder is not None
    try:
        yield holder
    finally:
        holder.release()


def submit(service: Service, prompt: str) -> str:
    answer = service.request(
        "POST", "/generate", {"prompt": prompt}, headers={"Prefer": "respond-async"}
    )
    assert answer.status == 202, answer.body
    return answer.json()["job_id"]


def open_stream(service: Service, job_id: str, **headers: str) -> tuple[socket.socket, HTTPAnswer]:
    """A raw connection asking for the job's events, and the answer's head (with what came
    of the body so far); the connection stays open for the stream."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    return sock, read_head(sock)


def read_to_end(sock: socket.socket, start: bytes) -> bytes:
    """What the stream sends until the service closes the connection."""
    data = start
    while len(data) < READ_LIMIT:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the stream did not end")


def streams_open(service: Service) -> float:
    return value(scrape_service(service), "imagegen_event_streams_open")


def health_answers(service: Service) -> bool:
    return service.request("GET", "/health", timeout=5).status == 200


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with run_gunicorn(tmp_path / "service", environment()) as running:
        yield running


def test_40_streams_on_4_threads_stay_open_while_the_worker_answers_and_all_end_completed(
    service,
):
    sockets: list[socket.socket] = []
    with held_slot(service) as slot:
        job_id = submit(service, "watched by forty")
        try:
            heads = []
            for _ in range(40):
                sock, head = open_stream(service, job_id)
                sockets.append(sock)
                heads.append(head)
            assert [h.status for h in heads] == [200] * 40
            assert all(h.content_type.startswith("text/event-stream") for h in heads)
            assert health_answers(service)
            assert service.request("GET", f"/jobs/{job_id}").json()["status"] == "queued"
            assert streams_open(service) == 40
        finally:
            slot.release()
        try:
            pairs = zip(sockets, heads, strict=True)
            bodies = [read_to_end(sock, head.body) for sock, head in pairs]
        finally:
            for sock in sockets:
                sock.close()

    for body in bodies:
        assert body.startswith(b"retry: 2000\n\n")
        received = parse_sse(body.decode())
        assert [e["id"] for e in received] == list(range(1, len(received) + 1))
        assert received[0]["event"] == "status" and received[-1]["event"] == "completed"
        assert received[-1]["data"]["job_id"] == job_id
        assert [e["event"] for e in received].count("completed") == 1
    assert len({body for body in bodies}) == 1  # every stream saw the same events
    wait_for(lambda: streams_open(service) == 0, timeout=5, what="the streams' places back")


def test_a_stream_resumes_after_last_event_id(service):
    with held_slot(service) as slot:
        job_id = submit(service, "resumed")
        first, head = open_stream(service, job_id)
        with first:
            assert parse_sse(head.body.decode())[0]["id"] == 1
        again, head = open_stream(service, job_id, **{"Last-Event-ID": "1"})
        with again:
            slot.release()
            received = parse_sse(read_to_end(again, head.body).decode())

    assert received[0]["id"] == 2
    assert [e["id"] for e in received] == list(range(2, len(received) + 2))
    assert received[-1]["event"] == "completed"


def test_a_client_that_leaves_gives_its_place_back(tmp_path):
    env = environment(IMAGE_GEN_MAX_STREAMS="5")
    with run_gunicorn(tmp_path / "service", env) as service, held_slot(service):
        job_id = submit(service, "left behind")
        sockets = [open_stream(service, job_id) for _ in range(5)]
        assert [head.status for _, head in sockets] == [200] * 5
        refused, head = open_stream(service, job_id)
        refused.close()
        assert head.status == 503 and head.json()["code"] == "TOO_MANY_STREAMS"

        for sock, _ in sockets:
            sock.close()
        wait_for(lambda: streams_open(service) == 0, timeout=5, what="the places back")
        again = [open_stream(service, job_id) for _ in range(5)]
        try:
            assert [head.status for _, head in again] == [200] * 5
        finally:
            for sock, _ in again:
                sock.close()


def test_a_streams_head_carries_the_services_usual_headers_and_closes_the_connection(
    service,
):
    with held_slot(service):
        job_id = submit(service, "headers")
        normal = service.request("GET", f"/jobs/{job_id}", headers={"X-Request-ID": "plain-1"})
        sock, head = open_stream(service, job_id, **{"X-Request-ID": "stream-1"})
        sock.close()

    assert head.status == 200
    assert head.headers["x-request-id"] == "stream-1"
    assert normal.headers["x-request-id"] == "plain-1"
    framing = {"content-type", "content-length", "connection", "retry-after", "date"}
    usual = set(normal.headers) - framing
    assert usual <= set(head.headers), usual - set(head.headers)
    for name in usual - {"x-request-id"}:
        assert head.headers[name] == normal.headers[name], name
    assert head.headers["connection"] == "close"
    assert "transfer-encoding" not in head.headers
    assert head.headers["cache-control"] == "no-cache"
    assert head.body.startswith(b"retry: 2000\n\n")


def test_streams_open_when_the_service_stops_get_their_running_jobs_completed_event(
    tmp_path, fake_openai
):
    fake_openai.latency = 2.0  # the job is still running when the service is told to stop
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    env = {
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "4",
        "GUNICORN_GRACEFUL_TIMEOUT": "20",
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
    }
    with run_gunicorn(tmp_path / "service", env) as service:
        job_id = submit(service, "finished while stopping")
        wait_for(
            lambda: service.request("GET", f"/jobs/{job_id}").json()["status"] == "running",
            timeout=10,
            what="the job running",
        )
        opened = [open_stream(service, job_id) for _ in range(3)]
        try:
            service.process.terminate()  # SIGTERM: docker stop
            bodies = [read_to_end(sock, head.body) for sock, head in opened]
        finally:
            for sock, _ in opened:
                sock.close()

    for body in bodies:
        received = parse_sse(body.decode())
        assert received[-1]["event"] == "completed", [e["event"] for e in received]
        assert received[-1]["data"]["job_id"] == job_id

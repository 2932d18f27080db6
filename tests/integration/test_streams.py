"""Event streams are bounded per worker and per token, and a stream whose client has left
ends at once and gives its place back (the bound under real Gunicorn is in
test_async_gunicorn.py)."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from imagegen.books.files import FileJobBook
from imagegen.books.interfaces import Lease
from imagegen.jobs.events import client_gone
from imagegen.services import services
from tests.support.jobs import ASYNC
from tests.support.service import ALICE, BOB, bearer, line, wait_for


@pytest.fixture
def holder(settings) -> Iterator[Lease]:
    """The only running slot (tests run with max_running_jobs=1), held: jobs stay queued,
    so their streams stay open."""
    slot = FileJobBook(settings.images_dir, fsync=False, max_running=1).take_slot()
    assert slot is not None
    yield slot
    slot.release()


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on 127.0.0.1, as Gunicorn has with its client: (server's end,
    client's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client_side = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    with server_side, client_side:
        yield server_side, client_side


def queued_job(client: FlaskClient, **headers: str) -> str:
    answer = client.post("/generate", json={"prompt": "wait"}, headers={**ASYNC, **headers})
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


def open_stream(client: FlaskClient, job_id: str, **options: Any) -> Any:
    response = client.get(f"/jobs/{job_id}/events", buffered=False, **options)
    assert response.status_code == 200, response.get_data()
    return response


def assert_refused(response: Any, status: int, scope: str) -> None:
    assert response.status_code == status
    body = response.get_json()
    assert body["code"] == "TOO_MANY_STREAMS" and body["scope"] == scope
    assert response.headers["Retry-After"].isdigit()


def test_a_worker_refuses_a_stream_over_its_bound_and_takes_one_again_once_one_closes(
    make_jobs_app, holder, fake_openai
):
    client = make_jobs_app(max_running_jobs=1, max_streams=2).test_client()
    job_id = queued_job(client)
    first, second = open_stream(client, job_id), open_stream(client, job_id)

    refused = client.get(f"/jobs/{job_id}/events")

    assert_refused(refused, 503, "worker")
    assert client.get(f"/jobs/{job_id}").status_code == 200  # polling still answers
    stored = client.post("/generate", json={"prompt": "now"}).get_json()["job_id"]
    assert client.get(f"/jobs/{stored}/events").status_code == 200  # ends at once: no place
    first.close()
    open_stream(client, job_id).close()
    second.close()


def test_one_token_is_refused_a_stream_over_its_own_bound_while_others_are_served(
    with_tokens, settings, holder, fake_openai
):
    client = with_tokens(
        line("alice", ALICE), line("bob", BOB), max_running_jobs=1, max_streams_per_token=1
    )
    try:
        job_id = queued_job(client, **bearer(ALICE))
        alice = open_stream(client, job_id, headers=bearer(ALICE))

        assert_refused(client.get(f"/jobs/{job_id}/events", headers=bearer(ALICE)), 429, "token")
        open_stream(client, job_id, headers=bearer(BOB)).close()
        alice.close()
        open_stream(client, job_id, headers=bearer(ALICE)).close()
    finally:
        services(client.application).jobs.shutdown(5)


def test_a_stream_whose_client_has_left_ends_and_gives_its_place_back(
    make_jobs_app, holder, fake_openai, connection
):
    client = make_jobs_app(max_running_jobs=1, max_streams=1).test_client()
    job_id = queued_job(client)
    server_side, client_side = connection
    response = open_stream(client, job_id, environ_overrides={"gunicorn.socket": server_side})
    stream = iter(response.response)
    assert next(stream).startswith(b"retry:")
    assert b"event: status" in next(stream)
    assert_refused(client.get(f"/jobs/{job_id}/events"), 503, "worker")

    client_side.close()

    assert next(stream, None) is None  # ended, not waiting for a keep-alive write
    open_stream(client, job_id).close()  # its place is free before the server closes it
    response.close()


def test_a_client_that_sends_more_is_still_there_and_nothing_it_sent_is_consumed(connection):
    server_side, client_side = connection
    gone = client_gone({"gunicorn.socket": server_side})
    assert not gone()
    client_side.sendall(b"GET /next")
    wait_for(lambda: select.select([server_side], [], [], 0)[0], what="the bytes to arrive")
    assert not gone()
    assert server_side.recv(9) == b"GET /next"
    client_side.shutdown(socket.SHUT_WR)
    assert wait_for(gone, what="the half-close to be seen")
    assert not client_gone({})()  # no socket (Flask's test client): never "gone"


def test_a_client_that_sent_more_and_then_left_is_gone(connection):
    # A TLS client's close_notify, or a request pipelined before closing: bytes wait
    # unread ahead of the end, and the client has still left.
    server_side, client_side = connection
    gone = client_gone({"gunicorn.socket": server_side})
    client_side.sendall(b"\x15\x03\x03\x00\x02\x01\x00")
    client_side.close()
    assert wait_for(gone, what="the close to be seen")

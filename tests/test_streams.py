"""An event stream notices that its client has left, without reading from its socket."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from imagegen.events import client_gone
from tests.conftest import wait_for


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on 127.0.0.1, as Gunicorn has with its client: (server's end,
    client's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client_side = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    with server_side, client_side:
        yield server_side, client_side


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

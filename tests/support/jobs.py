"""Asynchronous jobs in tests: polling a job to its end, and a webhook receiver that checks
signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from typing import Any

from flask.testing import FlaskClient

from tests.support.service import wait_for

ASYNC = {"Prefer": "respond-async"}


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events as dicts: id, event, data (JSON); comments and the retry line dropped."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            events.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return events


SECRET = "a-webhook-secret-for-tests-0123456789"


def job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def finished(client: FlaskClient, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """Poll until the job is completed or failed (bounded)."""
    return wait_for(
        lambda: (body := job(client, job_id))["status"] in ("completed", "failed") and body,
        timeout,
        f"job {job_id} finishing",
    )


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails the first `failures` deliveries."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.received) <= receiver.failures
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/image?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(headers: dict[str, str], body: bytes, secret: bytes) -> bool:
    """A receiver's check, written from the Standard Webhooks spec, not from the service."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    offered = [s.partition(",")[2] for s in headers["webhook-signature"].split()]
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return fresh and any(hmac.compare_digest(expected, s) for s in offered)

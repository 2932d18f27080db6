"""The service under real Gunicorn on a free 127.0.0.1 port: the one way tests start it.

`run_gunicorn(directory, env)` (a context manager) or `launch_gunicorn(directory, env)` (the
caller stops it) start `gunicorn -c image-gen/gunicorn.conf.py wsgi:app` with a clean
environment and the test's pinned day (GUNICORN_COMMAND), wait until every worker runs and
`/health` answers, and give back a `Service`. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen import clock
from tests.support.clock import TODAY_VARIABLE

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
# Gunicorn's own command line, run with imagegen.clock.today pinned to IMAGE_GEN_TEST_TODAY.
GUNICORN_COMMAND = [
    sys.executable,
    "-m",
    "tests.support.pinned_gunicorn",
    "-c",
    "image-gen/gunicorn.conf.py",
    "wsgi:app",
]


@dataclass
class HTTPAnswer:
    """One HTTP answer; header names are lower-case. Also unpacks as `(status, body)`."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        return json.loads(self.body)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.status, self.body))

    def __getitem__(self, index: int) -> Any:
        return (self.status, self.body)[index]


@dataclass
class Service:
    """One Gunicorn master serving wsgi:app on 127.0.0.1, logging to a file."""

    port: int
    process: subprocess.Popen
    log: Path
    images: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> HTTPAnswer:
        """One JSON request; an answer for success and HTTP errors alike."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return HTTPAnswer(
                    response.status,
                    {k.lower(): v for k, v in response.headers.items()},
                    response.read(),
                )
        except urllib.error.HTTPError as error:
            return HTTPAnswer(
                error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()
            )

    def get(self, path: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        """A plain GET: (status, headers as sent, body) for success and HTTP errors alike."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def raw(self, data: bytes, timeout: float = 10.0) -> HTTPAnswer:
        """Send raw bytes, read until the server closes (or the timeout), parse the answer."""
        chunks: list[bytes] = []
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            # The server may answer and close before it has read everything we sent.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
        return parse_http(b"".join(chunks))

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    def wait_for_workers(
        self,
        count: int,
        exclude: set[int] = frozenset(),
        timeout: float = START_TIMEOUT,
        health: int = 200,
    ) -> list[int]:
        """Wait until `count` workers not in `exclude` run and `/health` answers `health`
        (503: up, with a dependency out of reach)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) >= count:
                try:
                    if self.request("GET", "/health", timeout=2).status == health:
                        return pids
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"gunicorn workers did not come up:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if the master has not exited after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid`, read from /proc (no psutil)."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(p) for p in children.read_text().split())
        except OSError:
            continue
    if found:
        return sorted(found)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return sorted(found)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return bool(match) and len(body) >= int(match[1])


def read_head(sock: socket.socket) -> HTTPAnswer:
    """An answer's head and what came of its body with it (all of it when it has a
    Content-Length), read from a raw connection within 10 s; the connection stays open."""
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if sep and (length is None or len(body) >= int(length[1])):
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return parse_http(data)


def parse_http(data: bytes) -> HTTPAnswer:
    """Parse a raw HTTP/1.x answer; status 0 when `data` is not one."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return HTTPAnswer(0, {}, data)
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HTTPAnswer(status, headers, body)


def service_environment(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its OPENAI_*, IMAGE_GEN_* or GUNICORN_* variables,
    with the service's pinned today (what `clock.today()` answers here) and then `env`."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "IMAGE_GEN_", "GUNICORN_"))
    }
    environment[TODAY_VARIABLE] = clock.today().isoformat()
    environment.update(env)
    return environment


def launch_gunicorn(
    directory: Path, env: dict[str, str] | None = None, *, health: int = 200
) -> Service:
    """Start Gunicorn with `env` over the defaults and wait until it serves (`/health`
    answering `health`); caller stops it.

    The process inherits no OPENAI_*, IMAGE_GEN_* or GUNICORN_* variable from the test run;
    its today is the test's (see service_environment). Defaults: 2 workers x 8 threads, 5 s
    graceful timeout, no fsync, no key (set OPENAI_API_KEY_FILE), images in
    `directory/images`, log in `directory/gunicorn.log`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = service_environment(
        {
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": "2",
            "GUNICORN_THREADS": "8",
            "GUNICORN_GRACEFUL_TIMEOUT": "5",
            "IMAGE_GEN_IMAGES_DIR": str(directory / "images"),
            "IMAGE_GEN_FSYNC": "false",
            "OPENAI_API_KEY_FILE": str(directory / "no-key-file"),
            **(env or {}),
        }
    )
    log = directory / "gunicorn.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            GUNICORN_COMMAND,
            cwd=REPO,
            env=environment,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    service = Service(port, process, log, Path(environment["IMAGE_GEN_IMAGES_DIR"]))
    try:
        service.wait_for_workers(int(environment["GUNICORN_WORKERS"]), health=health)
    except BaseException:
        service.stop()
        raise
    return service


@contextlib.contextmanager
def run_gunicorn(directory: Path, env: dict[str, str] | None = None) -> Iterator[Service]:
    """launch_gunicorn as a context manager: the service is stopped on exit."""
    service = launch_gunicorn(directory, env)
    try:
        yield service
    finally:
        service.stop()


def replica_environment(
    tmp_path: Path, fake_openai: Any, name: str, **extra: str
) -> dict[str, str]:
    """The environment of replica `name` of a test's service: two workers, the test key in
    a secret file, the fake upstream, one images directory shared by every replica (give
    IMAGE_GEN_IMAGES_DIR in `extra` for a replica's own), its own metrics, a short job poll."""
    from tests.support.service import TEST_KEY

    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    return {
        "GUNICORN_WORKERS": "2",
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
        "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "shared-images"),
        "IMAGE_GEN_METRICS_DIR": str(tmp_path / f"metrics-{name}"),
        "IMAGE_GEN_JOB_POLL_INTERVAL": "0.2",
        **extra,
    }

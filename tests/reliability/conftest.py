"""Shared pieces of the reliability suite: real Gunicorn, store invariants, leak detection.

Everything here talks only to 127.0.0.1 and is bounded in time: every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_KEY
from tests.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# --- JSON error contract -----------------------------------------------------------------


def assert_json_error(status: int, content_type: str, body: bytes, expected: int, code: str):
    """The service's own error shape: JSON {"error", "status": "failed", "code"}."""
    assert status == expected, (status, body[:300])
    assert content_type.split(";")[0].strip() == "application/json", content_type
    payload = json.loads(body)
    assert payload["status"] == "failed", payload
    assert payload["code"] == code, payload
    assert isinstance(payload["error"], str) and payload["error"], payload
    return payload


def assert_client_error(response, expected: int, code: str) -> dict[str, Any]:
    """assert_json_error for a Flask test-client response."""
    return assert_json_error(
        response.status_code, response.content_type, response.get_data(), expected, code
    )


# --- the images directory ----------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under `root` (the index included): kind and content hash or link target."""
    result: dict[str, tuple[str, str]] = {}
    if not root.exists():
        return result
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            result[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            result[rel] = ("dir", "")
        else:
            try:
                result[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            except FileNotFoundError:  # removed while we looked
                continue
    return result


def store_problems(root: Path, *, allow_staging: bool = False) -> list[str]:
    """Everything that breaks the store's promises; empty when the store is consistent.

    A job directory is complete (valid metadata.json, every available image present with
    its recorded sha256, every deleted image absent), index links point at available images,
    nothing half-written is visible. `allow_staging` tolerates what a killed writer leaves:
    `.tmp-*` staging directories and index links to jobs that never landed.
    """
    problems: list[str] = []
    if not root.exists():
        return problems
    index = root / ".index"
    available: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name == ".index":
            continue
        if name.startswith(".tmp-"):
            if not allow_staging:
                problems.append(f"staging leftover {name}")
            continue
        if not UUID.match(name) or not entry.is_dir() or entry.is_symlink():
            problems.append(f"unexpected entry {name}")
            continue
        meta_path = entry / "metadata.json"
        try:
            metadata = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            problems.append(f"job {name} has no metadata.json")
            continue
        except ValueError as exc:
            problems.append(f"job {name} metadata.json is not JSON: {exc}")
            continue
        if metadata.get("job_id") != name:
            problems.append(f"job {name} metadata names job {metadata.get('job_id')!r}")
        listed = {"metadata.json", ".lock"}
        for image in metadata.get("images", []):
            file_name = image.get("file", "")
            listed.add(file_name)
            path = entry / file_name
            if image.get("status") == "deleted":
                if path.exists():
                    problems.append(f"deleted image {file_name} still on disk in {name}")
                continue
            if not path.is_file():
                problems.append(f"available image {file_name} missing from {name}")
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != image.get("sha256"):
                problems.append(f"image {file_name} in {name} does not match its sha256")
            if len(data) != image.get("bytes"):
                problems.append(f"image {file_name} in {name} is not {image.get('bytes')} bytes")
            available[image["id"]] = path
            link = index / image["id"]
            if not link.is_symlink() or link.resolve() != path.resolve():
                problems.append(f"available image {image['id']} has no index link")
        for extra in sorted(p.name for p in entry.iterdir() if p.name not in listed):
            problems.append(f"job {name} holds an unlisted file {extra}")
    if index.exists():
        for link in sorted(index.iterdir()):
            if link.name in available:
                continue
            if not (allow_staging and link.is_symlink() and not link.exists()):
                problems.append(f"index entry {link.name} points at no available image")
    return problems


# --- leak detection ----------------------------------------------------------------------


def _secret_fragments(key: str) -> list[str]:
    """The key, every `sk-` prefix of it long enough to identify it, and 16-char windows."""
    fragments = {key}
    fragments.update(key[:n] for n in range(len("sk-proj-TE"), len(key)))
    fragments.update(key[i : i + 16] for i in range(len(key) - 15))
    return sorted(fragments, key=len)


SECRET_FRAGMENTS = _secret_fragments(TEST_KEY)


def leaked(text: str | bytes) -> list[str]:
    """Which fragments of TEST_KEY occur in `text` (empty if none)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [fragment for fragment in SECRET_FRAGMENTS if fragment in text]


@dataclass
class LogCapture:
    """The package's log lines, tracebacks included, as one string per record."""

    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class _ListHandler(logging.Handler):
    def __init__(self, sink: LogCapture) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.lines.append(self.format(record))


@pytest.fixture
def service_logs() -> Iterator[LogCapture]:
    """Capture every `imagegen` log record (the package logger does not propagate)."""
    sink = LogCapture()
    handler = _ListHandler(sink)
    logger = logging.getLogger("imagegen")
    logger.addHandler(handler)
    try:
        yield sink
    finally:
        logger.removeHandler(handler)


# --- real Gunicorn -----------------------------------------------------------------------


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


@dataclass
class HTTPAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class GunicornService:
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

    def wait_for_workers(self, count: int, exclude: set[int] = frozenset(), timeout=20.0):
        """Wait until `count` workers not in `exclude` run and the service answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) >= count:
                try:
                    if self.request("GET", "/health", timeout=2).status == 200:
                        return pids
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"gunicorn workers did not come up:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return bool(match) and len(body) >= int(match[1])


def parse_http(data: bytes) -> HTTPAnswer:
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


StartGunicorn = Callable[..., GunicornService]


@pytest.fixture
def start_gunicorn(tmp_path: Path, fake_openai: FakeOpenAI) -> Iterator[StartGunicorn]:
    """Start Gunicorn (gthread) against the fake upstream; every master is stopped at teardown.

    start_gunicorn(workers=1, threads=8, env={...}, key=TEST_KEY) -> GunicornService
    """
    started: list[GunicornService] = []

    def start(
        *,
        workers: int = 1,
        threads: int = 8,
        env: dict[str, str] | None = None,
        key: str | None = TEST_KEY,
        name: str = "gunicorn",
    ) -> GunicornService:
        base = tmp_path / name
        base.mkdir()
        port = free_port()
        images = base / "images"
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "IMAGE_GEN_", "GUNICORN_"))
        }
        environment.update(
            {
                "GUNICORN_BIND": f"127.0.0.1:{port}",
                "GUNICORN_WORKERS": str(workers),
                "GUNICORN_THREADS": str(threads),
                "GUNICORN_GRACEFUL_TIMEOUT": "10",
                "IMAGE_GEN_IMAGES_DIR": str(images),
                "OPENAI_API_KEY_FILE": str(base / "no-key-file"),
                "OPENAI_BASE_URL": fake_openai.base_url,
                "OPENAI_RETRY_BACKOFF": "0.01",
                "OPENAI_TIMEOUT": "10",
                "IMAGE_GEN_REQUEST_DEADLINE": "30",
            }
        )
        if key is not None:
            key_file = base / "openai_api_key"
            key_file.write_text(key + "\n")
            environment["OPENAI_API_KEY_FILE"] = str(key_file)
        environment.update(env or {})
        log = base / "gunicorn.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "image-gen/gunicorn.conf.py", "wsgi:app"],
                cwd=REPO,
                env=environment,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        service = GunicornService(port, process, log, images)
        started.append(service)
        try:
            service.wait_for_workers(workers)
        except AssertionError:
            service.stop()
            raise
        return service

    yield start
    for service in started:
        service.stop()

"""The service under real Gunicorn on a free 127.0.0.1 port, for tests that need processes."""

from __future__ import annotations

import contextlib
import json
import os
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

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    log: Path
    images: Path

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 30
    ) -> tuple[int, bytes]:
        """One JSON request; (status, body) for success and HTTP errors alike."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get(self, path: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def run_gunicorn(tmp_path: Path, env: dict[str, str]) -> Iterator[Service]:
    """Gunicorn serving the app on a free 127.0.0.1 port with `env`; stopped on exit.

    Defaults: 2 workers x 8 threads, no fsync, no key (override with OPENAI_API_KEY_FILE).
    """
    port = free_port()
    log = tmp_path / "gunicorn.log"
    full_env = {
        **os.environ,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "8",
        "GUNICORN_GRACEFUL_TIMEOUT": "5",
        "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "images"),
        "IMAGE_GEN_FSYNC": "false",
        "OPENAI_API_KEY_FILE": str(tmp_path / "no-key-file"),
        **env,
    }
    full_env.pop("OPENAI_API_KEY", None)
    with open(log, "wb") as log_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "image-gen/gunicorn.conf.py", "wsgi:app"],
            cwd=REPO,
            env=full_env,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", process, log, tmp_path / "images")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if service.get("/health", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("gunicorn did not start:\n" + log.read_text())
            time.sleep(0.1)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

"""Shared pieces of the reliability suite: real Gunicorn, store invariants, leak detection.

Everything here talks only to 127.0.0.1 and is bounded in time: every wait has a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gunicorn_server import Service, launch_gunicorn
from tests.support.service import TEST_KEY

# --- JSON error contract -----------------------------------------------------------------


# --- the images directory ----------------------------------------------------------------


# --- leak detection ----------------------------------------------------------------------


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

StartGunicorn = Callable[..., Service]


@pytest.fixture
def start_gunicorn(tmp_path: Path, fake_openai: FakeOpenAI) -> Iterator[StartGunicorn]:
    """Start Gunicorn (gthread) against the fake upstream; every master is stopped at teardown.

    start_gunicorn(workers=1, threads=8, env={...}, key=TEST_KEY) -> Service
    (tests/support/gunicorn_server.py's helper, with fsync on and quick upstream timeouts).
    """
    started: list[Service] = []

    def start(
        *,
        workers: int = 1,
        threads: int = 8,
        env: dict[str, str] | None = None,
        key: str | None = TEST_KEY,
        name: str = "gunicorn",
    ) -> Service:
        base = tmp_path / name
        base.mkdir()
        environment = {
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
            "IMAGE_GEN_FSYNC": "true",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_RETRY_BACKOFF": "0.01",
            "OPENAI_TIMEOUT": "10",
            "IMAGE_GEN_REQUEST_DEADLINE": "30",
        }
        if key is not None:
            key_file = base / "openai_api_key"
            key_file.write_text(key + "\n")
            environment["OPENAI_API_KEY_FILE"] = str(key_file)
        environment.update(env or {})
        service = launch_gunicorn(base, environment)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()

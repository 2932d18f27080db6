"""Shared fixtures: a fake OpenAI on 127.0.0.1, settings pointing at it, the app and a client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from imagegen import clock, create_app
from imagegen.access.tokens import parse_tokens
from imagegen.services import services
from imagegen.settings import Settings
from imagegen.storage.ownership import Process
from tests.support.clock import PinnedClock, run_day
from tests.support.fake_openai import FakeOpenAI
from tests.support.gunicorn_server import Service, run_gunicorn
from tests.support.seaweed import SeaweedFS, SeaweedUnavailable, weed_binary
from tests.support.service import (
    TEST_KEY,
)


@pytest.fixture(scope="session", autouse=True)
def _pinned_clock() -> Iterator[PinnedClock]:
    """The service's `clock.today` for the whole run, never the wall clock's day; set up
    before any other fixture, so module-scoped services see it too."""
    pinned = PinnedClock(run_day())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clock, "today", pinned)
        yield pinned


@pytest.fixture(autouse=True)
def today(_pinned_clock: PinnedClock) -> Iterator[PinnedClock]:
    """The service's today in this test: the run's day (tests/support/clock.py). A test
    about another day calls `today.set(day)`; Gunicorn started after that gets it too."""
    _pinned_clock.set(run_day())
    yield _pinned_clock
    _pinned_clock.set(run_day())


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(_fake_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake upstream, reset before each test: records requests, can be slow or fail."""
    _fake_server.reset()
    yield _fake_server
    _fake_server.reset()


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def settings(fake_openai: FakeOpenAI, images_dir: Path) -> Settings:
    """Settings for the OpenAI provider against the fake, with quick retries."""
    return Settings(
        images_dir=images_dir,
        provider="openai",
        api_key=TEST_KEY,
        api_key_source="secret_file",
        base_url=fake_openai.base_url,
        read_timeout=5.0,
        request_deadline=15.0,
        retry_backoff=0.01,
        max_retry_wait=2.0,
        fsync=False,
    )


@pytest.fixture
def make_app() -> Callable[..., Flask]:
    """Build an app from settings, with overrides: make_app(settings, provider="placeholder")."""

    def build(settings: Settings, **overrides: Any) -> Flask:
        app = create_app(replace(settings, **overrides))
        app.config["TESTING"] = True
        return app

    return build


@pytest.fixture
def make_jobs_app(
    settings: Settings, make_app: Callable[..., Flask]
) -> Iterator[Callable[..., Flask]]:
    """Apps with quick job polling and webhooks to 127.0.0.1; their runners stop afterwards."""
    built: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        options = {
            "job_poll_interval": 0.1,
            "webhook_hosts": ("127.0.0.1",),
            "webhook_backoff": 0.05,
            **overrides,
        }
        app = make_app(settings, **options)
        built.append(app)
        return app

    yield build
    for app in built:
        services(app).jobs.shutdown(10)


@pytest.fixture
def app(settings: Settings, make_app: Callable[..., Flask]) -> Flask:
    return make_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def placeholder_client(settings: Settings, make_app: Callable[..., Flask]) -> FlaskClient:
    """A client of a keyless app in placeholder mode."""
    return make_app(
        settings, provider="placeholder", api_key=None, api_key_source="none"
    ).test_client()


@pytest.fixture
def with_tokens(settings: Settings, make_app: Callable[..., Flask]) -> Callable[..., FlaskClient]:
    """A client of an app whose tokens file has these lines (plus setting overrides)."""

    def build(*lines: str, **overrides: Any) -> FlaskClient:
        return make_app(
            settings, tokens=parse_tokens(lines), tokens_file=Path("tokens"), **overrides
        ).test_client()

    return build


@pytest.fixture(scope="module")
def _upstream_gunicorn(tmp_path_factory, _fake_server) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("compat-upstream")
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    env = {
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": _fake_server.base_url,
        "OPENAI_MAX_RETRIES": "0",
    }
    with run_gunicorn(tmp_path, env) as service:
        yield service


@pytest.fixture
def upstream_service(_upstream_gunicorn, fake_openai) -> Service:
    """Gunicorn (shared by this module) with the OpenAI provider against the fake upstream,
    which is reset for each test; the service's own upstream retries are off."""
    return _upstream_gunicorn


@pytest.fixture(scope="module")
def placeholder_service(tmp_path_factory) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("compat-placeholder")
    with run_gunicorn(tmp_path, {"IMAGE_GEN_PROVIDER": "placeholder"}) as service:
        yield service


@pytest.fixture
def another_users(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], os.stat_result]:
    """another_users(path): make `path` belong to a uid other than the one the start-up
    messages say this process runs as (chowned away when the tests run as root, which
    owns nothing foreign otherwise); returns the path's owner. The caller makes the kernel
    refuse the access, which root would be granted."""

    def hand_over(path: Path) -> os.stat_result:
        if os.geteuid() == 0:
            os.chown(path, 4321, 4322)
        owner = path.stat()
        stranger = Process(uid=owner.st_uid + 1, gid=owner.st_gid + 1, root_on_host=0)
        monkeypatch.setattr(Process, "current", classmethod(lambda cls: stranger))
        return owner

    return hand_over


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS server (S3) for the session; the tests that need it are skipped, with
    the reason, where the `weed` binary is missing (tests/support/seaweed.py)."""
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        pytest.skip(f"S3 tests need SeaweedFS: {exc}")
    with SeaweedFS.started(tmp_path_factory.mktemp("seaweed")) as server:
        yield server

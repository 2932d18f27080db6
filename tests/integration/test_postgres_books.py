"""IMAGE_GEN_DATABASE_URL: the caps and the idempotency keys in PostgreSQL, through the HTTP
API, against a real server (tests/support/postgres.py)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from imagegen.settings import Settings
from tests.support.postgres import dsn_for
from tests.support.service import ALICE, BOB, bearer, line


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return dsn_for(tmp_path)


def test_caps_are_kept_in_the_database_and_usage_reads_them(
    with_tokens, fake_openai, database_url, images_dir
):
    client = with_tokens(
        line("alice", ALICE, "images_per_hour=3"), line("bob", BOB), database_url=database_url
    )
    ok = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=bearer(ALICE))
    assert ok.status_code == 200
    refused = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=bearer(ALICE))
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "QUOTA_EXCEEDED"
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    assert client.post("/generate", json={"prompt": "a"}, headers=bearer(BOB)).status_code == 200
    assert len(fake_openai.image_requests) == 2

    usage = client.get("/usage", headers=bearer(ALICE)).get_json()
    assert usage["token"]["images_last_hour"] == 2
    assert usage["global"]["images_last_hour"] == 3
    with psycopg.connect(database_url) as db:
        rows = db.execute("SELECT token, images, state FROM spend ORDER BY id").fetchall()
    assert rows == [("alice", 2, "settled"), ("bob", 1, "settled")]
    assert not (images_dir / ".ledger" / "ledger.sqlite3").exists()


def test_a_second_app_on_the_same_database_shares_the_caps(
    with_tokens, fake_openai, database_url, tmp_path
):
    tokens = (line("alice", ALICE, "images_per_hour=2"),)
    first = with_tokens(*tokens, database_url=database_url)
    other = with_tokens(*tokens, database_url=database_url, images_dir=tmp_path / "elsewhere")
    assert first.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE)).status_code == 200
    assert other.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE)).status_code == 200
    refused = other.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE))
    assert refused.status_code == 429


def test_an_idempotency_key_replays_from_the_database(
    client_for_database, fake_openai, database_url
):
    client = client_for_database(database_url)
    headers = {"Idempotency-Key": "k-pg-1"}
    first = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=headers)
    again = client.post("/generate", json={"count": 2, "prompt": "a fox"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/generate", json={"prompt": "a cat"}, headers=headers)
    assert other.status_code == 422
    assert len(fake_openai.image_requests) == 1
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT state FROM idempotency").fetchall() == [("done",)]


@pytest.fixture
def client_for_database(settings, make_app):
    return lambda url: make_app(settings, database_url=url).test_client()


def test_the_url_comes_from_a_secret_file_and_is_never_shown(tmp_path: Path):
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://app:s3cret-pw@db.example:5432/images\n")
    settings = Settings.from_env({"IMAGE_GEN_DATABASE_URL_FILE": str(secret)})
    assert settings.database_url == "postgresql://app:s3cret-pw@db.example:5432/images"
    assert "s3cret" not in repr(settings)
    direct = Settings.from_env({"IMAGE_GEN_DATABASE_URL": "postgres://u@h/d"})
    assert direct.database_url == "postgres://u@h/d"
    assert Settings.from_env({}).database_url is None


def test_a_url_that_is_not_postgresql_is_refused_without_echoing_it():
    from imagegen.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"IMAGE_GEN_DATABASE_URL": "mysql://u:hunter2@h/d"})
    assert "hunter2" not in str(refused.value)


def drop(database_url: str) -> None:
    """Drop the test's database under the app's feet (its connections are ended)."""
    name = database_url.rsplit("/", 1)[1]
    server_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_health_reports_the_database_and_an_unreachable_one_is_a_503(
    client_for_database, fake_openai, database_url, caplog
):
    client = client_for_database(database_url)
    healthy = client.get("/health")
    assert healthy.status_code == 200
    assert healthy.get_json()["database"] == "ok"
    assert client.post("/generate", json={"prompt": "a fox"}).status_code == 200

    drop(database_url)
    refused = client.post("/generate", json={"prompt": "a fox"})
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "DATABASE_UNAVAILABLE"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(fake_openai.image_requests) == 1  # nothing was asked of the upstream
    unhealthy = client.get("/health")
    assert unhealthy.status_code == 503
    assert unhealthy.get_json()["status"] == "unhealthy"
    assert unhealthy.get_json()["database"] == "unavailable"
    assert "postgresql://" not in caplog.text + unhealthy.get_data(as_text=True)


def test_health_has_no_database_entry_on_sqlite(client):
    assert "database" not in client.get("/health").get_json()


def test_the_books_connections_find_out_a_vanished_server_within_half_a_minute(
    database_url: str,
):
    # A server on a lost node sends no FIN: only TCP keep-alives and a user timeout on the
    # client's socket end the wait (else the kernel's ~15 minutes). Read on the socket.
    import socket

    from imagegen.books.postgres import open_pool

    pool = open_pool(database_url, min_size=1, max_size=1)
    try:
        with pool.connection(timeout=10) as db:
            sock = socket.socket(fileno=socket.dup(db.pgconn.socket))
            try:
                assert sock.family in (socket.AF_INET, socket.AF_INET6)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
            finally:
                sock.close()
            assert db.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_the_pool_connects_again_within_seconds_once_a_long_outage_ends():
    # After 20 s down, psycopg_pool's doubling waits (1, 2, 4, 8, 16 s) would have put the
    # next attempt 11 s after the server is back; the service is then 503 all that time.
    import time

    from psycopg_pool import PoolTimeout

    from imagegen.books.postgres import open_pool
    from tests.support.postgres import private_server
    from tests.support.service import wait_for

    def answers() -> bool:
        try:
            with pool.connection(timeout=1) as db:
                return db.execute("SELECT 1").fetchone() == (1,)
        except (PoolTimeout, psycopg.OperationalError):
            return False

    with private_server() as pg:
        pool = open_pool(pg.dsn, min_size=1, max_size=2, timeout=1)
        try:
            wait_for(answers, timeout=10, what="the pool's first connection")
            pg.halt()
            down_until = time.monotonic() + 20.0
            for _ in range(40):  # asked now and then while it is down, as the service does
                if time.monotonic() >= down_until:
                    break
                assert not answers()
                time.sleep(0.5)
            pg.resume()
            wait_for(answers, timeout=6, what="a connection within seconds of the server's return")
        finally:
            pool.close()

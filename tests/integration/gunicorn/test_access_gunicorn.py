"""Caps, idempotency and tokens under a real Gunicorn with several worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import fake_openai as fake
from tests.support.gunicorn_server import (
    GUNICORN_COMMAND,
    REPO,
    Service,
    run_gunicorn,
    service_environment,
)
from tests.support.service import ALICE, BOB, OPS, TEST_KEY, bearer, line, wait_for

pytestmark = pytest.mark.slow


def start(tmp_path: Path, fake_openai, tokens: list[str], **env: str):
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(tokens) + "\n")
    return run_gunicorn(
        tmp_path,
        {
            "GUNICORN_WORKERS": "3",
            "GUNICORN_THREADS": "40",
            "OPENAI_API_KEY_FILE": str(key_file),
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_RETRY_BACKOFF": "0.01",
            "IMAGE_GEN_TOKENS_FILE": str(tokens_file),
            **env,
        },
    )


def test_fifty_simultaneous_requests_against_a_cap_of_ten_make_exactly_ten_images(
    tmp_path, fake_openai
):
    fake_openai.latency = 0.3  # every call overlaps the others
    with start(tmp_path, fake_openai, [line("alice", ALICE, "images_per_hour=10")]) as svc:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(
                pool.map(
                    lambda i: svc.request(
                        "POST", "/generate", {"prompt": f"fox {i}"}, headers=bearer(ALICE)
                    ),
                    range(50),
                )
            )
        statuses = sorted(answer.status for answer in answers)
        assert statuses.count(200) == 10
        assert statuses.count(429) == 40
        assert {a.json()["code"] for a in answers if a.status == 429} == {"QUOTA_EXCEEDED"}
        jobs = [p for p in svc.images.iterdir() if not p.name.startswith(".")]
        assert len(jobs) == 10
        assert len(fake_openai.image_requests) == 10
        usage = svc.request("GET", "/usage", headers=bearer(ALICE)).json()["token"]
        assert usage["images_last_hour"] == 10


def test_idempotent_retries_racing_the_original_across_workers_make_one_job(tmp_path, fake_openai):
    fake_openai.enqueue(fake.slow(1.0))
    with start(tmp_path, fake_openai, [line("alice", ALICE)]) as svc:
        headers = {**bearer(ALICE), "Idempotency-Key": "race-1"}
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(
                pool.map(
                    lambda _: svc.request(
                        "POST", "/generate", {"prompt": "a fox"}, headers=headers
                    ),
                    range(8),
                )
            )
        assert {answer.status for answer in answers} == {200}
        assert len({answer.json()["job_id"] for answer in answers}) == 1
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 7
        assert len(fake_openai.image_requests) == 1


def test_a_tokens_file_with_a_bad_line_stops_the_service_at_start(tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{line('alice', ALICE)}\nbob {BOB} images_per_day=plenty\n")
    env = service_environment(
        {
            "GUNICORN_BIND": "127.0.0.1:0",
            "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "images"),
            "IMAGE_GEN_TOKENS_FILE": str(tokens_file),
            "IMAGE_GEN_PROVIDER": "placeholder",
        }
    )
    result = subprocess.run(
        GUNICORN_COMMAND,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "line 2: images_per_day must be a whole number" in output
    assert BOB not in output and ALICE not in output


# --- reloading the tokens file: SIGHUP ------------------------------------------------------
CAROL = "igt_carol-0123456789abcdefghijklmno"


def hang_up(svc: Service) -> list[int]:
    """SIGHUP the master, as `docker compose kill -s HUP` does; wait until every worker is a
    new one that answers; return the new workers' pids."""
    old = set(svc.worker_pids())
    os.kill(svc.process.pid, signal.SIGHUP)
    new = svc.wait_for_workers(len(old), exclude=old)
    wait_for(lambda: not old & set(svc.worker_pids()), what="the old workers to exit")
    return new


def statuses(svc: Service, secret: str, times: int = 12) -> set[int]:
    """The statuses of `times` GET /usage with this token, each on a new connection (so they
    spread over the workers)."""
    return {svc.request("GET", "/usage", headers=bearer(secret)).status for _ in range(times)}


def test_sighup_reloads_the_tokens_file_on_every_worker(tmp_path, fake_openai):
    with start(tmp_path, fake_openai, [line("alice", ALICE), line("bob", BOB)]) as svc:
        assert statuses(svc, BOB) == {200}
        # Revoke bob, add carol. Until the reload, every worker (a respawned one too) keeps
        # serving the tokens it started with: they never disagree.
        (tmp_path / "tokens").write_text(f"{line('alice', ALICE)}\n{line('carol', CAROL)}\n")
        (victim, *_) = svc.worker_pids()
        os.kill(victim, signal.SIGKILL)
        svc.wait_for_workers(3, exclude={victim})
        assert statuses(svc, BOB, 20) == {200}
        assert statuses(svc, CAROL, 20) == {401}

        hang_up(svc)

        assert statuses(svc, BOB, 20) == {401}
        assert statuses(svc, CAROL, 20) == {200}
        assert statuses(svc, ALICE) == {200}
        health = svc.request("GET", "/health").json()["tokens"]
        assert health["last_reload"] == "ok" and health["reload_failed_line"] is None
        assert "client tokens reloaded: 2 read from" in svc.log_text()


def test_a_bad_tokens_file_on_reload_keeps_the_last_good_tokens_everywhere(tmp_path, fake_openai):
    tokens = tmp_path / "tokens"
    with start(tmp_path, fake_openai, [line("alice", ALICE), line("bob", BOB)]) as svc:
        with tokens.open("a") as handle:  # an operator's typo, appended
            handle.write(f"carol {CAROL} images_per_day=plenty\n")

        hang_up(svc)

        assert statuses(svc, ALICE) == {200} and statuses(svc, BOB) == {200}
        assert statuses(svc, CAROL) == {401}
        for _ in range(6):  # every worker says the reload failed, and where
            body = svc.request("GET", "/health").json()
            assert body["status"] == "healthy"
            assert body["tokens"]["last_reload"] == "failed"
            assert body["tokens"]["reload_failed_line"] == 3
        log_text = svc.log_text()
        assert "client tokens NOT reloaded, the last good 2 stay in use" in log_text
        assert "line 3: images_per_day must be a whole number" in log_text
        # A worker respawned now serves the last good tokens too: the service stays up.
        (victim, *_) = svc.worker_pids()
        os.kill(victim, signal.SIGKILL)
        svc.wait_for_workers(3, exclude={victim})
        assert statuses(svc, BOB, 20) == {200}
        assert svc.process.poll() is None
        assert "Worker failed to boot" not in svc.log_text()

        tokens.write_text(f"{line('alice', ALICE)}\n{line('carol', CAROL)}\n")  # mended
        hang_up(svc)

        assert statuses(svc, CAROL) == {200} and statuses(svc, BOB) == {401}
        assert svc.request("GET", "/health").json()["tokens"]["last_reload"] == "ok"
    for secret in (ALICE, BOB, CAROL):
        assert secret not in svc.log_text()


def test_no_token_or_key_appears_in_logs_metadata_or_the_ledger(tmp_path, fake_openai):
    with start(
        tmp_path,
        fake_openai,
        [line("alice", ALICE, "images_per_hour=2"), f"bob {BOB}", line("ops", OPS, "admin")],
    ) as svc:
        svc.request("POST", "/generate", {"prompt": "a"}, headers=bearer(ALICE))
        svc.request("POST", "/generate", {"prompt": "b", "count": 2}, headers=bearer(ALICE))
        svc.request("POST", "/generate", {"prompt": "c"}, headers=bearer(BOB))
        svc.request("POST", "/generate", {"prompt": "d"}, headers=bearer(OPS))
        svc.request(
            "POST", "/generate", {"prompt": "e"}, headers=bearer("igt_wrong-guess-000000000")
        )
        svc.request(
            "POST", "/generate", {"prompt": "f"}, headers={**bearer(BOB), "Idempotency-Key": "i-1"}
        )
        svc.request("GET", "/usage", headers=bearer(OPS))
        time.sleep(0.2)
        log_text = svc.log_text()
        images = svc.images
    assert "client=alice" in log_text and "client=bob" in log_text
    stored = [log_text.encode()]
    for path in images.rglob("*"):
        if path.is_file():
            stored.append(path.read_bytes())
    blob = b"\n".join(stored)
    for secret in (ALICE, BOB, OPS, TEST_KEY, "igt_wrong-guess-000000000"):
        assert secret.encode() not in blob, f"a secret leaked: {secret[:8]}..."
    metadata = [json.loads(p.read_text()) for p in images.glob("*/metadata.json")]
    assert sorted(m["client"] for m in metadata) == ["alice", "bob", "bob"]

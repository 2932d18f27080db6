"""The models file under a real Gunicorn: the master reads it, every worker serves with it;
a bad file stops the start naming its key path; SIGHUP reloads it, and a bad reload keeps
the last good one. The official SDK reaches operator models through /v1."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gunicorn_server import (
    GUNICORN_COMMAND,
    REPO,
    Service,
    run_gunicorn,
    service_environment,
)
from tests.support.service import TEST_KEY, read_metadata, sdk, wait_for

pytestmark = pytest.mark.slow

XAI_KEY = "xai-key-0123456789-never-shown"

GOOD = """
[upstreams.xai]
kind = "openai"
base_url = "{xai}"
key_file = "xai_key"

[models."team-image"]
like = "gpt-image-2"

[models."grok-imagine-image"]
family = "openai-compatible"
sizes = ["1024x1024"]
count = {{ min = 1, max = 4 }}
upstream = "xai"
"""


@pytest.fixture
def xai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as second:
        yield second


def start(tmp_path: Path, fake_openai: FakeOpenAI, xai: FakeOpenAI, text: str):
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    (tmp_path / "xai_key").write_text(XAI_KEY + "\n")
    models = tmp_path / "models.toml"
    models.write_text(text.format(xai=xai.base_url))
    return run_gunicorn(
        tmp_path,
        {
            "GUNICORN_WORKERS": "2",
            "OPENAI_API_KEY_FILE": str(key_file),
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_MAX_RETRIES": "0",
            "IMAGE_GEN_MODELS_FILE": str(models),
        },
    )


def hang_up(svc: Service) -> None:
    """SIGHUP the master; wait until every worker is a new one that answers."""
    old = set(svc.worker_pids())
    os.kill(svc.process.pid, signal.SIGHUP)
    svc.wait_for_workers(len(old), exclude=old)
    wait_for(lambda: not old & set(svc.worker_pids()), what="the old workers to exit")


def model_ids(svc: Service) -> set[str]:
    return {model["id"] for model in svc.request("GET", "/models").json()["models"]}


def test_a_bad_models_file_stops_the_service_at_start_naming_the_key(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(
        '[models."team-image"]\nfamily = "openai-compatible"\nsizes = ["1024x1024"]\n'
        'count = { min = 1, max = "four" }\n'
    )
    env = service_environment(
        {
            "GUNICORN_BIND": "127.0.0.1:0",
            "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "images"),
            "IMAGE_GEN_MODELS_FILE": str(models),
            "IMAGE_GEN_PROVIDER": "placeholder",
        }
    )
    result = subprocess.run(
        GUNICORN_COMMAND, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode != 0
    assert 'models."team-image".count.max: must be an integer' in result.stdout + result.stderr


def test_the_sdk_reaches_an_alias_and_a_new_model_through_v1(tmp_path, fake_openai, xai):
    with start(tmp_path, fake_openai, xai, GOOD) as svc:
        client = sdk(svc)
        alias = client.images.generate(model="team-image", prompt="a lighthouse", size="1024x1024")
        new = client.images.generate(model="grok-imagine-image", prompt="a lighthouse", n=2)
        listed = {model.id: model for model in client.models.list()}

        assert base64.b64decode(alias.data[0].b64_json or "")
        assert len(new.data) == 2
        (sent,) = fake_openai.image_requests
        assert sent.json["model"] == "team-image"
        (other,) = xai.image_requests
        assert other.json["model"] == "grok-imagine-image" and other.json["n"] == 2
        assert other.header("authorization") == f"Bearer {XAI_KEY}"
        extra = listed["team-image"].model_extra or {}
        assert (extra["origin"], extra["like"]) == ("models_file", "gpt-image-2")
    assert XAI_KEY not in svc.log_text() and TEST_KEY not in svc.log_text()


def test_sighup_reloads_the_models_file_and_a_bad_reload_keeps_the_last_good(
    tmp_path, fake_openai, xai
):
    models = tmp_path / "models.toml"
    with start(tmp_path, fake_openai, xai, GOOD) as svc:
        assert {"team-image", "grok-imagine-image"} <= model_ids(svc)
        models.write_text(
            GOOD.format(xai=xai.base_url)
            + '\n[models."night-image"]\nlike = "gpt-image-2.5-flare"\n'
        )

        hang_up(svc)

        for _ in range(4):  # every worker serves the new file
            assert "night-image" in model_ids(svc)
            assert svc.request("GET", "/health").json()["models_file"]["last_reload"] == "ok"
        assert "models file reloaded from" in svc.log_text()

        models.write_text('[models."night-image"]\nlike = "gpt-image-2.5-flare"\nsize = 1\n')
        hang_up(svc)

        for _ in range(4):
            assert {"team-image", "night-image"} <= model_ids(svc)
            health = svc.request("GET", "/health").json()
            assert health["status"] == "healthy"
            assert health["models_file"]["last_reload"] == "failed"
            assert health["models_file"]["reload_failed_key"] == 'models."night-image".size'
        assert "models file NOT reloaded, the last good one stays in use" in svc.log_text()
        assert svc.process.poll() is None
    assert XAI_KEY not in svc.log_text()


def test_metadata_names_the_named_upstream_that_served(tmp_path, fake_openai, xai):
    with start(tmp_path, fake_openai, xai, GOOD) as svc:
        answer = svc.request(
            "POST", "/generate", {"prompt": "a lighthouse", "model": "grok-imagine-image"}
        ).json()

        assert answer["served_by"] == "xai"
        assert read_metadata(svc.images, answer["job_id"])["served_by"] == "xai"

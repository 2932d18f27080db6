"""Fixtures for the container tests: the built image and a Compose stack around it.

The stack runs where a Linux user runs it: a checkout in a temporary folder (the
repository's own docker-compose.yml, images/ and secrets/ with their READMEs, the key file
mode 600), every file owned by uid 1000, `docker compose up` with no chown and no .env.
An override adds a fake OpenAI upstream (tests/support/fake_openai.py in a stock python:3.13-slim
container) on the Compose network and shortens the healthcheck interval. Every wait is
bounded; teardown removes containers, networks, volumes, the image tag, and gives the
folder back to the test runner.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from .support import HOST_UID, REPO, Stack, clone, hand_back, run


def _no_engine(reason: str) -> NoReturn:
    """Skip, or fail where CONTAINER_TESTS_REQUIRED=1 says an engine must be there (CI)."""
    if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
        pytest.fail(f"container tests are required but cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip (with the reason) unless `docker version` reaches an engine."""
    if shutil.which("docker") is None:
        _no_engine("the docker CLI is not installed")
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        _no_engine("`docker version` did not answer within 30 s")
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        _no_engine(
            f"no Docker engine: `docker version` failed ({reason}); "
            "start one with ../shared/tools/docker-engine start"
        )
    if run(["docker", "compose", "version"], check=False, timeout=30).returncode != 0:
        _no_engine("the Docker Compose v2 plugin (`docker compose`) is not installed")


@pytest.fixture(scope="session")
def app_image(docker_engine: None) -> Iterator[str]:
    """The service image built from the repository's Dockerfile, under a unique tag."""
    tag = f"image-gen-test:{uuid.uuid4().hex[:12]}"
    run(["docker", "build", "--tag", tag, str(REPO)], timeout=600)
    yield tag
    run(["docker", "image", "rm", tag], check=False, timeout=60)


@pytest.fixture(scope="module")
def stack(app_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, up and healthy, in a checkout owned by uid 1000 with its key file mode 600."""
    directory = tmp_path_factory.mktemp("checkout")
    api_key = f"sk-container-test-{secrets.token_hex(16)}"
    clone(directory, app_image, owner=HOST_UID, api_key=api_key)
    stack = Stack.in_checkout(directory, app_image, api_key)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        hand_back(directory, app_image)

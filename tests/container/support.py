"""Helpers for the container tests: commands with deadlines, HTTP, and a Compose stack."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SWARM_FILE = REPO / "docker-compose.swarm.yml"
SERVICE = "image-gen"
# The image's own user (docker run, Swarm); Compose runs as the checkout's owner instead,
# by default the first user of a Linux system.
IMAGEGEN_UID = 10001
HOST_UID = 1000
# The fake upstream's answer time for every image call: long enough to stop the
# service in the middle of a generation, short enough to keep the stage quick.
FAKE_LATENCY_SECONDS = 3.0
FAKE_BASE_IMAGE = "python:3.13-slim"
OVERRIDE = "docker-compose.test.yml"
UP_TIMEOUT_SECONDS = 90

# Variables the compose file interpolates; the host's own values must not leak in.
_AMBIENT_PREFIXES = ("IMAGE_GEN_", "OPENAI_", "GUNICORN_", "COMPOSE_")


def run(
    args: list[str],
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a deadline; on failure, fail the test showing its output."""
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            input=stdin if stdin is not None else "",
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout:.0f} s: {exc.stderr!r}")
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without the variables docker-compose.yml reads, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_AMBIENT_PREFIXES)}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port that is free on loopback right now (never the default 5000)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    payload: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Response:
    """One HTTP request through the published port; HTTP errors are answers, not raises."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as answer:
            return Response(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers), exc.read())


def as_root(image: str, host_dir: Path, *command: str) -> None:
    """Run a command as root in a throwaway container with host_dir at /target.

    The host may be a CI runner without root, and the checkouts belong to other uids:
    preparing and removing those files goes through Docker like everything else.
    """
    run(
        ["docker", "run", "--rm", "--user", "0", "--network", "none",
         "-v", f"{host_dir}:/target", image, *command],
        timeout=60,
    )  # fmt: skip


def write_as_owner(image: str, host_dir: Path, name: str, text: str) -> None:
    """Write host_dir/name owned by host_dir's owner, as a user edits their own checkout."""
    script = 'printf "%s" "$1" > "/target/$2" && chown --reference=/target "/target/$2"'
    as_root(image, host_dir, "sh", "-c", script, "sh", text, name)


def clone(directory: Path, image: str, *, owner: int, api_key: str, key_mode: int = 0o600) -> None:
    """A checkout as a Linux user has it after `git clone` and the README's key step: the
    compose file, images/ and secrets/ with their READMEs, the key file (mode 600), all
    owned by uid:gid `owner`. The test override is the only file a user would not have."""
    directory.chmod(0o755)
    shutil.copy(COMPOSE_FILE, directory / COMPOSE_FILE.name)
    for folder in ("images", "secrets"):
        (directory / folder).mkdir()
        shutil.copy(REPO / folder / "README.md", directory / folder / "README.md")
    key = directory / "secrets" / "openai_api_key.txt"
    key.write_text(api_key, encoding="utf-8")
    write_override(directory)
    owned = f"chown -R {owner}:{owner} /target && chmod {key_mode:o} /target/secrets/{key.name}"
    as_root(image, directory, "sh", "-c", owned)


def hand_back(directory: Path, image: str) -> None:
    """Give the checkout, and what the service wrote in it, back to the test runner."""
    as_root(image, directory, "chown", "-R", f"{os.getuid()}:{os.getgid()}", "/target")


@dataclass
class Stack:
    """A Compose project of docker-compose.yml plus the test override, in its own folder."""

    project: str
    directory: Path
    image: str
    port: int
    api_key: str
    files: list[Path] = field(default_factory=list)

    @classmethod
    def in_checkout(cls, directory: Path, image: str, api_key: str) -> Stack:
        """The checkout's own docker-compose.yml plus the test override, on a free port."""
        return cls(
            project=f"igtest-{uuid.uuid4().hex[:10]}",
            directory=directory,
            image=image,
            port=free_port(),
            api_key=api_key,
            files=[directory / COMPOSE_FILE.name, directory / OVERRIDE],
        )

    @property
    def images_dir(self) -> Path:
        return self.directory / "images"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return clean_env(
            IMAGE_GEN_IMAGE=self.image,
            IMAGE_GEN_HOST="127.0.0.1",
            IMAGE_GEN_PORT=str(self.port),
        )

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "--project-name", self.project,
                   "--project-directory", str(self.directory)]  # fmt: skip
        for path in self.files:
            command += ["--file", str(path)]
        return run([*command, *args], timeout=timeout, check=check, env=self.env())

    def start(self) -> None:
        """Start the stack without waiting for health: for services expected to fail."""
        self.compose("up", "--detach", "--no-build", timeout=UP_TIMEOUT_SECONDS)

    def up(self) -> None:
        """Start (or keep) the stack and wait until every service is running and healthy."""
        result = self.compose(
            "up", "--detach", "--no-build", "--wait", "--wait-timeout", str(UP_TIMEOUT_SECONDS),
            timeout=UP_TIMEOUT_SECONDS + 60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            health = run(
                ["docker", "inspect", "--format", "{{json .State.Health}}", self.container_id()],
                check=False,
            ).stdout
            pytest.fail(
                f"docker compose up --wait failed:\n{result.stderr[-3000:]}\n"
                f"{SERVICE} health: {health[-2000:]}\n{SERVICE} logs:\n{self.logs()[-4000:]}"
            )

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)

    def container_id(self) -> str:
        ids = self.compose("ps", "--all", "--quiet", SERVICE).stdout.split()
        assert len(ids) == 1, f"expected one {SERVICE} container, found {ids}"
        return ids[0]

    def inspect(self) -> dict[str, Any]:
        return json.loads(run(["docker", "inspect", self.container_id()]).stdout)[0]

    def logs(self, service: str = SERVICE) -> str:
        result = self.compose("logs", "--no-color", "--no-log-prefix", service)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> str:
        return self.compose("exec", "-T", SERVICE, *command, timeout=60).stdout

    def get(self, path: str, **kwargs: Any) -> Response:
        return http("GET", self.base_url + path, **kwargs)

    def post(self, path: str, payload: Any, **kwargs: Any) -> Response:
        return http("POST", self.base_url + path, payload, **kwargs)


def write_override(directory: Path) -> Path:
    """The test-only Compose override: the fake upstream and a quick healthcheck."""
    fake = REPO / "tests" / "support" / "fake_openai.py"
    override = directory / OVERRIDE
    override.write_text(
        f"""\
services:
  {SERVICE}:
    environment:
      OPENAI_BASE_URL: http://fake-openai:8080/v1
    depends_on: [fake-openai]
    healthcheck:
      interval: 1s
  fake-openai:
    image: {FAKE_BASE_IMAGE}
    command: ["python", "/fake/fake_openai.py", "--host", "0.0.0.0", "--port", "8080",
              "--latency", "{FAKE_LATENCY_SECONDS}"]
    volumes:
      - {fake}:/fake/fake_openai.py:ro
    read_only: true
    stop_grace_period: 5s
""",
        encoding="utf-8",
    )
    return override


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until predicate() is truthy and return it; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)

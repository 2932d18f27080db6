"""The image as users run it: docker-compose.yml up, proven through the published port."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .support import (
    COMPOSE_FILE,
    IMAGEGEN_UID,
    SERVICE,
    Response,
    Stack,
    as_root,
    clean_env,
    free_port,
    run,
    wait_for,
)

pytestmark = pytest.mark.container

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def generated(stack: Stack) -> dict[str, Any]:
    """One generation through the fake upstream: the response and the downloaded bytes."""
    answer = stack.post("/generate", {"prompt": "a lighthouse at dusk", "count": 1}, timeout=60)
    assert answer.status == 200, answer.body
    job = answer.json()
    image = job["images"][0]
    download = stack.get(image["url"])
    assert download.status == 200, download.body
    return {"job": job, "image": image, "bytes": download.body}


def test_health_reports_the_key_configured_from_the_secret(stack: Stack) -> None:
    answer = stack.get("/health")
    assert answer.status == 200
    body = answer.json()
    assert body["status"] == "healthy"
    assert body["api_key_configured"] is True
    assert body["api_key_source"] == "secret_file"


def test_every_process_runs_as_imagegen_not_root(stack: Stack) -> None:
    listing = stack.exec(
        "python",
        "-c",
        "import os, pwd\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        uid = os.stat(f'/proc/{pid}').st_uid\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ')\n"
        "    except FileNotFoundError:\n"
        "        continue\n"
        "    print(uid, pwd.getpwuid(uid).pw_name, ' '.join(cmd.decode().split()))\n",
    )
    processes = [line.split(" ", 2) for line in listing.splitlines() if line.strip()]
    gunicorn = [p for p in processes if "gunicorn" in p[2]]
    assert len(gunicorn) >= 2, listing  # the arbiter and at least one worker
    assert {(uid, name) for uid, name, _ in processes} == {(str(IMAGEGEN_UID), "imagegen")}
    pid1 = stack.exec("cat", "/proc/1/cmdline").replace("\0", " ")
    assert "gunicorn" in pid1, "Gunicorn must be PID 1 so docker stop's SIGTERM reaches it"


def test_root_filesystem_is_read_only_and_tmp_is_writable(stack: Stack) -> None:
    probe = (
        "import tempfile\n"
        "try:\n"
        "    open('/app/probe', 'w')\n"
        "except OSError as exc:\n"
        "    print('root:', exc.strerror)\n"
        "with tempfile.NamedTemporaryFile() as handle:\n"
        "    print('tmp:', handle.name)\n"
    )
    output = stack.exec("python", "-c", probe)
    assert "root: Read-only file system" in output
    assert "tmp: /tmp/" in output
    host_config = stack.inspect()["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]


def test_images_live_on_one_bind_mount_and_no_volume_is_created(stack: Stack) -> None:
    mounts = stack.inspect()["Mounts"]
    at_images = [m for m in mounts if m["Destination"] == "/app/images"]
    assert len(at_images) == 1
    assert at_images[0]["Type"] == "bind"
    assert Path(at_images[0]["Source"]) == stack.images_dir
    assert not [m for m in mounts if m["Type"] == "volume"], mounts


def test_generation_is_stored_under_host_images_in_the_documented_layout(
    stack: Stack, generated: dict[str, Any]
) -> None:
    job, image = generated["job"], generated["image"]
    assert job["status"] == "completed"
    assert re.fullmatch(UUID, job["job_id"]) and re.fullmatch(UUID, image["id"])
    assert image["url"] == f"/images/{image['id']}"

    job_dir = stack.images_dir / job["job_id"]
    stored = job_dir / f"001-{image['id']}.png"
    assert stored.is_file(), sorted(p.name for p in stack.images_dir.iterdir())
    assert stored.read_bytes() == generated["bytes"]
    assert generated["bytes"].startswith(b"\x89PNG\r\n\x1a\n")
    assert stored.stat().st_uid == IMAGEGEN_UID

    metadata = json.loads((job_dir / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["job_id"] == job["job_id"]
    assert metadata["images"][0]["sha256"] == hashlib.sha256(generated["bytes"]).hexdigest()
    link = stack.images_dir / ".index" / image["id"]
    assert link.is_symlink() and link.resolve() == stored.resolve()


def test_the_key_is_absent_from_inspect_environment_logs_and_images(
    stack: Stack, generated: dict[str, Any]
) -> None:
    key = stack.api_key
    container = stack.container_id()
    assert key not in run(["docker", "inspect", container]).stdout
    assert key not in run(["docker", "image", "inspect", stack.image]).stdout
    assert key not in stack.exec("env")
    environ = stack.exec("python", "-c", "print(open('/proc/1/environ').read())")
    assert "OPENAI_API_KEY=" not in environ and key not in environ
    assert key not in stack.logs(SERVICE)
    assert key not in stack.logs("fake-openai")
    for path in stack.images_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    # ...while the service does hold it, read from the mounted secret.
    assert stack.exec("cat", "/run/secrets/openai_api_key").strip() == key


def test_the_healthcheck_turns_healthy(stack: Stack) -> None:
    image_check = json.loads(
        run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Healthcheck}}", stack.image]
        ).stdout
    )
    assert "/app/healthcheck.py" in " ".join(image_check["Test"])

    def healthy_with_passing_probes() -> dict[str, Any] | None:
        health = stack.inspect()["State"]["Health"]
        if health["Status"] == "healthy" and any(p["ExitCode"] == 0 for p in health["Log"]):
            return health
        return None

    health = wait_for(healthy_with_passing_probes, 30, "the container healthcheck to pass")
    assert "200" in health["Log"][-1]["Output"]


def test_images_survive_compose_down_and_up(stack: Stack, generated: dict[str, Any]) -> None:
    before = stack.container_id()
    started = time.monotonic()
    stack.compose("down", timeout=180)  # with the file's own stop_grace_period
    took = time.monotonic() - started
    assert took < 20, f"an idle service should stop at once on SIGTERM, took {took:.1f} s"
    assert not stack.compose("ps", "--all", "--quiet").stdout.strip()
    stack.up()
    assert stack.container_id() != before

    again = stack.get(generated["image"]["url"])
    assert again.status == 200
    assert again.body == generated["bytes"]


def test_docker_stop_lets_an_in_flight_generation_finish(stack: Stack) -> None:
    request_id = f"stop-{uuid.uuid4().hex[:12]}"
    result: dict[str, Response] = {}

    answered_at: list[float] = []

    def generate() -> None:
        result["answer"] = stack.post(
            "/generate",
            {"prompt": "a slow painting", "count": 1},
            headers={"X-Request-ID": request_id},
            timeout=90,
        )
        answered_at.append(time.monotonic())

    client = threading.Thread(target=generate, daemon=True)
    client.start()
    wait_for(
        lambda: f"generating request_id={request_id}" in stack.logs(SERVICE),
        30,
        "the generation to reach the service",
    )
    started = time.monotonic()
    stack.compose("stop", SERVICE, timeout=180)  # waits up to stop_grace_period
    stopped_after = time.monotonic() - started
    client.join(timeout=60)

    answer = result.get("answer")
    assert answer is not None, "the client got no answer"
    assert answer.status == 200, answer.body
    assert answered_at[0] > started, "the generation must still be running when stop begins"
    assert "Handling signal: term" in stack.logs(SERVICE)
    image = answer.json()["images"][0]
    job_dir = stack.images_dir / answer.json()["job_id"]
    assert (job_dir / f"001-{image['id']}.png").is_file()

    state = stack.inspect()["State"]
    assert state["Running"] is False
    assert state["ExitCode"] == 0, state
    assert stopped_after < 60, f"stop took {stopped_after:.1f} s"
    stack.up()


def test_unwritable_images_folder_fails_at_start_with_the_command_to_run(
    app_image: str, tmp_path: Path
) -> None:
    """./images created by Docker (root-owned) is not writable by uid 10001: say what to run."""
    tmp_path.chmod(0o755)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "openai_api_key.txt").write_text("sk-unused", encoding="utf-8")
    project = f"igtest-{uuid.uuid4().hex[:10]}"
    command = ["docker", "compose", "--project-name", project,
               "--project-directory", str(tmp_path), "--file", str(COMPOSE_FILE)]  # fmt: skip
    env = clean_env(IMAGE_GEN_IMAGE=app_image, IMAGE_GEN_PORT=str(free_port()))
    try:
        run([*command, "up", "--detach", "--no-build"], env=env, timeout=120)
        assert (tmp_path / "images").is_dir(), "Docker should have created ./images"

        def failure_logged() -> str | None:
            logs = run([*command, "logs", "--no-color", SERVICE], env=env).stdout
            return logs if "sudo chown" in logs else None

        logs = wait_for(failure_logged, 60, "the start-up failure message", interval=0.5)
        assert f"chown -R {IMAGEGEN_UID}:{IMAGEGEN_UID}" in logs
        assert "not writable" in logs
    finally:
        run([*command, "down", "--volumes", "--timeout", "5"], env=env, check=False)
        as_root(app_image, tmp_path, "rm", "-rf", "/target/images")

"""The image as users run it: docker-compose.yml up in a checkout, proven through the port."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import (
    HOST_UID,
    IMAGEGEN_UID,
    SERVICE,
    Response,
    Stack,
    as_root,
    clone,
    hand_back,
    run,
    wait_for,
    write_as_owner,
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


# Each process's ids, capabilities and no_new_privs flag, read from /proc: names need no
# /etc/passwd entry (uid 1000 has none in the image).
PROCESSES = """\
import json, os
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        status = dict(line.split(':', 1) for line in open(f'/proc/{pid}/status'))
        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()
    except FileNotFoundError:
        continue
    fields = {k: status[k].split() for k in ('Uid', 'Gid', 'CapEff', 'NoNewPrivs')}
    print(json.dumps({**fields, 'cmd': cmd}))
"""


def test_every_process_runs_as_the_checkout_owner_never_root(stack: Stack) -> None:
    processes = [json.loads(line) for line in stack.exec("python", "-c", PROCESSES).splitlines()]
    gunicorn = [p for p in processes if "gunicorn" in p["cmd"]]
    assert len(gunicorn) >= 2, processes  # the arbiter and at least one worker
    for process in processes:  # real, effective, saved and filesystem ids alike
        assert process["Uid"] == [str(HOST_UID)] * 4, process
        assert process["Gid"] == [str(HOST_UID)] * 4, process
        assert process["CapEff"] == ["0000000000000000"], process
        assert process["NoNewPrivs"] == ["1"], process
    assert stack.inspect()["Config"]["User"] == f"{HOST_UID}:{HOST_UID}"
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
    # Everything the service wrote belongs to the checkout's owner: no chown, no sudo.
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in stack.images_dir.rglob("*")}
    assert owners == {(HOST_UID, HOST_UID)}

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


@pytest.fixture
def checkout(app_image: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """checkout(owner=, key_mode=): a stack in a fresh checkout of that owner, not started."""
    made: list[Stack] = []

    def make(*, owner: int = HOST_UID, key_mode: int = 0o600) -> Stack:
        directory = tmp_path / f"checkout-{len(made)}"
        directory.mkdir()
        api_key = f"sk-container-test-{secrets.token_hex(16)}"
        clone(directory, app_image, owner=owner, api_key=api_key, key_mode=key_mode)
        made.append(Stack.in_checkout(directory, app_image, api_key))
        return made[-1]

    yield make
    for stack in made:
        stack.down()
        hand_back(stack.directory, app_image)


def start_up_failure(stack: Stack, says: str) -> str:
    """Start the stack and return its log once the service has said `says` (it must)."""

    def said() -> str | None:
        logs = stack.logs()
        return logs if says in logs else None

    stack.start()
    logs = wait_for(said, 60, f"the start-up failure saying {says!r}", interval=0.5)
    assert stack.inspect()["State"]["Health"]["Status"] != "healthy"
    # Out of its restart loop while the test mends what the log named, as a user reading the
    # log would be: a restart racing the mend would fail `up --wait` with nothing wrong left.
    stack.compose("stop", SERVICE)
    return logs


@pytest.mark.parametrize(
    ("owner", "images_owner", "key_mode"),
    [
        pytest.param(1001, 1001, 0o600, id="checkout-of-uid-1001"),
        # What the README of the uid-10001 release had users run (chown 10001 images,
        # chmod 644 the key), with the counts that service left in images/.metrics.
        pytest.param(HOST_UID, IMAGEGEN_UID, 0o644, id="images-of-the-uid-10001-release"),
    ],
)
def test_another_uid_fails_at_start_naming_the_env_line_and_starts_with_it(
    checkout: Callable[..., Stack], app_image: str, owner: int, images_owner: int, key_mode: int
) -> None:
    stack = checkout(owner=owner, key_mode=key_mode)
    if images_owner != owner:
        as_root(app_image, stack.directory, "sh", "-c",
                "mkdir /target/images/.metrics && touch /target/images/.metrics/process-7.metrics"
                f" && chown -R {images_owner}:{images_owner} /target/images")  # fmt: skip
    line = f"IMAGE_GEN_USER={images_owner}:{images_owner}"

    logs = start_up_failure(stack, "is not writable by this service")

    told = f"add the line {line} to the .env file beside docker-compose.yml"
    refusal = next(entry for entry in logs.splitlines() if "The images directory" in entry)
    assert f"owned by uid {images_owner}, gid {images_owner}" in refusal
    assert f"runs as uid {HOST_UID}, gid {HOST_UID}" in refusal and told in refusal
    if key_mode == 0o600:  # the key file is the other user's too, and says the same line
        unread = next(entry for entry in logs.splitlines() if "cannot read the API key" in entry)
        assert "/run/secrets/openai_api_key: Permission denied" in unread and told in unread
    assert stack.api_key not in logs

    write_as_owner(app_image, stack.directory, ".env", line + "\n")
    stack.up()

    health = stack.get("/health").json()
    assert health["status"] == "healthy" and health["api_key_configured"] is True
    answer = stack.post("/generate", {"prompt": "a lighthouse", "count": 1}, timeout=60)
    assert answer.status == 200, answer.body
    image = answer.json()["images"][0]
    stored = stack.images_dir / answer.json()["job_id"] / f"001-{image['id']}.png"
    assert (stored.stat().st_uid, stored.stat().st_gid) == (images_owner, images_owner)


@pytest.mark.parametrize(
    ("leave", "says", "owned"),
    [
        # A missing ./images is created by Docker, owned by root.
        pytest.param(
            "rm -r /target/images",
            "is not writable by this service",
            "It is owned by uid 0, gid 0",
            id="images-docker-created-as-root",
        ),
        # The uid-10001 release's folder, given back to its user without -R.
        pytest.param(
            "cd /target/images && mkdir .ledger .metrics"
            " && touch .ledger/ledger.sqlite3 .metrics/process-7.metrics"
            f" && chown -R {IMAGEGEN_UID}:{IMAGEGEN_UID} . && chown {HOST_UID}:{HOST_UID} .",
            "which this service cannot write",
            f"owned by uid {IMAGEGEN_UID}, gid {IMAGEGEN_UID} (mode 755), images itself by uid"
            f" {HOST_UID}",
            id="images-of-the-uid-10001-release-chowned-back-without-r",
        ),
    ],
)
def test_images_folder_of_root_or_half_anothers_fails_at_start_naming_the_chown_that_fixes_it(
    checkout: Callable[..., Stack], app_image: str, leave: str, says: str, owned: str
) -> None:
    stack = checkout()
    as_root(app_image, stack.directory, "sh", "-c", leave)

    logs = start_up_failure(stack, says)

    chown = f"sudo chown -R {HOST_UID}:{HOST_UID} images"
    assert owned in logs and f"`{chown}` beside docker-compose.yml" in logs
    assert "add the line IMAGE_GEN_USER" not in logs  # neither root nor 10001 could take it

    as_root(app_image, stack.directory, *chown.split()[1:-1], "/target/images")
    stack.up()

    health = stack.get("/health").json()
    assert health["status"] == "healthy" and health["api_key_configured"] is True


def test_image_gen_user_0_is_refused_at_start_naming_the_checkout_owner(
    checkout: Callable[..., Stack], app_image: str
) -> None:
    stack = checkout()
    write_as_owner(app_image, stack.directory, ".env", "IMAGE_GEN_USER=0:0\n")

    logs = start_up_failure(stack, "does not run as root")

    assert stack.inspect()["Config"]["User"] == "0:0"
    assert f"set the line IMAGE_GEN_USER={HOST_UID}:{HOST_UID} (the owner of /app/images)" in logs
    owners = {p.lstat().st_uid for p in stack.directory.rglob("*")}
    assert owners == {HOST_UID}, "root wrote nothing in the checkout"

"""docker-compose.replicas.yml on a real single-node Swarm: three replicas sharing an S3 bucket
and a PostgreSQL database serve as one service, and a job whose replica is killed is finished
by another.

Registries are out of reach, so the database and the S3 service are the test stand-ins of
tests/container/standins (PostgreSQL 18 and SeaweedFS from their wheels). No IPVS here: the
test stack uses `endpoint_mode: dnsrr` and drops the published port, and every request goes
from a client container on the stack's overlay network to one replica's task address
(`tasks.image-gen`), so the test chooses which replica answers.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import FAKE_BASE_IMAGE, REPO, run, wait_for

pytestmark = pytest.mark.container

STACK_FILE = REPO / "docker-compose.replicas.yml"
STANDINS = REPO / "tests" / "container" / "standins"
REPLICAS = 3
DEPLOY_TIMEOUT = 240.0
BUCKET = "images"
S3_KEY, S3_SECRET = "stack-test-key", "stack-test-secret-" + secrets.token_hex(8)

# Runs in the client container: one HTTP request, its status and body (as JSON) printed.
REQUEST = """\
import json, sys, urllib.error, urllib.request
method, url, body, headers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
data = body.encode() if body else None
if data:
    headers["Content-Type"] = "application/json"
req = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=60) as answer:
        status, raw = answer.status, answer.read()
except urllib.error.HTTPError as error:
    status, raw = error.code, error.read()
except OSError as error:
    status, raw = 0, str(error).encode()
import hashlib
print(json.dumps({"status": status, "sha256": hashlib.sha256(raw).hexdigest(),
                  "text": raw[:20000].decode("utf-8", "replace")}))
"""

ADDRESSES = """\
import json, socket
print(json.dumps(sorted({a[4][0] for a in socket.getaddrinfo("tasks.image-gen", 5000)})))
"""

MAKE_BUCKET = f"""\
import boto3
s3 = boto3.client("s3", endpoint_url="http://s3:8333", region_name="us-east-1",
                  aws_access_key_id="{S3_KEY}", aws_secret_access_key="{S3_SECRET}")
try:
    s3.create_bucket(Bucket="{BUCKET}")
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
print("ok")
"""


@dataclass
class Answer:
    status: int
    sha256: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class SwarmStack:
    name: str

    def client_container(self) -> str:
        ids = run(
            [
                "docker",
                "ps",
                "--quiet",
                "--filter",
                f"label=com.docker.swarm.service.name={self.name}_client",
            ],
        ).stdout.split()
        assert ids, "the client container is not running"
        return ids[0]

    def in_client(self, *command: str, timeout: float = 90) -> str:
        return run(["docker", "exec", self.client_container(), *command], timeout=timeout).stdout

    def replicas(self) -> list[str]:
        """The replicas' task addresses, as tasks.image-gen resolves them (none running: [])."""
        result = run(
            ["docker", "exec", self.client_container(), "python", "-c", ADDRESSES],
            check=False,
            timeout=60,
        )
        return list(json.loads(result.stdout)) if result.returncode == 0 else []

    def call(
        self,
        replica: str,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        payload = "" if body is None else json.dumps(body)
        url = f"http://{replica}:5000{path}"
        out = self.in_client(
            "python", "-c", REQUEST, method, url, payload, json.dumps(headers or {})
        )
        return Answer(**json.loads(out))

    def container_of(self, replica: str) -> str:
        """The container of the image-gen task at this address."""
        ids = run(
            [
                "docker",
                "ps",
                "--quiet",
                "--filter",
                f"label=com.docker.swarm.service.name={self.name}_image-gen",
            ],
        ).stdout.split()
        for container in ids:
            networks = json.loads(
                run(
                    [
                        "docker",
                        "inspect",
                        "--format",
                        "{{json .NetworkSettings.Networks}}",
                        container,
                    ]
                ).stdout
            )
            if any(net.get("IPAddress") == replica for net in networks.values()):
                return container
        raise AssertionError(f"no image-gen container has address {replica}: {ids}")

    def logs(self, service: str) -> str:
        result = run(
            ["docker", "service", "logs", "--raw", f"{self.name}_{service}"],
            check=False,
            timeout=60,
        )
        return (result.stdout + result.stderr)[-6000:]


def _swarm_active() -> bool:
    state = run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], check=False).stdout
    return state.strip() == "active"


@pytest.fixture(scope="module")
def swarm(docker_engine: None) -> Iterator[None]:
    """A single-node Swarm (left again afterwards if this test made it)."""
    made = False
    if not _swarm_active():
        run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], timeout=60)
        made = True
    yield
    if made:
        run(["docker", "swarm", "leave", "--force"], check=False, timeout=60)


@pytest.fixture(scope="module")
def standins(docker_engine: None) -> Iterator[dict[str, str]]:
    tags = {}
    for name in ("postgres", "seaweedfs"):
        tag = f"imagegen-test-{name}:{uuid.uuid4().hex[:10]}"
        run(
            [
                "docker",
                "build",
                "--tag",
                tag,
                "--file",
                str(STANDINS / f"{name}.Dockerfile"),
                str(STANDINS),
            ],
            timeout=900,
        )
        tags[name] = tag
    yield tags
    for tag in tags.values():
        run(["docker", "image", "rm", tag], check=False, timeout=60)


def stack_file_for(app_image: str, standins: dict[str, str], directory: Path) -> Path:
    """docker-compose.replicas.yml with the test's changes: the built image, the stand-ins,
    dnsrr without a published port, the fake upstream, a client, secrets from files."""
    stack = yaml.safe_load(STACK_FILE.read_text())
    password = secrets.token_hex(16)
    files = {
        "openai_api_key": f"sk-swarm-test-{secrets.token_hex(12)}",
        "postgres_password": password,
        "database_url": f"postgresql://imagegen:{password}@postgres:5432/imagegen",
        "s3_credentials": f"[default]\naws_access_key_id = {S3_KEY}\n"
        f"aws_secret_access_key = {S3_SECRET}\n",
    }
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
    stack["secrets"] = {name: {"file": str(directory / name)} for name in files}

    service = stack["services"]["image-gen"]
    service["image"] = app_image
    service.pop("ports", None)
    service["deploy"]["endpoint_mode"] = "dnsrr"
    service["deploy"]["replicas"] = REPLICAS
    service["environment"].update(
        {
            "IMAGE_GEN_STORAGE_URL": f"s3://{BUCKET}/stack",
            "AWS_ENDPOINT_URL_S3": "http://s3:8333",
            "AWS_REGION": "us-east-1",
            "OPENAI_BASE_URL": "http://fake-openai:8080/v1",
            "IMAGE_GEN_JOB_POLL_INTERVAL": "0.5",
        }
    )
    service["healthcheck"]["interval"] = "2s"
    database = stack["services"]["postgres"]
    database["image"] = standins["postgres"]
    database.pop("volumes", None)
    database["deploy"].pop("placement", None)
    stack["volumes"].pop("postgres-data")  # a throwaway database
    fake = REPO / "tests" / "support" / "fake_openai.py"
    stack["services"]["fake-openai"] = {
        "image": FAKE_BASE_IMAGE,
        "command": [
            "python",
            "/fake/fake_openai.py",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--latency",
            "0.2",
        ],
        "volumes": [f"{fake}:/fake/fake_openai.py:ro"],
    }
    stack["services"]["s3"] = {
        "image": standins["seaweedfs"],
        "environment": {"S3_ACCESS_KEY": S3_KEY, "S3_SECRET_KEY": S3_SECRET},
    }
    stack["services"]["client"] = {
        "image": app_image,
        "user": "10001:10001",
        "command": ["python", "-c", "import time; time.sleep(3600)"],
        "healthcheck": {"disable": True},  # the image's own checks a service it does not run
    }
    for entry in stack["services"].values():  # no IPVS here: no service VIPs either
        entry.setdefault("deploy", {})["endpoint_mode"] = "dnsrr"
    path = directory / "stack.yml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def deployed(
    swarm: None, app_image: str, standins: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwarmStack]:
    directory = tmp_path_factory.mktemp("swarm")
    stack_file = stack_file_for(app_image, standins, directory)
    stack = SwarmStack(f"igswarm{uuid.uuid4().hex[:6]}")
    run(["docker", "stack", "deploy", "--compose-file", str(stack_file), stack.name], timeout=120)
    try:
        wait_for(lambda: _client_ready(stack), DEPLOY_TIMEOUT / 2, "the client container")
        wait_for(lambda: "ok" in _make_bucket(stack), 90, "the S3 bucket made")
        wait_for(
            lambda: len(healthy := _healthy(stack)) == REPLICAS and healthy,
            DEPLOY_TIMEOUT,
            f"{REPLICAS} healthy replicas",
            interval=2.0,
        )
        yield stack
    except BaseException:
        print(stack.logs("image-gen"))
        raise
    finally:
        run(["docker", "stack", "rm", stack.name], check=False, timeout=120)
        wait_for(
            lambda: not _stack_containers(stack), 120, "the stack's containers gone", interval=1
        )


def _client_ready(stack: SwarmStack) -> bool:
    try:
        stack.client_container()
    except AssertionError:
        return False
    return True


def _make_bucket(stack: SwarmStack) -> str:
    result = run(
        ["docker", "exec", stack.client_container(), "python", "-c", MAKE_BUCKET],
        check=False,
        timeout=60,
    )
    return result.stdout


def _healthy(stack: SwarmStack) -> list[str]:
    return [r for r in stack.replicas() if stack.call(r, "GET", "/health").status == 200]


def _stack_containers(stack: SwarmStack) -> list[str]:
    return run(
        [
            "docker",
            "ps",
            "--all",
            "--quiet",
            "--filter",
            f"label=com.docker.stack.namespace={stack.name}",
        ],
        check=False,
    ).stdout.split()


def test_health_reports_storage_and_database_on_every_replica(deployed: SwarmStack) -> None:
    for replica in deployed.replicas():
        body = deployed.call(replica, "GET", "/health").json()
        text = json.dumps(body)
        assert "s3" in text.lower() and "postgres" in text.lower(), body
        assert "stack-test-secret" not in text and "sk-swarm-test" not in text


def test_an_image_made_on_one_replica_is_served_listed_and_deleted_by_the_others(
    deployed: SwarmStack,
) -> None:
    a, b, c = deployed.replicas()[:3]
    made = deployed.call(a, "POST", "/generate", {"prompt": "a harbour at night"})
    assert made.status == 200, made.text
    image = made.json()["images"][0]

    on_a = deployed.call(a, "GET", image["url"])
    on_b = deployed.call(b, "GET", image["url"])
    listed_on_c = deployed.call(c, "GET", "/images?limit=200").json()

    assert on_a.status == on_b.status == 200
    assert on_a.sha256 == on_b.sha256
    assert image["id"] in [entry["id"] for entry in listed_on_c["images"]]

    assert deployed.call(b, "DELETE", image["url"]).status == 200
    assert deployed.call(a, "GET", image["url"]).status == 404
    assert deployed.call(c, "GET", image["url"]).status == 404


def test_a_job_whose_replica_is_killed_is_finished_by_another(deployed: SwarmStack) -> None:
    a, b = deployed.replicas()[:2]
    submitted = deployed.call(
        a,
        "POST",
        "/generate",
        {"prompt": "a slow lighthouse [latency=15]"},
        headers={"Prefer": "respond-async"},
    )
    assert submitted.status == 202, submitted.text
    job_id = submitted.json()["job_id"]
    wait_for(
        lambda: deployed.call(b, "GET", f"/jobs/{job_id}").json()["status"] == "running",
        60,
        "the job running",
    )

    run(["docker", "kill", deployed.container_of(a)], timeout=60)
    started = time.monotonic()
    done = wait_for(
        lambda: (
            (body := deployed.call(b, "GET", f"/jobs/{job_id}").json())["status"]
            in ("completed", "failed")
            and body
        ),
        120,
        "the job finished by another replica",
        interval=1.0,
    )

    assert done["status"] == "completed", done
    assert done["attempts"] >= 2, done
    assert time.monotonic() - started < 90
    survivors = [r for r in deployed.replicas() if r != a]
    image = done["images"][0]
    assert all(deployed.call(r, "GET", image["url"]).status == 200 for r in survivors)

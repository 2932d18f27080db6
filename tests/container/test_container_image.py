"""The image itself: what the build context holds, what the layers reuse, what is left inside."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from .support import FAKE_BASE_IMAGE, REPO, run

pytestmark = pytest.mark.container


def layers(image: str) -> list[str]:
    output = run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image])
    return json.loads(output.stdout)


def test_dependency_layers_are_reused_when_only_the_code_changes(
    app_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(REPO / "Dockerfile", context)
    shutil.copy(REPO / ".dockerignore", context)
    shutil.copytree(
        REPO / "image-gen", context / "image-gen", ignore=shutil.ignore_patterns("__pycache__")
    )
    with open(context / "image-gen" / "wsgi.py", "a", encoding="utf-8") as handle:
        handle.write("# a code-only change\n")
    tag = f"{app_image}-code-change"
    try:
        run(["docker", "build", "--tag", tag, str(context)], timeout=300)
        before, after = layers(app_image), layers(tag)
    finally:
        run(["docker", "image", "rm", tag], check=False)
    # Only the two code layers (COPY image-gen/, compileall) differ; pip's is reused.
    assert len(before) == len(after)
    assert before[:-2] == after[:-2]
    assert before[-2] != after[-2]


def test_dockerignore_keeps_secrets_images_and_local_state_out_of_the_context(
    docker_engine: None, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    planted = [
        "secrets/openai_api_key.txt",
        "images/0b0e/001-0b0e.png",
        ".git/config",
        ".venv/bin/python",
        "tests/test_x.py",
        "tests/container/test_y.py",
        "bench/results/run.json",
        ".benchmarks/Linux/0001.json",
        ".pytest_cache/v/cache",
        ".env",
        "deploy.key",
        "image-gen/imagegen/__pycache__/store.cpython-313.pyc",
    ]
    for name in [*planted, "image-gen/wsgi.py", "image-gen/requirements.txt"]:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("x", encoding="utf-8")
    shutil.copy(REPO / ".dockerignore", context)
    tag = f"image-gen-context-probe:{uuid.uuid4().hex[:12]}"
    probe = f"FROM {FAKE_BASE_IMAGE}\nCOPY . /context\n"
    try:
        result = run(
            ["docker", "build", "--quiet", "--tag", tag, "--file", "-", str(context)],
            timeout=120,
            stdin=probe,
        )
        assert result.returncode == 0
        listing = run(
            ["docker", "run", "--rm", "--network", "none", tag,
             "find", "/context", "-type", "f", "-printf", "%P\\n"],
        ).stdout.split()  # fmt: skip
    finally:
        run(["docker", "image", "rm", tag], check=False)
    assert sorted(listing) == ["image-gen/requirements.txt", "image-gen/wsgi.py"]


def test_image_has_no_compilers_caches_or_tests(app_image: str) -> None:
    probe = (
        "import os, shutil\n"
        "for tool in ('gcc', 'cc', 'c++', 'make', 'curl', 'wget'):\n"
        "    print('tool', tool, shutil.which(tool))\n"
        "for path in ('/root/.cache', '/app/tests', '/app/requirements-dev.txt',\n"
        "             '/var/lib/apt/lists/partial'):\n"
        "    print('path', path, os.path.exists(path))\n"
    )
    output = run(
        ["docker", "run", "--rm", "--user", "0", "--network", "none", app_image,
         "python", "-c", probe],
    ).stdout  # fmt: skip
    for line in output.splitlines():
        kind, name, value = line.split()
        assert value in ("None", "False"), f"{kind} {name} should not be in the image"
    config = json.loads(
        run(["docker", "image", "inspect", "--format", "{{json .Config}}", app_image]).stdout
    )
    assert config["User"] == "10001:10001"
    assert "IMAGE_GEN_ALLOW_ROOT=false" in config["Env"]
    assert "5000/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Cmd"][0] == "gunicorn" and not config.get("Entrypoint")
    assert {"PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"} <= set(config["Env"])


def test_the_image_refuses_to_run_as_root_naming_the_owner_of_its_images(app_image: str) -> None:
    result = run(
        ["docker", "run", "--rm", "--user", "0:0", "--network", "none", "--read-only",
         "--tmpfs", "/tmp", "--cap-drop", "ALL", "-e", "IMAGE_GEN_PROVIDER=placeholder",
         app_image],
        check=False,
        timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "image-gen does not run as root (uid 0)" in output
    assert "docker run --user 10001:10001" in output  # /app/images in the image is 10001's

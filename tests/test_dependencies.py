"""pyproject.toml declares the runtime dependencies: the same pins as image-gen/requirements.txt,
which the Docker image installs."""

from __future__ import annotations

import tomllib

from tests.gunicorn_server import REPO


def pins(lines: list[str]) -> set[str]:
    return {line.strip().lower() for line in lines if line.strip() and not line.startswith("#")}


def test_pyproject_declares_exactly_the_runtime_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = (REPO / "image-gen" / "requirements.txt").read_text().splitlines()

    assert pins(project["dependencies"]) == pins(runtime)
    assert "prometheus_client==0.26.0" in pins(runtime)

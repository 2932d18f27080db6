"""The two commands a newcomer runs (README's first block): `python3 dev.py serve` and
`python3 dev.py test`, which set up `.venv` once and again only when requirements change."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dev
from tests.support.gunicorn_server import REPO

FIRST_COMMANDS = ["python3 dev.py serve", "python3 dev.py test"]


def commands(block: str) -> list[str]:
    """The commands of a shell block: its lines without comments and blank lines."""
    found = []
    for line in block.splitlines():
        command = re.sub(r"(^|\s)#.*$", "", line).strip()
        if command:
            found.append(command)
    return found


def test_readme_starts_with_exactly_the_two_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"^```[a-z]*\n(.*?)^```", readme, re.S | re.M)

    assert first_block is not None
    assert commands(first_block[1]) == FIRST_COMMANDS


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")

    assert FIRST_COMMANDS[1] in commands(ci)


def make_requirements(directory: Path) -> Path:
    (directory / "app").mkdir()
    (directory / "app" / "requirements.txt").write_text("flask==3.1.3\n")
    requirements = directory / "requirements-dev.txt"
    requirements.write_text("# tools\n-r app/requirements.txt\npytest==9.2.0\n")
    return requirements


def fake_venv(directory: Path) -> Path:
    """A venv as `python -m venv` leaves it, as far as dev.py looks."""
    venv = directory / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    return venv


def test_requirements_are_installed_once_and_again_only_when_a_file_changes(tmp_path):
    requirements = make_requirements(tmp_path)
    venv = fake_venv(tmp_path)
    calls: list[list[str]] = []

    first = dev.ensure_environment(venv, requirements, run=calls.append)
    second = dev.ensure_environment(venv, requirements, run=calls.append)
    (tmp_path / "app" / "requirements.txt").write_text("flask==3.1.4\n")  # an included file
    third = dev.ensure_environment(venv, requirements, run=calls.append)

    assert (first, second, third) == (True, False, True)
    assert len(calls) == 2
    assert calls[0][1:4] == ["-m", "pip", "install"]
    assert calls[0][-2:] == ["-r", str(requirements)]


def test_a_failed_install_is_tried_again_next_time(tmp_path):
    requirements = make_requirements(tmp_path)
    venv = fake_venv(tmp_path)

    def failing(command):
        raise subprocess.CalledProcessError(1, command)

    with pytest.raises(subprocess.CalledProcessError):
        dev.ensure_environment(venv, requirements, run=failing)
    calls: list[list[str]] = []

    assert dev.ensure_environment(venv, requirements, run=calls.append) is True
    assert len(calls) == 1


def test_a_missing_venv_is_created_with_this_python_before_installing(tmp_path):
    requirements = make_requirements(tmp_path)
    venv = tmp_path / ".venv"
    calls: list[list[str]] = []

    def run(command):
        calls.append(list(command))
        if command[1:3] == ["-m", "venv"]:
            fake_venv(tmp_path)

    assert dev.ensure_environment(venv, requirements, run=run) is True
    assert calls[0] == [sys.executable, "-m", "venv", str(venv)]
    assert calls[1][0] == str(venv / "bin" / "python")


def test_a_venv_that_could_not_be_made_is_removed_so_the_next_run_starts_afresh(tmp_path):
    requirements = make_requirements(tmp_path)
    venv = tmp_path / ".venv"

    def half_made(command):
        fake_venv(tmp_path)  # python is there, pip is not (no ensurepip)
        raise subprocess.CalledProcessError(1, command)

    with pytest.raises(subprocess.CalledProcessError):
        dev.ensure_environment(venv, requirements, run=half_made)

    assert not venv.exists()


def test_lint_runs_ruff_check_then_ruff_format_then_mypy_with_the_venv_python():
    calls: list[list[str]] = []

    def passing(command):
        calls.append(list(command))
        return 0

    assert dev.lint("/venv/bin/python", check=passing) == 0
    assert calls == [
        ["/venv/bin/python", "-m", "ruff", "check", "."],
        ["/venv/bin/python", "-m", "ruff", "format", "--check", "."],
        ["/venv/bin/python", "-m", "mypy"],
    ]


@pytest.mark.parametrize(("failing", "runs"), [("check", 1), ("format", 2), ("mypy", 3)])
def test_lint_fails_at_the_first_failing_check_and_runs_no_further(failing, runs):
    calls: list[list[str]] = []

    def check(command):
        calls.append(list(command))
        return 1 if failing in command else 0

    assert dev.lint("python", check=check) == 1
    assert len(calls) == runs
    assert failing in calls[-1]


def test_serve_is_placeholder_mode_on_127_0_0_1_port_5000_with_images_in_the_clone():
    environment = dev.serve_environment(
        {"IMAGE_GEN_PROVIDER": "openai", "GUNICORN_BIND": "0.0.0.0:80", "GUNICORN_WORKERS": "3"}
    )

    assert environment["IMAGE_GEN_PROVIDER"] == "placeholder"
    assert environment["GUNICORN_BIND"] == "127.0.0.1:5000"
    assert environment["IMAGE_GEN_IMAGES_DIR"] == str(REPO / "images")
    assert environment["GUNICORN_WORKERS"] == "3"


def test_an_unknown_command_prints_the_usage_and_changes_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "dev.py"), "deploy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert "usage: python3 dev.py serve" in result.stderr
    assert list(tmp_path.iterdir()) == []

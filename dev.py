"""Set up and run image-gen from a fresh clone: `python3 dev.py serve|test|lint [args]`.

Each command first makes sure `.venv` exists and holds requirements-dev.txt (installed again
only when it, or a file it includes, changed since the last install), then:

    serve   Gunicorn on http://127.0.0.1:5000 in placeholder mode: no key, images in ./images
    test    the whole test suite: .venv/bin/python -m pytest, with any further arguments
    lint    ruff check, ruff format --check and mypy (pyproject.toml's [tool.mypy]), as CI runs them

Needs only Python 3.11 or later (Linux or macOS: Gunicorn does not run on Windows).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements-dev.txt"
STAMP = ".requirements-dev.sha256"  # in the venv: the digest of what was last installed
SERVE_URL = "http://127.0.0.1:5000"
USAGE = "usage: python3 dev.py serve | test [pytest arguments] | lint"

Runner = Callable[[Sequence[str]], None]
Check = Callable[[Sequence[str]], int]  # runs a command and gives its exit status
# What `lint` runs, in order, as `python -m ...`; mypy reads its files and flags from pyproject.
LINT_COMMANDS = (("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",))


def _run(command: Sequence[str]) -> None:
    subprocess.run(command, cwd=ROOT, check=True)


def _status(command: Sequence[str]) -> int:
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def requirements_digest(path: Path = REQUIREMENTS) -> str:
    """A digest of the requirements file and every file it includes with -r or -c."""
    digest = hashlib.sha256()
    pending, seen = [path], set()
    while pending:
        current = pending.pop(0).resolve()
        if current in seen:
            continue
        seen.add(current)
        text = current.read_bytes()
        digest.update(os.path.relpath(current, path.parent).encode() + b"\0" + text)
        for line in text.decode("utf-8").splitlines():
            option, _, argument = line.strip().partition(" ")
            if option in ("-r", "--requirement", "-c", "--constraint") and argument.strip():
                pending.append(current.parent / argument.strip())
    return digest.hexdigest()


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def ensure_environment(
    venv: Path = VENV, requirements: Path = REQUIREMENTS, run: Runner = _run
) -> bool:
    """Create `venv` if it has no Python and install `requirements` unless the same ones
    were installed last time; True if anything was installed."""
    python = venv_python(venv)
    if not python.exists():
        print(f"dev.py: creating {venv.name} with Python {sys.version.split()[0]}", flush=True)
        try:
            run([sys.executable, "-m", "venv", str(venv)])
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)  # half made: the next run starts afresh
            raise
    stamp = venv / STAMP
    wanted = requirements_digest(requirements)
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return False
    print(f"dev.py: installing {requirements.name} into {venv.name}", flush=True)
    run(
        [
            *(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("-r", str(requirements)),
        ]
    )
    stamp.write_text(wanted + "\n")
    return True


def lint(python: str, check: Check = _status) -> int:
    """Run LINT_COMMANDS with `python` in order: 1 at the first that fails, 0 if all pass."""
    for command in LINT_COMMANDS:
        if check([python, "-m", *command]):
            return 1
    return 0


def serve_environment(environ: dict[str, str]) -> dict[str, str]:
    """Placeholder mode on 127.0.0.1:5000, images in ./images; other settings as given."""
    environment = dict(environ)
    environment.setdefault("IMAGE_GEN_IMAGES_DIR", str(ROOT / "images"))
    environment.update(IMAGE_GEN_PROVIDER="placeholder", GUNICORN_BIND="127.0.0.1:5000")
    return environment


def main(argv: Sequence[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - run by whatever python3 the machine has
        print("dev.py: image-gen needs Python 3.11 or later", file=sys.stderr)
        return 2
    if not argv or argv[0] not in ("serve", "test", "lint"):
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    os.chdir(ROOT)
    try:
        ensure_environment()
    except subprocess.CalledProcessError as failed:
        print(f"dev.py: setting up {VENV.name} failed: {failed}", file=sys.stderr)
        return 1
    python = str(venv_python())
    if command == "serve":
        print(f"dev.py: serving {SERVE_URL} in placeholder mode; Ctrl-C stops it", flush=True)
        gunicorn = [python, "-m", "gunicorn", "-c", "image-gen/gunicorn.conf.py", "wsgi:app"]
        os.execve(python, gunicorn + rest, serve_environment(dict(os.environ)))
    if command == "test":
        os.execv(python, [python, "-m", "pytest", *rest])
    return lint(python)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The project's own files: what pyproject.toml declares, how mypy checks image-gen/, and the
lookups by name that mypy cannot see."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.gunicorn_server import REPO

APP = REPO / "image-gen"
# (file under image-gen/, attribute): why a lookup by name is the right test there.
FEATURE_CHECKS = {
    ("gunicorn.conf.py", "wsgi"): "Gunicorn sets worker.wsgi only once the app has loaded",
    ("imagegen/jobs/events.py", "POLLRDHUP"): "select.POLLRDHUP exists on Linux only",
    ("imagegen/imaging/memory.py", "gnu_get_libc_version"): "only glibc has it",
    ("imagegen/observability/countfiles.py", "posix_fallocate"): "os has none on macOS",
    ("imagegen/storage/durable.py", "POSIX_FADV_DONTNEED"): "os has no posix_fadvise on macOS",
}


def lookups_by_name(path: Path) -> list[tuple[int, str, str]]:
    """(line, function, attribute) of each getattr, hasattr, setattr and delattr call in
    `path` whose attribute is a string literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            found.append((node.lineno, node.func.id, node.args[1].value))
    return found


def test_attributes_are_looked_up_by_name_only_to_check_for_a_platform_feature():
    unexplained = [
        f"image-gen/{name}:{line}: {function}(..., {attribute!r})"
        for path in sorted(APP.rglob("*.py"))
        for line, function, attribute in lookups_by_name(path)
        if ((name := path.relative_to(APP).as_posix()), attribute) not in FEATURE_CHECKS
    ]

    assert unexplained == [], "use a Protocol member or isinstance, which mypy checks"


def test_the_scan_finds_a_lookup_by_name(tmp_path):
    source = tmp_path / "duck.py"
    source.write_text('run = getattr(provider, "generate_with_progress", None)\n')

    assert lookups_by_name(source) == [(1, "getattr", "generate_with_progress")]


def test_mypy_checks_the_application_package_from_the_pyproject_settings():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]

    assert "image-gen" in settings["files"]
    assert settings["strict"] is True


def pins(path: Path) -> dict[str, str]:
    """The `name==version` lines of a requirements file, by canonical name."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, separator, version = line.partition("#")[0].strip().partition("==")
        if separator:
            found[canonicalize_name(name)] = version.strip()
    return found


def test_pyproject_declares_the_runtime_dependencies_the_image_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = pins(REPO / "image-gen" / "requirements.txt")
    declared = [Requirement(text) for text in project["dependencies"]]

    assert declared
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not pinned in image-gen/requirements.txt"
        assert requirement.specifier.contains(pinned[name]), (requirement, pinned[name])
    assert {canonicalize_name(r.name) for r in declared} == third_party_imports(REPO / "image-gen")


DISTRIBUTIONS = {"PIL": "pillow"}  # import names that differ from the name on PyPI


def third_party_imports(directory: Path) -> set[str]:
    """The distributions whose modules the code under `directory` imports (absolute imports
    outside the standard library and imagegen itself)."""
    modules = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    ours = {"imagegen", "__future__", *sys.stdlib_module_names}
    return {canonicalize_name(DISTRIBUTIONS.get(m, m)) for m in modules - ours}

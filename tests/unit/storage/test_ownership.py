"""Unit tests of `imagegen.ownership`: the fix a start-up error names for a path another user
owns, and when the service refuses to run as root."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from imagegen.errors import ServiceError
from imagegen.settings import Settings
from imagegen.storage.ownership import (
    READ_FILE,
    WRITE_DIRECTORY,
    Process,
    denied,
    denied_within,
    host_uid_of_root,
    root_refusal,
)

USER = Process(uid=1000, gid=1000, root_on_host=0)
ENV_FILE = "to the .env file beside docker-compose.yml"


def owned(uid: int, gid: int, mode: int, kind: int = stat.S_IFDIR) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def images_dir_message(status: os.stat_result, process: Process = USER) -> str:
    """What the start-up error says of /app/images with that owner and mode."""
    return denied(Path("/app/images"), WRITE_DIRECTORY, "images", process=process, status=status)


def test_another_users_directory_names_the_env_line_with_its_owner() -> None:
    message = images_dir_message(owned(1001, 1002, 0o755))

    assert "owned by uid 1001, gid 1002 (mode 755)" in message
    assert "runs as uid 1000, gid 1000" in message
    assert f"add the line IMAGE_GEN_USER=1001:1002 {ENV_FILE}" in message
    assert "`sudo chown -R 1000:1000 images`" in message
    assert "Elsewhere, run the service as uid 1001" in message


def test_another_users_key_file_names_the_same_line_and_a_plain_chown() -> None:
    message = denied(
        Path("/run/secrets/openai_api_key"),
        READ_FILE,
        "secrets/openai_api_key.txt",
        process=USER,
        status=owned(1001, 1001, 0o600, stat.S_IFREG),
    )

    assert f"add the line IMAGE_GEN_USER=1001:1001 {ENV_FILE}" in message
    assert "`sudo chown 1000:1000 secrets/openai_api_key.txt`" in message
    assert "let uid 1000 read it" in message


def test_a_root_owned_directory_gets_a_chown_never_a_root_user_line() -> None:
    message = images_dir_message(owned(0, 0, 0o755))

    assert "does not run as root" in message
    assert "`sudo chown -R 1000:1000 images` beside docker-compose.yml" in message
    # ...except where the engine shows the user's own files as root's, and says so.
    before, desktop = message.split("(Docker Desktop for Linux", 1)
    assert "IMAGE_GEN_USER" not in before
    assert "IMAGE_GEN_USER=0:0 and IMAGE_GEN_ALLOW_ROOT=true" in desktop


def test_under_a_user_namespace_root_owned_means_the_host_users_and_names_0_0() -> None:
    rootless = Process(uid=1000, gid=1000, root_on_host=1000)

    message = images_dir_message(owned(0, 0, 0o755), rootless)

    assert "uid 0 in this container is uid 1000 on the host" in message
    assert f"add the line IMAGE_GEN_USER=0:0 {ENV_FILE}" in message


def test_an_owner_without_the_permission_is_told_the_chmod() -> None:
    message = images_dir_message(owned(1000, 1000, 0o555))

    assert "`chmod u+rwx images` beside docker-compose.yml" in message
    assert "IMAGE_GEN_USER" not in message


def test_an_owner_with_the_permission_is_pointed_past_owner_and_mode() -> None:
    message = images_dir_message(owned(1000, 1000, 0o755))

    assert "SELinux" in message and "IMAGE_GEN_USER" not in message


def test_another_owner_who_may_not_write_either_gets_the_chown_not_their_uid() -> None:
    message = images_dir_message(owned(1001, 1001, 0o555))

    assert "IMAGE_GEN_USER" not in message
    assert "`sudo chown -R 1000:1000 images`" in message


def within_images_message(status: os.stat_result, outer: os.stat_result) -> str:
    """What the start-up error says of /app/images/.ledger with those owners and modes."""
    return denied_within(
        Path("/app/images"),
        Path("/app/images/.ledger"),
        WRITE_DIRECTORY,
        "images",
        process=USER,
        status=status,
        outer=outer,
    )


def test_a_folder_left_half_another_uids_gets_the_recursive_chown_of_all_of_it() -> None:
    message = within_images_message(owned(10001, 10001, 0o755), owned(1000, 1000, 0o755))

    assert "owned by uid 10001, gid 10001 (mode 755), images itself by uid 1000" in message
    assert "`sudo chown -R 1000:1000 images` beside docker-compose.yml" in message
    assert "IMAGE_GEN_USER" not in message  # 10001 could not write images itself


def test_a_directory_inside_of_the_same_owner_gets_that_owners_fix_with_its_own_path() -> None:
    message = within_images_message(owned(1000, 1000, 0o555), owned(1000, 1000, 0o755))

    assert "`chmod u+rwx images/.ledger` beside docker-compose.yml" in message


@pytest.mark.parametrize(
    ("uid_map", "host_uid"),
    [
        ("         0          0 4294967295\n", 0),
        ("         0       1000          1\n         1     100000      65536\n", 1000),
        ("         1     100000      65536\n", None),
        ("", None),
    ],
)
def test_host_uid_of_root_reads_the_uid_map(uid_map: str, host_uid: int | None) -> None:
    assert host_uid_of_root(uid_map) == host_uid


def _as(monkeypatch: pytest.MonkeyPatch, process: Process) -> None:
    monkeypatch.setattr(Process, "current", classmethod(lambda cls: process))


def test_the_image_setting_refuses_host_root_naming_the_owner_of_the_images_directory(
    settings: Settings, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.images_dir.mkdir()
    owner = settings.images_dir.stat()
    _as(monkeypatch, Process(uid=0, gid=0, root_on_host=0))

    with pytest.raises(ServiceError) as refused:
        make_app(settings, allow_root=False)

    assert "does not run as root" in str(refused.value)
    if owner.st_uid != 0:
        assert f"IMAGE_GEN_USER={owner.st_uid}:{owner.st_gid}" in str(refused.value)
    assert list(settings.images_dir.iterdir()) == [], "nothing is written before the refusal"


def test_host_root_without_an_owned_images_folder_is_told_its_own_ids_and_docker_desktop(
    tmp_path: Path,
) -> None:
    message = root_refusal(tmp_path / "missing", process=Process(uid=0, gid=0, root_on_host=0))

    assert message is not None and message.startswith("image-gen does not run as root (uid 0).")
    assert "set IMAGE_GEN_USER=<uid>:<gid> of your user (`id -u`, `id -g`)" in message
    assert "if so, add the line IMAGE_GEN_ALLOW_ROOT=true to .env as well." in message


def test_root_in_a_user_namespace_is_an_unprivileged_host_user_and_may_run(
    settings: Settings, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    _as(monkeypatch, Process(uid=0, gid=0, root_on_host=1000))

    app = make_app(settings, allow_root=False)

    assert app.test_client().get("/health").status_code == 200


def test_outside_the_image_root_is_allowed_by_default(
    settings: Settings, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    _as(monkeypatch, Process(uid=0, gid=0, root_on_host=0))

    assert settings.allow_root is True
    assert make_app(settings).test_client().get("/health").status_code == 200


@pytest.mark.parametrize(("raw", "allowed"), [("", True), ("false", False), ("true", True)])
def test_image_gen_allow_root_is_read_from_the_environment(
    tmp_path: Path, raw: str, allowed: bool
) -> None:
    env = {"OPENAI_API_KEY_FILE": str(tmp_path / "no-key"), "IMAGE_GEN_ALLOW_ROOT": raw}

    assert Settings.from_env(env).allow_root is allowed

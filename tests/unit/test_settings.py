"""Unit tests of `imagegen.settings`: where the key comes from and which values are refused."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagegen import settings as settings_module
from imagegen.catalog.models import CATALOG
from imagegen.settings import DEFAULT_BASE_URL, Settings, SettingsError
from tests.support.clock import PinnedClock

FILE_KEY = "sk-proj-FROMFILE-0123456789abcdefXYZ"
ENV_KEY = "sk-proj-FROMENV-9876543210fedcbaQRS"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "openai_api_key"
    path.write_text(FILE_KEY + "\n", encoding="utf-8")
    return path


@pytest.fixture
def missing_key_file(tmp_path: Path) -> str:
    """A key-file path that does not exist, so the machine's own secrets are never read."""
    return str(tmp_path / "no-such-key-file")


def env(missing_key_file: str, **values: str) -> dict[str, str]:
    return {"OPENAI_API_KEY_FILE": missing_key_file, **values}


# --- where the key comes from --------------------------------------------------------------


def test_key_from_secret_file_wins_over_environment_variable(
    key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(key_file), "OPENAI_API_KEY": ENV_KEY})

    assert result.api_key == FILE_KEY
    assert result.api_key_source == "secret_file"
    assert result.api_key_configured is True
    assert "OPENAI_API_KEY" not in caplog.text


def test_key_file_contents_are_stripped_of_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"  \n{FILE_KEY}\r\n\n", encoding="utf-8")

    assert Settings.from_env({"OPENAI_API_KEY_FILE": str(path)}).api_key == FILE_KEY


def test_environment_key_is_used_as_fallback_with_a_warning(
    missing_key_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    result = Settings.from_env(env(missing_key_file, OPENAI_API_KEY=f"  {ENV_KEY} "))

    assert result.api_key == ENV_KEY
    assert result.api_key_source == "env"
    assert result.api_key_configured is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("OPENAI_API_KEY" in r.getMessage() for r in warnings)
    assert ENV_KEY not in caplog.text


def test_empty_key_file_falls_back_to_environment_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("   \n", encoding="utf-8")

    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(path), "OPENAI_API_KEY": ENV_KEY})

    assert result.api_key == ENV_KEY
    assert result.api_key_source == "env"


def test_no_key_anywhere_leaves_key_unconfigured_with_source_none(missing_key_file: str) -> None:
    result = Settings.from_env(env(missing_key_file))

    assert result.api_key is None
    assert result.api_key_configured is False
    assert result.api_key_source == "none"


def test_blank_environment_key_counts_as_no_key(missing_key_file: str) -> None:
    result = Settings.from_env(env(missing_key_file, OPENAI_API_KEY="   "))

    assert result.api_key_configured is False
    assert result.api_key_source == "none"


def test_default_key_file_path_is_read_when_no_path_is_given(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_KEY_FILE", str(key_file))

    result = Settings.from_env({"OPENAI_API_KEY": ENV_KEY})

    assert result.api_key == FILE_KEY
    assert result.api_key_source == "secret_file"


def test_unreadable_key_file_is_logged_and_falls_back_without_crashing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    directory = tmp_path / "key-is-a-directory"
    directory.mkdir()

    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(directory), "OPENAI_API_KEY": ENV_KEY})

    assert result.api_key == ENV_KEY
    assert result.api_key_source == "env"
    assert any("cannot read the API key file" in r.getMessage() for r in caplog.records)


def test_key_file_of_another_user_logs_its_owner_and_the_env_line_never_the_key(
    key_file: Path,
    another_users: Callable[[Path], os.stat_result],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING)
    key_file.chmod(0o600)
    owner = another_users(key_file)
    read_text = Path.read_text

    def refused(path: Path, *args: Any, **kwargs: Any) -> str:
        if path == key_file:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)

    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(key_file)})

    assert result.api_key_configured is False
    [warning] = [r.getMessage() for r in caplog.records if "API key file" in r.getMessage()]
    assert warning.startswith(f"cannot read the API key file {key_file}: Permission denied.")
    assert f"owned by uid {owner.st_uid}, gid {owner.st_gid} (mode 600)" in warning
    assert f"add the line IMAGE_GEN_USER={owner.st_uid}:{owner.st_gid} to the .env file" in warning
    assert FILE_KEY not in caplog.text


def test_unreadable_key_file_without_fallback_leaves_key_unconfigured(tmp_path: Path) -> None:
    directory = tmp_path / "key-is-a-directory"
    directory.mkdir()

    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(directory)})

    assert result.api_key_configured is False
    assert result.api_key_source == "none"


def test_key_file_that_is_not_utf8_is_a_settings_error_or_treated_as_unreadable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"\xff\xfe" + FILE_KEY.encode())

    try:
        result = Settings.from_env({"OPENAI_API_KEY_FILE": str(path), "OPENAI_API_KEY": ENV_KEY})
    except SettingsError as exc:
        assert FILE_KEY not in str(exc)
    else:
        assert result.api_key_source == "env"


def test_from_env_reads_only_the_mapping_it_is_given(
    missing_key_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("IMAGE_GEN_PROVIDER", "not-a-provider")
    monkeypatch.setenv("OPENAI_TIMEOUT", "not-a-number")

    result = Settings.from_env(env(missing_key_file))

    assert result.api_key is None
    assert result.provider == "openai"
    assert result.read_timeout == Settings().read_timeout


# --- the key never shows ----------------------------------------------------------------


def test_repr_and_str_never_contain_the_key(key_file: Path) -> None:
    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(key_file)})

    assert result.api_key == FILE_KEY
    assert FILE_KEY not in repr(result)
    assert FILE_KEY not in str(result)
    assert "secret_file" in repr(result)


def test_repr_of_directly_built_settings_never_contains_the_key() -> None:
    assert ENV_KEY not in repr(Settings(api_key=ENV_KEY, api_key_source="env"))


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().api_key = ENV_KEY  # type: ignore[misc]


# --- other values ---------------------------------------------------------------------------


def test_empty_environment_gives_documented_defaults(missing_key_file: str) -> None:
    result = Settings.from_env(env(missing_key_file))

    assert result == Settings(api_key=None, api_key_source="none")
    assert result.provider == "openai"
    assert result.base_url == DEFAULT_BASE_URL
    assert result.default_model == "gpt-image-2"
    assert result.images_dir == Path.cwd() / "images"  # the default, made absolute


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "expected"),
    [
        ("OPENAI_CONNECT_TIMEOUT", "3.5", "connect_timeout", 3.5),
        ("OPENAI_TIMEOUT", " 12 ", "read_timeout", 12.0),
        ("IMAGE_GEN_REQUEST_DEADLINE", "90", "request_deadline", 90.0),
        ("OPENAI_MAX_RETRIES", "0", "max_retries", 0),
        ("OPENAI_RETRY_BACKOFF", "0.25", "retry_backoff", 0.25),
        ("OPENAI_MAX_RETRY_WAIT", "5", "max_retry_wait", 5.0),
        ("IMAGE_GEN_MAX_PARALLEL_UPSTREAM", "8", "max_parallel_upstream", 8),
        ("IMAGE_GEN_MAX_IMAGE_BYTES", "1048576", "max_image_bytes", 1_048_576),
        ("IMAGE_GEN_MAX_UPSTREAM_BYTES", "2097152", "max_upstream_bytes", 2_097_152),
        ("IMAGE_GEN_MAX_STREAMS", "40", "max_streams", 40),
        ("IMAGE_GEN_MAX_STREAMS_PER_TOKEN", "3", "max_streams_per_token", 3),
        ("IMAGE_GEN_JOB_LEASE_SECONDS", "12.5", "job_lease_seconds", 12.5),
        ("IMAGE_GEN_DATABASE_POOL_SIZE", "20", "database_pool_size", 20),
    ],
)
def test_numeric_settings_are_parsed_from_the_environment(
    missing_key_file: str, variable: str, raw: str, attribute: str, expected: float
) -> None:
    value = getattr(Settings.from_env(env(missing_key_file, **{variable: raw})), attribute)

    assert value == expected
    assert type(value) is type(expected)


def test_event_streams_per_worker_default_to_1000_whatever_its_threads(
    missing_key_file: str,
) -> None:
    assert Settings.from_env(env(missing_key_file)).max_streams == 1000
    assert Settings.from_env(env(missing_key_file, GUNICORN_THREADS="8")).max_streams == 1000
    chosen = env(missing_key_file, GUNICORN_THREADS="8", IMAGE_GEN_MAX_STREAMS="6")
    assert Settings.from_env(chosen).max_streams == 6
    with pytest.raises(SettingsError, match="IMAGE_GEN_MAX_STREAMS"):
        Settings.from_env(env(missing_key_file, IMAGE_GEN_MAX_STREAMS="0"))


def test_job_leases_last_30_seconds_and_the_database_pool_holds_8_unless_set(
    missing_key_file: str,
) -> None:
    result = Settings.from_env(env(missing_key_file))

    assert (result.job_lease_seconds, result.database_pool_size) == (30.0, 8)


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("IMAGE_GEN_JOB_LEASE_SECONDS", "4.9", "must be from 5 to 600 seconds, not 4.9"),
        ("IMAGE_GEN_JOB_LEASE_SECONDS", "601", "must be from 5 to 600 seconds, not 601"),
        ("IMAGE_GEN_JOB_LEASE_SECONDS", "0", "must be from 5 to 600 seconds, not 0"),
        ("IMAGE_GEN_JOB_LEASE_SECONDS", "nan", "must be a finite number"),
        ("IMAGE_GEN_JOB_LEASE_SECONDS", "30s", "must be a number"),
        ("IMAGE_GEN_DATABASE_POOL_SIZE", "0", "must be from 1 to 100 connections, not 0"),
        ("IMAGE_GEN_DATABASE_POOL_SIZE", "101", "must be from 1 to 100 connections, not 101"),
        ("IMAGE_GEN_DATABASE_POOL_SIZE", "2.5", "must be a number"),
    ],
)
def test_a_job_lease_or_database_pool_size_out_of_range_is_a_settings_error_naming_it(
    missing_key_file: str, variable: str, raw: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env(missing_key_file, **{variable: raw}))

    assert variable in str(raised.value)
    assert expected in str(raised.value)


def test_blank_numeric_setting_keeps_the_default(missing_key_file: str) -> None:
    result = Settings.from_env(env(missing_key_file, OPENAI_TIMEOUT="   "))

    assert result.read_timeout == Settings().read_timeout


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("OPENAI_TIMEOUT", "abc"),
        ("OPENAI_TIMEOUT", "10s"),
        ("OPENAI_CONNECT_TIMEOUT", "1,5"),
        ("OPENAI_MAX_RETRIES", "2.5"),
        ("OPENAI_MAX_RETRIES", "two"),
        ("IMAGE_GEN_MAX_PARALLEL_UPSTREAM", "4.0"),
        ("IMAGE_GEN_MAX_IMAGE_BYTES", "64MB"),
    ],
)
def test_non_numeric_value_is_a_settings_error_naming_variable_and_value(
    missing_key_file: str, variable: str, raw: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env(missing_key_file, **{variable: raw}))

    assert variable in str(raised.value)
    assert repr(raw) in str(raised.value)
    assert "must be a number" in str(raised.value)


@pytest.mark.parametrize(
    "variable", ["OPENAI_TIMEOUT", "OPENAI_MAX_RETRIES", "IMAGE_GEN_REQUEST_DEADLINE"]
)
def test_negative_number_is_a_settings_error_naming_the_variable(
    missing_key_file: str, variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable) as raised:
        Settings.from_env(env(missing_key_file, **{variable: "-1"}))

    assert "-1" in str(raised.value)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
@pytest.mark.parametrize("variable", ["OPENAI_TIMEOUT", "IMAGE_GEN_REQUEST_DEADLINE"])
def test_non_finite_number_is_a_settings_error_naming_the_variable(
    missing_key_file: str, variable: str, raw: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env(missing_key_file, **{variable: raw}))


def test_zero_parallel_upstream_calls_is_refused(missing_key_file: str) -> None:
    with pytest.raises(SettingsError, match="positive"):
        Settings.from_env(env(missing_key_file, IMAGE_GEN_MAX_PARALLEL_UPSTREAM="0"))


def test_unknown_provider_is_a_settings_error_listing_the_providers(
    missing_key_file: str,
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env(missing_key_file, IMAGE_GEN_PROVIDER="stability"))

    message = str(raised.value)
    assert "IMAGE_GEN_PROVIDER" in message
    assert "'stability'" in message
    assert "openai" in message
    assert "placeholder" in message


def test_provider_name_is_case_and_space_insensitive(missing_key_file: str) -> None:
    result = Settings.from_env(env(missing_key_file, IMAGE_GEN_PROVIDER="  Placeholder "))

    assert result.provider == "placeholder"


@pytest.mark.parametrize("model", ["gpt-5-image", "GPT-IMAGE-2", "gpt-image-1"])
def test_default_model_that_is_unknown_or_shut_down_is_a_settings_error(
    missing_key_file: str, model: str, today: PinnedClock
) -> None:
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    with pytest.raises(SettingsError, match="IMAGE_GEN_DEFAULT_MODEL") as raised:
        Settings.from_env(env(missing_key_file, IMAGE_GEN_DEFAULT_MODEL=model))

    assert repr(model) in str(raised.value)


def test_base_url_must_be_http_or_https(missing_key_file: str) -> None:
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL"):
        Settings.from_env(env(missing_key_file, OPENAI_BASE_URL="ftp://example.com/v1"))


def test_base_url_loses_trailing_slashes_and_blank_means_default(missing_key_file: str) -> None:
    custom = Settings.from_env(env(missing_key_file, OPENAI_BASE_URL=" http://127.0.0.1:9/v1// "))
    blank = Settings.from_env(env(missing_key_file, OPENAI_BASE_URL="  "))

    assert custom.base_url == "http://127.0.0.1:9/v1"
    assert blank.base_url == DEFAULT_BASE_URL


def test_default_model_and_images_dir_come_from_the_environment(missing_key_file: str) -> None:
    result = Settings.from_env(
        env(
            missing_key_file,
            IMAGE_GEN_DEFAULT_MODEL=" dall-e-3 ",
            IMAGE_GEN_IMAGES_DIR="/data/images",
        )
    )

    assert result.default_model == "dall-e-3"
    assert result.images_dir == Path("/data/images")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", True),
    ],
)
def test_boolean_settings_accept_common_spellings(
    missing_key_file: str, raw: str, expected: bool
) -> None:
    result = Settings.from_env(
        env(missing_key_file, IMAGE_GEN_LOG_PROMPTS=raw, IMAGE_GEN_FSYNC=raw)
    )

    assert result.log_prompts is expected
    assert result.fsync is expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cr%zzet@db.internal:5432/images",  # a password not percent-encoded
        "postgresql://app:s3cret@[::1/images",  # an IPv6 host without its bracket
    ],
)
def test_a_database_url_that_cannot_be_parsed_is_refused_at_start_without_its_password(
    missing_key_file: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # libpq's own parse error quotes the URL (password and all); the connection pool would
    # then log it at every try, and the migrate command print it.
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env(missing_key_file, IMAGE_GEN_DATABASE_URL=url))

    assert "IMAGE_GEN_DATABASE_URL" in str(refused.value)
    assert "s3cr" not in str(refused.value)
    assert "s3cr" not in caplog.text


def test_a_database_url_from_its_file_that_cannot_be_parsed_is_refused_without_it(
    missing_key_file: str, tmp_path: Path
) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://app:s3cr%zzet@db.internal/images\n", encoding="utf-8")

    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env(missing_key_file, IMAGE_GEN_DATABASE_URL_FILE=str(secret)))

    assert "IMAGE_GEN_DATABASE_URL" in str(refused.value)
    assert "s3cr" not in str(refused.value)

"""IMAGE_GEN_STORAGE_URL: which store a service starts with, and the URLs it refuses without
repeating them; the S3 client takes the region from AWS_REGION."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen.settings import Settings, SettingsError


def test_unset_is_the_images_directory_and_a_file_url_names_it(tmp_path: Path) -> None:
    assert Settings.from_env({}).storage_url is None
    absolute = Settings.from_env({"IMAGE_GEN_STORAGE_URL": f"file://{tmp_path}/images"})
    assert (absolute.storage_url, absolute.images_dir) == (None, tmp_path / "images")
    relative = Settings.from_env({"IMAGE_GEN_STORAGE_URL": "file://pictures"})
    assert relative.images_dir == Path("pictures").absolute()
    same = {"IMAGE_GEN_STORAGE_URL": "file://pictures", "IMAGE_GEN_IMAGES_DIR": "pictures"}
    assert Settings.from_env(same).images_dir == Path("pictures").absolute()


def test_a_file_url_and_another_images_directory_are_refused() -> None:
    with pytest.raises(SettingsError, match="set one of them"):
        Settings.from_env(
            {"IMAGE_GEN_STORAGE_URL": "file:///srv/images", "IMAGE_GEN_IMAGES_DIR": "/srv/other"}
        )


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("s3://images", "s3://images"),
        ("s3://images/", "s3://images"),
        ("s3://my.images-2/team/a/", "s3://my.images-2/team/a"),
        ("  s3://images/prod  ", "s3://images/prod"),
    ],
)
def test_a_bucket_url_is_kept_with_its_prefix(url: str, kept: str) -> None:
    settings = Settings.from_env({"IMAGE_GEN_STORAGE_URL": url})
    assert settings.storage_url == kept
    assert settings.images_dir == Path("images").absolute()  # still the node's own state


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI-secret@images/p", "must not hold credentials"),
        ("https://user:hunter2-secret@s3.example.com/images", "it is a https:// URL"),
        ("s3:///prefix-secret", "needs a bucket name"),
        ("s3://a/p-secret", "needs a bucket name"),
        ("s3://images/a/../secret", "prefix must be"),
        ("s3://images/.secret", "prefix must be"),
        ("s3://images/p-secret?versionId=1", "without ? or #"),
        ("images-secret", "must be file://<path> or s3://<bucket>/<prefix>"),
        ("file://", "names no directory"),
    ],
)
def test_a_bad_url_stops_the_start_saying_why_and_never_repeats_it(url: str, why: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"IMAGE_GEN_STORAGE_URL": url})
    assert why in str(refused.value)
    assert "secret" not in str(refused.value).replace("AWS_SECRET_ACCESS_KEY", "")
    assert "IMAGE_GEN_STORAGE_URL" in str(refused.value)


def test_settings_built_in_code_check_the_url_too() -> None:
    assert Settings(storage_url="s3://images/p/").storage_url == "s3://images/p"
    with pytest.raises(SettingsError):
        Settings(storage_url="s3://user:pw@images/p")
    with pytest.raises(SettingsError, match="images directory"):
        Settings(storage_url="file:///srv/images")


def test_the_s3_client_takes_the_region_from_aws_region(monkeypatch) -> None:
    from imagegen.storage.s3blobs import s3_client

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    client = s3_client()
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.s3["addressing_style"] == "path"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert s3_client().meta.region_name == "eu-west-3"  # AWS_REGION wins, as in the AWS CLI
    monkeypatch.delenv("AWS_REGION")
    assert s3_client().meta.region_name == "us-west-2"

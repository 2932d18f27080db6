"""GET and DELETE /images/<id>: bytes, caching headers, exact-id lookups and deletion."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.service import job_files, read_metadata


@pytest.fixture
def job(placeholder_client):
    body = placeholder_client.post(
        "/generate", json={"prompt": "two moons", "count": 2, "size": "1024x1024"}
    ).get_json()
    return body


def test_get_image_returns_png_bytes_with_content_type_and_etag(placeholder_client, job):
    image = job["images"][0]

    response = placeholder_client.get(image["url"])

    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert response.headers["ETag"] == f'"{image["id"]}"'
    assert int(response.headers["Content-Length"]) == len(response.data)


def test_conditional_get_with_matching_etag_is_304(placeholder_client, job):
    url = job["images"][0]["url"]
    etag = placeholder_client.get(url).headers["ETag"]

    response = placeholder_client.get(url, headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert response.data == b""


def test_head_gives_headers_without_body(placeholder_client, job):
    response = placeholder_client.head(job["images"][0]["url"])

    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == b""


def test_uppercase_id_finds_the_same_image(placeholder_client, job):
    image = job["images"][0]

    response = placeholder_client.get(f"/images/{image['id'].upper()}")

    assert response.status_code == 200


def test_jpeg_and_webp_images_are_served_with_their_content_type(client, fake_openai, images_dir):
    jpeg = (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        b"\xff\xc0\x00\x11\x08\x00\x10\x00\x20\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        b"\xff\xd9"
    )
    fake_openai.image_bytes = jpeg

    body = client.post("/generate", json={"prompt": "x", "output_format": "jpeg"}).get_json()

    image = body["images"][0]
    assert image["format"] == "jpeg"
    assert (image["width"], image["height"]) == (32, 16)
    assert (images_dir / body["job_id"] / f"001-{image['id']}.jpg").is_file()
    response = client.get(image["url"])
    assert response.mimetype == "image/jpeg"
    assert response.data == jpeg


def test_delete_removes_file_and_marks_metadata(placeholder_client, job, images_dir):
    image, other = job["images"]

    response = placeholder_client.delete(image["url"])

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success"
    assert image["id"] in body["message"]
    assert not (images_dir / job["job_id"] / f"001-{image['id']}.png").exists()
    metadata = read_metadata(images_dir, job["job_id"])
    entries = {e["id"]: e for e in metadata["images"]}
    assert entries[image["id"]]["status"] == "deleted"
    assert entries[image["id"]]["deleted_at"].endswith("Z")
    assert entries[other["id"]]["status"] == "available"
    assert placeholder_client.get(image["url"]).status_code == 404
    assert placeholder_client.get(other["url"]).status_code == 200


def test_deleting_twice_is_image_not_found(placeholder_client, job):
    url = job["images"][0]["url"]
    placeholder_client.delete(url)

    response = placeholder_client.delete(url)

    assert response.status_code == 404
    assert response.get_json() == {
        "error": response.get_json()["error"],
        "status": "failed",
        "code": "IMAGE_NOT_FOUND",
    }


@pytest.mark.parametrize(
    "bad_id",
    [
        "a",
        "..",
        "../metadata.json",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        ".index",
        "%00",
        "x" * 5000,
        "\u00e9t\u00e9",
        "00000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-00000000000g",
    ],
)
def test_odd_ids_are_image_not_found_and_change_nothing(
    placeholder_client, job, images_dir, bad_id
):
    before = job_files(images_dir)

    got = placeholder_client.get(f"/images/{bad_id}")
    deleted = placeholder_client.delete(f"/images/{bad_id}")

    for response in (got, deleted):
        assert response.status_code == 404
        assert response.get_json()["code"] == "IMAGE_NOT_FOUND"
    assert job_files(images_dir) == before


def test_partial_id_and_job_id_do_not_match_an_image(placeholder_client, job, images_dir):
    before = job_files(images_dir)
    image_id = job["images"][0]["id"]

    for probe in (image_id[:8], image_id[:-1], job["job_id"], f"001-{image_id}"):
        assert placeholder_client.delete(f"/images/{probe}").status_code == 404
    assert job_files(images_dir) == before


def test_a_relative_images_dir_serves_images_as_the_readme_starts_the_service(
    settings, make_app, tmp_path, monkeypatch
):
    """The README runs the service from the repository with the default `images` directory."""
    monkeypatch.chdir(tmp_path)
    app = make_app(
        settings,
        images_dir=Path("images"),
        provider="placeholder",
        api_key=None,
        api_key_source="none",
    )
    client = app.test_client()

    image = client.post("/generate", json={"prompt": "relative"}).get_json()["images"][0]
    response = client.get(image["url"])
    thumbnail = client.get(image["thumbnail_url"])

    assert response.status_code == 200 and response.data.startswith(b"\x89PNG")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/png"
    assert job_files(tmp_path / "images")

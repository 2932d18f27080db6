"""What only the S3 blob store promises, on the same SeaweedFS server as the contract tests:
the bucket's keys, configuration from the AWS variables, and how its failures are told."""

from __future__ import annotations

import errno
import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from imagegen.errors import StorageUnavailable
from imagegen.storage.s3blobs import BlobStoreUnavailable, S3Blobs, s3_blobs_from_url
from tests.contract.conftest import BUCKET
from tests.support import seaweed as weed
from tests.support.seaweed import SeaweedFS, free_ports

JOB = "0b7e1e9a-5a4c-4c7e-9a59-2f0d3c1b6a11"
IMAGE = "5f0c8a0e-8f7e-4c1e-9f57-3f3c6a0b2d41"


@pytest.fixture
def prefix() -> str:
    return f"tests/{uuid.uuid4().hex}"


def _names(client: Any, prefix: str) -> list[str]:
    answer = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(entry["Key"] for entry in answer.get("Contents", ()))


def test_a_published_job_has_exactly_the_documented_keys(seaweed_client: Any, prefix: str):
    blobs = S3Blobs(BUCKET, f"/{prefix}/", seaweed_client)
    publication = blobs.publish(JOB, marker="metadata.json")
    publication.put(f"001-{IMAGE}.png", b"png")
    publication.put("metadata.json", b"{}")
    publication.commit()

    assert _names(seaweed_client, prefix) == [
        f"{prefix}/{JOB}/001-{IMAGE}.png",
        f"{prefix}/{JOB}/metadata.json",
    ]
    marker, image = blobs.info(f"{JOB}/metadata.json"), blobs.info(f"{JOB}/001-{IMAGE}.png")
    assert marker.modified_ns >= image.modified_ns  # the marker went last


def test_the_url_and_the_aws_variables_configure_the_store(
    seaweed: SeaweedFS, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_REGION", weed.REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", weed.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", weed.SECRET_KEY)

    blobs = s3_blobs_from_url(f"s3://{BUCKET}/{prefix}")
    blobs.put("a/b", b"bytes")

    assert (blobs.bucket, blobs.prefix) == (BUCKET, prefix)
    assert blobs.get("a/b") == b"bytes" and blobs.writable()
    assert s3_blobs_from_url(f"s3://{BUCKET}", client=object()).prefix == ""
    for url in ("file:///x", "s3:///prefix", f"s3://{BUCKET}/a/../b", f"s3://{BUCKET}/p?x=1"):
        with pytest.raises(ValueError):
            s3_blobs_from_url(url, client=object())


def test_delete_prefix_removes_more_than_one_batch(seaweed_client: Any, prefix: str):
    blobs = S3Blobs(BUCKET, prefix, seaweed_client)
    keys = [f"{JOB}/thumbs/{n:04d}" for n in range(1001)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: blobs.put(key, b"x"), keys))
    blobs.put("other/a", b"kept")

    assert blobs.delete_prefix(f"{JOB}/") == 1001
    assert _names(seaweed_client, prefix) == [f"{prefix}/other/a"]


def test_a_stream_past_the_multipart_threshold_goes_up_in_parts(seaweed_client: Any, prefix: str):
    blobs = S3Blobs(BUCKET, prefix, seaweed_client)
    data = bytes(range(256)) * (9 * 4096 + 3)  # 9 MiB: over boto3's 8 MiB threshold

    info = blobs.put(f"{JOB}/big.bin", io.BytesIO(data))

    assert info == blobs.info(f"{JOB}/big.bin") and info.size == len(data)
    assert "-" in info.etag  # a multipart upload's etag: <md5 of md5s>-<parts>
    assert blobs.get(f"{JOB}/big.bin") == data


def test_an_unreachable_endpoint_is_storage_unavailable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_ports(1)[0]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
    monkeypatch.setenv("AWS_REGION", weed.REGION)
    from imagegen.storage.s3blobs import s3_client

    blobs = S3Blobs(BUCKET, "p", s3_client(attempts=1, connect_timeout=1, read_timeout=1))
    started = time.monotonic()

    for call in (blobs.get, blobs.info, blobs.open, lambda key: list(blobs.list(key))):
        with pytest.raises(BlobStoreUnavailable):
            call("a/b")
    with pytest.raises(BlobStoreUnavailable):
        blobs.put("a/b", io.BytesIO(b"a stream"))
    with pytest.raises(BlobStoreUnavailable) as raised:
        blobs.put("a/b", b"x")
    assert isinstance(raised.value, OSError)  # what the interface promises callers
    assert blobs.writable() is False
    assert time.monotonic() - started < 20


def test_wrong_credentials_and_a_missing_bucket_are_told_apart(seaweed: SeaweedFS):
    denied = S3Blobs(BUCKET, "p", seaweed.client(attempts=1, secret_key="not-the-secret"))
    missing = S3Blobs("no-such-bucket-here", "p", seaweed.client(attempts=1))

    with pytest.raises(OSError) as raised:
        denied.put("a/b", b"x")
    assert raised.value.errno == errno.EACCES
    assert not isinstance(raised.value, BlobStoreUnavailable)
    with pytest.raises(BlobStoreUnavailable):
        missing.put("a/b", b"x")
    assert denied.writable() is False and missing.writable() is False


def test_storage_unavailable_is_a_503_with_retry_after():
    error = StorageUnavailable("The image store cannot be reached.", retry_after=5)

    assert (error.status, error.code) == (503, "STORAGE_UNAVAILABLE")
    assert error.headers() == {"Retry-After": "5"}

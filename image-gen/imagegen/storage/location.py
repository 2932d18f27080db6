"""Where the image store is, from IMAGE_GEN_STORAGE_URL: the images directory, or a bucket.

    (unset)                    the images directory (IMAGE_GEN_IMAGES_DIR), as always
    file:///srv/images         the same, in that directory (file://images: relative)
    s3://<bucket>/<prefix>     an S3-compatible bucket, every blob under `<prefix>/`

The endpoint, region and credentials of a bucket come from the standard AWS variables, never
from the URL (storage/s3blobs.py). A refusal never repeats the URL: it may hold what its
writer should not have put there. Standard library only: Settings parses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imagegen.storage.blobs import BadKey, check_key

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
_FORMS = "file://<path> or s3://<bucket>/<prefix>"


class StorageURLError(ValueError):
    """IMAGE_GEN_STORAGE_URL cannot be used; the message says why, without the URL."""


@dataclass(frozen=True)
class Bucket:
    """An S3 bucket and the prefix (no leading or trailing `/`; may be empty) of every key."""

    name: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}" if self.prefix else f"s3://{self.name}"


def parse(url: str) -> Path | Bucket:
    """The directory of a file:// URL, or the bucket of an s3:// URL; StorageURLError."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise StorageURLError(f"IMAGE_GEN_STORAGE_URL must be {_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("file", "s3"):
        named = f"a {scheme}:// URL" if scheme and scheme.isalnum() else "not such a URL"
        raise StorageURLError(f"IMAGE_GEN_STORAGE_URL must be {_FORMS}; it is {named}")
    if "@" in parts.netloc:
        raise StorageURLError(
            "IMAGE_GEN_STORAGE_URL must not hold credentials: give them in AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, or in the file AWS_SHARED_CREDENTIALS_FILE names"
        )
    if parts.query or parts.fragment:
        raise StorageURLError(f"IMAGE_GEN_STORAGE_URL must be {_FORMS}, without ? or #")
    if scheme == "file":
        host = "" if parts.netloc in ("", "localhost") else parts.netloc
        path = unquote(host + parts.path)
        if not path:
            raise StorageURLError("IMAGE_GEN_STORAGE_URL file:// names no directory")
        return Path(path)
    if not _BUCKET.match(parts.netloc):
        raise StorageURLError(
            "IMAGE_GEN_STORAGE_URL s3:// needs a bucket name: 3 to 63 letters, digits, dots, "
            "hyphens or underscores (s3://<bucket>/<prefix>)"
        )
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except BadKey:
            raise StorageURLError(
                "IMAGE_GEN_STORAGE_URL's prefix must be parts of letters, digits, dots, hyphens "
                "and underscores separated by single slashes, none of them `.` or `..`, the "
                "first not starting with a dot"
            ) from None
    return Bucket(parts.netloc, prefix)

"""What the reliability tests check after each fault: JSON errors, an unchanged images
directory, no store damage, no leaked secret."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from tests.support.service import SERVICE_STATE, TEST_KEY

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def assert_json_error(status: int, content_type: str, body: bytes, expected: int, code: str):
    """The service's own error shape: JSON {"error", "status": "failed", "code"}."""
    assert status == expected, (status, body[:300])
    assert content_type.split(";")[0].strip() == "application/json", content_type
    payload = json.loads(body)
    assert payload["status"] == "failed", payload
    assert payload["code"] == code, payload
    assert isinstance(payload["error"], str) and payload["error"], payload
    return payload


def assert_client_error(response, expected: int, code: str) -> dict[str, Any]:
    """assert_json_error for a Flask test-client response."""
    return assert_json_error(
        response.status_code, response.content_type, response.get_data(), expected, code
    )


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under `root` (the index included): kind and content hash or link target.

    The service's own books (the ledger, metrics) are left out: they count requests, they
    are not images or jobs.
    """
    result: dict[str, tuple[str, str]] = {}
    if not root.exists():
        return result
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if Path(rel).parts[0] in SERVICE_STATE:
            continue
        if path.is_symlink():
            result[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            result[rel] = ("dir", "")
        else:
            try:
                result[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            except FileNotFoundError:  # removed while we looked
                continue
    return result


def store_problems(root: Path, *, allow_staging: bool = False) -> list[str]:
    """Everything that breaks the store's promises; empty when the store is consistent.

    A job directory is complete (valid metadata.json, every available image present with
    its recorded sha256, every deleted image absent), index links point at available images,
    nothing half-written is visible. `allow_staging` tolerates what a killed writer leaves:
    `.tmp-*` staging directories and index links to jobs that never landed.
    """
    problems: list[str] = []
    if not root.exists():
        return problems
    index = root / ".index"
    available: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name == ".index" or name in SERVICE_STATE:
            continue
        if name.startswith(".tmp-"):
            if not allow_staging:
                problems.append(f"staging leftover {name}")
            continue
        if not UUID.match(name) or not entry.is_dir() or entry.is_symlink():
            problems.append(f"unexpected entry {name}")
            continue
        meta_path = entry / "metadata.json"
        try:
            metadata = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            problems.append(f"job {name} has no metadata.json")
            continue
        except ValueError as exc:
            problems.append(f"job {name} metadata.json is not JSON: {exc}")
            continue
        if metadata.get("job_id") != name:
            problems.append(f"job {name} metadata names job {metadata.get('job_id')!r}")
        listed = {"metadata.json", ".lock"}
        for image in metadata.get("images", []):
            file_name = image.get("file", "")
            listed.add(file_name)
            path = entry / file_name
            if image.get("status") == "deleted":
                if path.exists():
                    problems.append(f"deleted image {file_name} still on disk in {name}")
                continue
            if not path.is_file():
                problems.append(f"available image {file_name} missing from {name}")
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != image.get("sha256"):
                problems.append(f"image {file_name} in {name} does not match its sha256")
            if len(data) != image.get("bytes"):
                problems.append(f"image {file_name} in {name} is not {image.get('bytes')} bytes")
            available[image["id"]] = path
            link = index / image["id"]
            if not link.is_symlink() or link.resolve() != path.resolve():
                problems.append(f"available image {image['id']} has no index link")
        for extra in sorted(p.name for p in entry.iterdir() if p.name not in listed):
            problems.append(f"job {name} holds an unlisted file {extra}")
    if index.exists():
        for link in sorted(index.iterdir()):
            if link.name in available:
                continue
            if not (allow_staging and link.is_symlink() and not link.exists()):
                problems.append(f"index entry {link.name} points at no available image")
    return problems


def _secret_fragments(key: str) -> list[str]:
    """The key, every `sk-` prefix of it long enough to identify it, and 16-char windows."""
    fragments = {key}
    fragments.update(key[:n] for n in range(len("sk-proj-TE"), len(key)))
    fragments.update(key[i : i + 16] for i in range(len(key) - 15))
    return sorted(fragments, key=len)


SECRET_FRAGMENTS = _secret_fragments(TEST_KEY)


def leaked(text: str | bytes) -> list[str]:
    """Which fragments of TEST_KEY occur in `text` (empty if none)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [fragment for fragment in SECRET_FRAGMENTS if fragment in text]

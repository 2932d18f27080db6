"""Constants and helpers the tests share: the test key and tokens, reading what a job left
on disk, strict JSON, a tmpfs mount, and waiting for a condition."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from imagegen.access.tokens import digest_of
from tests.support.gunicorn_server import Service

# A key shaped like a real one, so a leak of any part of it is easy to find.
TEST_KEY = "sk-proj-TESTKEY-imagegen-0123456789abcdefABCDEF"


# The service's own books under the images directory: not images, jobs or the index.
SERVICE_STATE = frozenset({".ledger", ".metrics"})


def job_files(images_dir: Path) -> list[str]:
    """Every path under the images directory, relative and sorted (the index included),
    except the service's own state (the ledger, metrics)."""
    if not images_dir.exists():
        return []
    return sorted(
        str(p.relative_to(images_dir))
        for p in images_dir.rglob("*")
        if p.relative_to(images_dir).parts[0] not in SERVICE_STATE
    )


def read_metadata(images_dir: Path, job_id: str) -> dict[str, Any]:
    return strict_json((images_dir / job_id / "metadata.json").read_text())


def strict_json(text: str | bytes) -> Any:
    """json.loads as strict parsers read JSON: NaN, Infinity and -Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- client tokens ----------------------------------------------------------------------------
ALICE = "igt_alice-0123456789abcdefghijklmnop"


BOB = "igt_bob-0123456789abcdefghijklmnopqr"


OPS = "igt_ops-0123456789abcdefghijklmnopqrs"


def line(name: str, secret: str, *options: str) -> str:
    """A tokens-file line for this token (stored hashed, as in production)."""
    return " ".join([name, "sha256:" + digest_of(secret).hex(), *options])


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# --- the OpenAI-compatible routes through the official SDK, against a real Gunicorn ---------
# What the SDK sends as its api_key: a client token, never the service's OpenAI key.
CLIENT_TOKEN = "client-token-not-the-openai-key"


def sdk(service: Service, **options) -> openai.OpenAI:
    """The official SDK pointed at this service; no retries unless asked."""
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=CLIENT_TOKEN, timeout=30, **options)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A fresh tmpfs mounted on `mount` (created) with `options` such as "size=2m", unmounted
    afterwards. Skips the test, saying why, without root or when mounting fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` every 20 ms until it returns something truthy, and return that;
    fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")

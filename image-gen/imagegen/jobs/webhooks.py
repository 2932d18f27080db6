"""Completion webhooks: one signed POST to the caller's URL when an asynchronous job ends.

Signed the way Standard Webhooks (standardwebhooks.com) sign, so their libraries verify it:
headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature:
v1,<base64 HMAC-SHA256>` over `"{id}.{timestamp}.{body}"`. The HMAC key is the secret's
UTF-8 bytes, or for a `whsec_<base64>` secret the decoded bytes. Deliveries go only to
http(s) URLs on allowed hosts (by default: hosts whose addresses are all public), never
follow redirects, and are retried with exponential backoff.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import http.client
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from imagegen import __version__, strictjson
from imagegen.errors import ValidationError

log = logging.getLogger(__name__)

URL_HEADER = "Webhook-URL"
SECRET_HEADER = "Webhook-Secret"  # noqa: S105 - a header name
MIN_SECRET_CHARS, MAX_SECRET_CHARS = 16, 256
MAX_URL_CHARS = 2048
_MAX_BACKOFF = 300.0
_MAX_ANSWER_BYTES = 64 * 1024


class TargetRefused(Exception):
    """The webhook's host is not one deliveries may go to; retrying cannot help."""


@dataclass(frozen=True)
class Delivery:
    """How a delivery ended: delivered, given up (with the last error), or interrupted."""

    delivered: bool
    attempts: int
    error: str | None = None
    interrupted: bool = False


def check_url(url: str, hosts: tuple[str, ...]) -> str:
    """The URL if webhooks may go there; ValidationError naming the problem otherwise.

    Checked again at each delivery, with the host's addresses resolved then.
    """
    field = {"field": URL_HEADER}
    if not (0 < len(url) <= MAX_URL_CHARS and url.isascii() and url.isprintable()) or " " in url:
        raise ValidationError(
            f"{URL_HEADER} must be an http(s) URL of at most {MAX_URL_CHARS} characters.",
            details=field,
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationError(f"{URL_HEADER} is not a valid URL.", details=field) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError(
            f"{URL_HEADER} must be an http:// or https:// URL; webhooks are never sent to "
            f"{parts.scheme or 'schemeless'} URLs.",
            details=field,
        )
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or port == 0:
        raise ValidationError(
            f"{URL_HEADER} needs a host (and no user name or password in the URL).",
            details=field,
        )
    if "*" in hosts:
        return url
    if hosts:
        if host not in hosts:
            raise ValidationError(
                f"Webhooks may only go to these hosts on this service: {', '.join(hosts)}.",
                details=field,
            )
        return url
    if _is_local_name(host) or not _public_literal(host):
        raise ValidationError(
            f"Webhooks may not go to {host}: it is not a public address. The operator can "
            "allow it with IMAGE_GEN_WEBHOOK_HOSTS.",
            details=field,
        )
    return url


def check_secret(secret: str) -> str:
    """A caller's signing secret if usable: printable ASCII, 16 to 256 characters."""
    if not (
        MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS
        and secret.isascii()
        and secret.isprintable()
        and " " not in secret
    ):
        raise ValidationError(
            f"{SECRET_HEADER} must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} printable ASCII "
            "characters without spaces (e.g. whsec_ and 32 random bytes in base64).",
            details={"field": SECRET_HEADER},
        )
    return secret


def signing_key(secret: str) -> bytes:
    """The HMAC key for a secret: a `whsec_` secret's base64 payload, else its UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode("utf-8")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of id.timestamp.body."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(event: str, data: dict[str, Any], timestamp: str) -> bytes:
    """The body: `{"type": "job.completed" | "job.failed", "timestamp", "data": job}`."""
    return strictjson.dumps(
        {"type": event, "timestamp": timestamp, "data": data}, separators=(",", ":")
    ).encode()


def deliver(
    url: str,
    secret: str,
    message_id: str,
    body: bytes,
    *,
    hosts: tuple[str, ...],
    attempts: int,
    backoff: float,
    timeout: float,
    stop: threading.Event,
) -> Delivery:
    """POST `body` until a 2xx answer, at most `attempts` times, backing off between tries.

    A refused host ends it at once. `stop` (the process is shutting down) interrupts the
    waits; the delivery is then left for the next process to make.
    """
    error: str | None = None
    for attempt in range(attempts):
        if attempt:
            wait = min(_MAX_BACKOFF, backoff * 2 ** (attempt - 1))
            if stop.wait(wait * (0.75 + random.random() / 4)):  # noqa: S311 - jitter
                return Delivery(False, attempt, error, interrupted=True)
        try:
            status = _post(url, secret, message_id, body, hosts, timeout)
        except TargetRefused as exc:
            return Delivery(False, attempt + 1, str(exc))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = _reason(exc)
        else:
            if 200 <= status < 300:
                return Delivery(True, attempt + 1)
            error = f"HTTP {status}"
        log.info("webhook attempt %d to %s failed: %s", attempt + 1, _origin(url), error)
    return Delivery(False, attempts, error)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default TLS context, built once: loading the CA store on every attempt is slow."""
    return ssl.create_default_context()


def _post(
    url: str, secret: str, message_id: str, body: bytes, hosts: tuple[str, ...], timeout: float
) -> int:
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not hosts:  # any public host: its addresses now, not only its name, must be public
        _check_addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"image-gen/{__version__} webhooks",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
    opener = urllib.request.OpenerDirector()  # http(s) only; no proxies, no redirects
    opener.add_handler(urllib.request.HTTPHandler())
    opener.add_handler(urllib.request.HTTPSHandler(context=_tls_context()))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    with opener.open(request, timeout=timeout) as answer:
        answer.read(_MAX_ANSWER_BYTES)
        status: int = answer.status  # an http.client.HTTPResponse: open() is typed Any
        return status


def _check_addresses(host: str, port: int) -> None:
    if _is_local_name(host):
        raise TargetRefused(f"{host} is a local name")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # an AF_INET(6) host
        if not address.is_global:
            raise TargetRefused(f"{host} resolves to a non-public address ({address})")


def _is_local_name(host: str) -> bool:
    return host == "localhost" or host.endswith((".localhost", ".local", ".internal"))


def _public_literal(host: str) -> bool:
    """False for an IP literal that is not public; True for names (resolved at delivery)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return True


def _origin(url: str) -> str:
    """Scheme, host and port only: paths may carry the caller's tokens, logs must not."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)[:200] or type(exc).__name__

"""A small OpenAI Images API client on the standard library's urllib.

Failure is modelled like urllib3/httpx: one base exception and a few precise subclasses.
Every call has explicit timeouts and runs inside a `Deadline`; retries follow a
`RetryPolicy` (exponential backoff, honouring `Retry-After` and `retry-after-ms`).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import ipaddress
import json
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import __version__

_CHUNK = 1024 * 1024
_MAX_RETRY_AFTER = 86_400.0  # a day: anything longer from an upstream is not believed
_SECRET_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{3,}")


class OpenAIError(Exception):
    """Base of every failure talking to the upstream."""


class APIConnectionError(OpenAIError):
    """No usable answer: the connection failed, was refused or dropped."""


class APITimeoutError(APIConnectionError):
    """The upstream did not answer within the timeout or the request's deadline."""


class InvalidResponseError(OpenAIError):
    """The upstream answered, but with something we cannot use."""


class APIStatusError(OpenAIError):
    """The upstream answered with an HTTP error status and (usually) an error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.should_retry = should_retry
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.request_id = request_id


class Deadline:
    """A point in time a whole operation must finish by."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return self._end - self._clock()

    def check(self) -> float:
        """The seconds left; raise APITimeoutError when none are."""
        left = self.remaining()
        if left <= 0:
            raise APITimeoutError("the request's deadline passed")
        return left


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying an upstream call again."""

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 20.0  # a longer Retry-After is passed to the client instead
    statuses: frozenset[int] = frozenset({408, 409, 429})  # and every 5xx, as OpenAI's SDK

    def should_retry(self, error: OpenAIError, attempt: int) -> bool:
        if attempt >= self.max_retries:
            return False
        if isinstance(error, APIStatusError):
            if error.code == "insufficient_quota":
                return False
            if error.retry_after is not None and error.retry_after > self.max_retry_after:
                return False
            if error.should_retry is not None:  # the upstream's x-should-retry header
                return error.should_retry
            return error.status in self.statuses or error.status >= 500
        return isinstance(error, APIConnectionError)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        backoff = min(self.backoff_max, self.backoff_base * 2**attempt)
        return backoff * (0.75 + random.random() / 4)  # noqa: S311 - jitter, not crypto


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds, decimal or HTTP date).

    Anything unparseable, negative or not finite is ignored rather than trusted.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        value = _finite(raw_ms)
        if value is not None:
            return value / 1000
    raw = lowered.get("retry-after")
    if not raw:
        return None
    value = _finite(raw)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(_MAX_RETRY_AFTER, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def _finite(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None
    return min(value, _MAX_RETRY_AFTER)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


class OpenAIClient:
    """Calls `POST {base_url}/images/generations` and downloads the images it points to."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = 256 * 1024 * 1024,
        max_image_bytes: int = 64 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._base = urllib.parse.urlsplit(self.base_url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry = retry or RetryPolicy()
        self.max_response_bytes = max_response_bytes
        self.max_image_bytes = max_image_bytes
        self._sleep = sleep
        self._ssl = ssl.create_default_context()

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self.base_url!r})"

    # --- public calls ---------------------------------------------------------------------

    def generate_images(self, payload: Mapping[str, Any], deadline: Deadline) -> dict[str, Any]:
        """POST the payload to /images/generations; return the parsed success body."""
        body = json.dumps(payload).encode()
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        url = f"{self.base_url}/images/generations"
        response = self._with_retries(
            lambda: self._checked(
                self._send("POST", url, body, headers, deadline, self.max_response_bytes)
            ),
            deadline,
        )
        try:
            data = json.loads(response.body)
        except ValueError:
            raise InvalidResponseError("the upstream answered with invalid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise InvalidResponseError("the upstream's answer has no 'data' list")
        return data

    def download(self, url: str, deadline: Deadline, max_redirects: int = 3) -> bytes:
        """GET an image URL from an upstream answer, following only safe redirects."""

        def attempt() -> _Response:
            target = url
            for _ in range(max_redirects + 1):
                self._check_download_url(target)
                response = self._send(
                    "GET", target, None, {"Accept": "image/*"}, deadline, self.max_image_bytes
                )
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("location")
                    if not location:
                        raise InvalidResponseError("the image URL redirected without a Location")
                    target = urllib.parse.urljoin(target, location)
                    continue
                return self._checked(response)
            raise InvalidResponseError("the image URL redirected too many times")

        try:
            return self._with_retries(attempt, deadline).body
        except APIStatusError as exc:
            raise InvalidResponseError(f"the image URL answered HTTP {exc.status}") from None

    # --- machinery ------------------------------------------------------------------------

    def _with_retries(self, call: Callable[[], _Response], deadline: Deadline) -> _Response:
        attempt = 0
        while True:
            try:
                return call()
            except OpenAIError as error:
                if not self.retry.should_retry(error, attempt):
                    raise
                wait = self.retry.delay(attempt, getattr(error, "retry_after", None))
                if wait >= deadline.remaining():
                    raise
                self._sleep(wait)
                attempt += 1

    def _checked(self, response: _Response) -> _Response:
        if 200 <= response.status < 300:
            return response
        raise self._status_error(response)

    def _status_error(self, response: _Response) -> APIStatusError:
        message, type_, code, param = f"HTTP {response.status}", None, None, None
        try:
            error = json.loads(response.body).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            type_, code, param = (self._field(error.get(k)) for k in ("type", "code", "param"))
        return APIStatusError(
            response.status,
            self.redact(message)[:500],
            type_=type_,
            code=code,
            param=param,
            retry_after=parse_retry_after(response.headers),
            request_id=self._field(response.headers.get("x-request-id")),
            should_retry={"true": True, "false": False}.get(
                response.headers.get("x-should-retry", "").strip().lower()
            ),
        )

    def _field(self, value: object) -> str | None:
        """A short upstream string we may log or pass on: redacted and bounded."""
        return self.redact(value)[:100] if isinstance(value, str) else None

    def redact(self, text: str) -> str:
        """Remove the key, and anything shaped like an OpenAI key, from upstream text."""
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return _SECRET_PATTERN.sub("[redacted]", text)

    def _check_download_url(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self._base.scheme == "http":
            same_origin = parts.netloc == self._base.netloc
            if same_origin or (is_loopback(parts.hostname) and is_loopback(self._base.hostname)):
                return
        raise InvalidResponseError(
            f"refusing to download an image from a {parts.scheme or 'schemeless'}: URL"
        )

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        deadline: Deadline,
        max_bytes: int,
    ) -> _Response:
        """One HTTP exchange; the body is read in chunks within the deadline and byte cap."""
        watchdog = _Watchdog(deadline)
        opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler(),  # only http(s) handlers: no file:, ftp:, data:
            _HTTPHandler(self.connect_timeout, watchdog),
            _HTTPSHandler(self.connect_timeout, watchdog, self._ssl),
        ):
            opener.add_handler(handler)
        headers = {"User-Agent": f"image-gen/{__version__}", **headers}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with watchdog, opener.open(request, timeout=self._timeout(deadline)) as raw:
                status = raw.status
                response_headers = {k.lower(): v for k, v in raw.headers.items()}
                declared = response_headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise InvalidResponseError("the upstream's answer is larger than allowed")
                if declared.isdigit():  # one read into one buffer: no chunks to join
                    chunks = [raw.read(int(declared))]
                    total = len(chunks[0])
                else:
                    chunks, total = [], 0
                    while chunk := raw.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise InvalidResponseError(
                                "the upstream's answer is larger than allowed"
                            )
                        chunks.append(chunk)
                if watchdog.fired:  # the socket was shut: what was read may be cut short
                    raise APITimeoutError("the upstream did not answer before the deadline")
                if declared.isdigit() and total != int(declared):
                    # http.client's read(n) returns short data instead of raising.
                    raise APIConnectionError("the upstream closed the connection mid-answer")
        except TimeoutError:
            raise APITimeoutError("the upstream did not answer in time") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, OpenAIError) as exc:
            if watchdog.fired:
                raise APITimeoutError("the upstream did not answer before the deadline") from None
            if isinstance(exc, OpenAIError):
                raise
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise APITimeoutError("the upstream did not answer in time") from None
            raise APIConnectionError(
                f"the connection to the upstream failed: {_reason(reason)}"
            ) from None
        return _Response(status, response_headers, b"".join(chunks))

    def _timeout(self, deadline: Deadline) -> float:
        """The socket timeout for one exchange: each wait is bounded by the read timeout and
        the whole exchange by the deadline (the watchdog enforces the latter)."""
        return min(self.read_timeout, deadline.check())


class _Watchdog:
    """Shuts an exchange's sockets down when the deadline passes.

    Socket timeouts bound each wait, not the total: an upstream that sends a byte now and
    then would otherwise hold a request for hours.
    """

    def __init__(self, deadline: Deadline) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline.remaining()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


def _connection_class(
    base: type[http.client.HTTPConnection], connect_timeout: float, watchdog: _Watchdog
) -> type[http.client.HTTPConnection]:
    """A connection that connects within `connect_timeout`, then reads with its own timeout."""

    class Connection(base):  # type: ignore[valid-type, misc]
        def connect(self) -> None:
            read_timeout = self.timeout
            self.timeout = min(connect_timeout, read_timeout)
            try:
                super().connect()
            finally:
                self.timeout = read_timeout
            self.sock.settimeout(read_timeout)
            watchdog.watch(self.sock)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_timeout: float, watchdog: _Watchdog) -> None:
        super().__init__()
        self._class = _connection_class(http.client.HTTPConnection, connect_timeout, watchdog)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._class, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(
        self, connect_timeout: float, watchdog: _Watchdog, context: ssl.SSLContext
    ) -> None:
        super().__init__(context=context)
        self._class = _connection_class(http.client.HTTPSConnection, connect_timeout, watchdog)
        self._ctx = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._class, req, context=self._ctx)

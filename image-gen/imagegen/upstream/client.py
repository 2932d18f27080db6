"""A small OpenAI Images API client on the standard library's urllib.

Every call has explicit timeouts and runs inside a `Deadline`; retries follow a
`RetryPolicy` (upstream.retry); failures are upstream.errors' classes. Answers are read
within byte caps, image URLs are downloaded only over safe schemes, and anything shaped like
a key is redacted from what the upstream says.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from imagegen import __version__, strictjson
from imagegen.upstream.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidResponseError,
    OpenAIError,
)
from imagegen.upstream.retry import Deadline, RetryPolicy, parse_retry_after
from imagegen.upstream.transport import (
    _CHUNK,
    _WATCHDOG,
    FormFile,
    _opener,
    _read_capped,
    _Response,
    _sse_events,
    _Watchdog,
    describe_failure,
    encode_multipart,
    is_loopback,
)

T = TypeVar("T")


_SECRET_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{3,}")


@dataclass(frozen=True)
class AttemptReport:
    """One HTTP attempt to the upstream, retries included, as the client tells `on_attempt`.

    `status` is the HTTP status of an answer (a streamed attempt that ends well: 200); `error`
    is what the attempt raised instead (a status error, a timeout, a dropped connection...).
    """

    method: str
    url: str
    seconds: float
    status: int | None = None
    error: Exception | None = None


AttemptObserver = Callable[[AttemptReport], None]


class OpenAIClient:
    """Calls `POST {base_url}/images/generations` and downloads the images it points to.

    `on_attempt`, if given, hears of every HTTP attempt (retries included) as it ends.
    """

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
        on_attempt: AttemptObserver | None = None,
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
        self._on_attempt = on_attempt
        self._opener = _opener(urllib.request.getproxies(), connect_timeout)

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self.base_url!r})"

    # --- public calls ---------------------------------------------------------------------

    def generate_images(self, payload: Mapping[str, Any], deadline: Deadline) -> dict[str, Any]:
        """POST the payload to /images/generations; return the parsed success body (each
        `b64_json` a memoryview of the answer's bytes: see `_parse_cutting_base64`)."""
        body = strictjson.dumps(payload).encode()
        return self._post_images(
            "images/generations", body, "application/json", deadline, _model(payload)
        )

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

    def edit_images(
        self, fields: Sequence[tuple[str, str]], files: Sequence[FormFile], deadline: Deadline
    ) -> dict[str, Any]:
        """POST a multipart form to /images/edits; return the parsed success body."""
        return self._post_form("images/edits", fields, files, deadline)

    def create_variation(
        self, fields: Sequence[tuple[str, str]], files: Sequence[FormFile], deadline: Deadline
    ) -> dict[str, Any]:
        """POST a multipart form to /images/variations; return the parsed success body."""
        return self._post_form("images/variations", fields, files, deadline)

    def _post_form(
        self,
        path: str,
        fields: Sequence[tuple[str, str]],
        files: Sequence[FormFile],
        deadline: Deadline,
    ) -> dict[str, Any]:
        """One multipart POST with the same retries, deadline and error redaction as JSON."""
        body, content_type = encode_multipart(fields, files)
        model = next((value for name, value in fields if name == "model"), None)
        return self._post_images(path, body, content_type, deadline, model)

    def _post_images(
        self, path: str, body: bytes, content_type: str, deadline: Deadline, model: str | None
    ) -> dict[str, Any]:
        """POST a body to an Images API path, retried within the deadline; the success body."""
        headers = {
            **self.auth_headers(),
            "Content-Type": content_type,
            "Accept": "application/json",
        }
        url = self.url_for(path, model)
        response = self._with_retries(
            lambda: self._checked(
                self._send("POST", url, body, headers, deadline, self.max_response_bytes)
            ),
            deadline,
        )
        return _images_answer(response.body)

    def url_for(self, path: str, model: str | None) -> str:
        """The URL of an Images API path (`model` is the body's; OpenAI's URLs do not name it)."""
        return f"{self.base_url}/{path}"

    def auth_headers(self) -> dict[str, str]:
        """The headers that carry the key: OpenAI's bearer token."""
        return {"Authorization": f"Bearer {self._api_key}"}

    # --- machinery ------------------------------------------------------------------------

    def _attempt(self, method: str, url: str, call: Callable[[], T]) -> T:
        """One attempt, timed and told to `on_attempt` however it ends."""
        report = self._on_attempt
        if report is None:
            return call()
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:
            report(AttemptReport(method, url, time.perf_counter() - started, error=exc))
            raise
        status = result.status if isinstance(result, _Response) else 200
        report(AttemptReport(method, url, time.perf_counter() - started, status=status))
        return result

    def _with_retries(
        self,
        call: Callable[[], T],
        deadline: Deadline,
        *,
        retryable: Callable[[], bool] = lambda: True,
    ) -> T:
        """`call`, retried per the policy within the deadline while `retryable()` holds."""
        attempt = 0
        while True:
            try:
                return call()
            except OpenAIError as error:
                if not retryable() or not self.retry.should_retry(error, attempt):
                    raise
                hint = error.retry_after if isinstance(error, APIStatusError) else None
                wait = self.retry.delay(attempt, hint)
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
        """One HTTP attempt, told to `on_attempt`: `_send_once`."""
        return self._attempt(
            method, url, lambda: self._send_once(method, url, body, headers, deadline, max_bytes)
        )

    def _send_once(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        deadline: Deadline,
        max_bytes: int,
    ) -> _Response:
        """One HTTP exchange; the body is read within the deadline and byte cap."""
        with self._exchange(method, url, body, headers, deadline) as raw:
            status = raw.status
            response_headers = {k.lower(): v for k, v in raw.headers.items()}
            declared = response_headers.get("content-length", "")
            length = int(declared) if declared.isdigit() else None
            if length is not None and length > max_bytes:
                raise InvalidResponseError("the upstream's answer is larger than allowed")
            # A declared length is one read into one buffer: no chunks to join.
            data = raw.read(length) if length is not None else _read_capped(raw, max_bytes)
            if length is not None and len(data) != length:
                # http.client's read(n) returns short data instead of raising.
                raise APIConnectionError("the upstream closed the connection mid-answer")
        return _Response(status, response_headers, data)

    @contextlib.contextmanager
    def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        deadline: Deadline,
    ) -> Iterator[http.client.HTTPResponse]:
        """One HTTP exchange within the deadline, the answer read inside the `with`; every
        transport failure ends as APITimeoutError or APIConnectionError. A socket the
        watchdog shut may have cut the read short, so that is a timeout whatever was read."""
        watchdog = _Watchdog(deadline)
        headers = {"User-Agent": f"image-gen/{__version__}", **headers}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
        watching = _WATCHDOG.set(watchdog)  # for the connection the opener makes
        try:
            with watchdog, self._opener.open(request, timeout=self._timeout(deadline)) as raw:
                yield raw
                if watchdog.fired:
                    raise APITimeoutError("the upstream did not answer before the deadline")
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
                f"the connection to the upstream failed: {describe_failure(reason)}"
            ) from None
        finally:
            _WATCHDOG.reset(watching)

    def _timeout(self, deadline: Deadline) -> float:
        """The socket timeout for one exchange: each wait is bounded by the read timeout and
        the whole exchange by the deadline (the watchdog enforces the latter)."""
        return min(self.read_timeout, deadline.check())

    # --- streaming: partial images as Server-Sent Events ---------------------------------

    def stream_images(
        self,
        payload: Mapping[str, Any],
        deadline: Deadline,
        on_event: Callable[[dict[str, Any]], None],
        *,
        path: str = "images/generations",
    ) -> dict[str, Any]:
        """POST `payload` with `stream: true` and follow the upstream's Server-Sent Events.

        Every `*.partial_image` and `*.completed` event (`image_generation.` or `image_edit.`)
        goes to `on_event` as it arrives. The answer has the non-streaming shape, built from
        the completed events: `data` (one `b64_json` item each), `usage`, and the echoed
        `size`, `quality`, `background` and `output_format`. Failures before the first event
        are retried like any call; after it they are not, since the image is being paid for.
        """
        body = strictjson.dumps({**payload, "stream": True}).encode()
        headers = {
            **self.auth_headers(),
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        url = self.url_for(path, _model(payload))
        started: list[bool] = []
        return self._with_retries(
            lambda: self._attempt(
                "POST",
                url,
                lambda: self._stream_once(url, body, headers, deadline, on_event, started),
            ),
            deadline,
            retryable=lambda: not started,
        )

    def _stream_once(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: Deadline,
        on_event: Callable[[dict[str, Any]], None],
        started: list[bool],
    ) -> dict[str, Any]:
        """One streamed exchange; `started` gets an entry once an event has been passed on."""
        completed: list[dict[str, Any]] = []
        with self._exchange("POST", url, body, headers, deadline) as raw:
            response_headers = {k.lower(): v for k, v in raw.headers.items()}
            if not 200 <= raw.status < 300 or "event-stream" not in response_headers.get(
                "content-type", ""
            ):
                # An error, or an upstream that answers in one piece: read it whole.
                whole = _Response(
                    raw.status, response_headers, _read_capped(raw, self.max_response_bytes)
                )
                return _images_answer(self._checked(whole).body)
            events = _sse_events(
                raw,
                max_event=self.max_image_bytes * 4 // 3 + _CHUNK,
                max_total=self.max_response_bytes,
            )
            for name, data in events:
                if data.strip() == "[DONE]":
                    break
                event = self._stream_event(name, data)
                if event is None:
                    continue
                started.append(True)
                if event["type"].endswith(".completed"):
                    completed.append(event)
                on_event(event)
        if not completed:
            raise APIConnectionError("the upstream's event stream ended before the image")
        last = completed[-1]
        answer: dict[str, Any] = {
            "data": [{"b64_json": event.get("b64_json")} for event in completed],
            "usage": add_usage([event.get("usage") for event in completed]),
        }
        for key in ("size", "quality", "background", "output_format"):
            if isinstance(last.get(key), str):
                answer[key] = last[key]
        return answer

    def _stream_event(self, name: str, data: str) -> dict[str, Any] | None:
        """One upstream event as a dict with a `type`; None for events we do not use."""
        try:
            event = json.loads(data)
        except ValueError:
            raise InvalidResponseError("the upstream sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise InvalidResponseError("the upstream sent an event that is not an object")
        given = event.get("type")
        kind = given if isinstance(given, str) else name
        error = event.get("error")
        if kind == "error" or isinstance(error, dict):
            details = error if isinstance(error, dict) else event
            message = str(details.get("message") or "the upstream failed mid-stream")
            type_ = self._field(details.get("type"))
            user_error = type_ in ("invalid_request_error", "image_generation_user_error")
            status = 400 if user_error else 500
            raise APIStatusError(
                status,
                self.redact(message)[:500],
                type_=type_,
                code=self._field(details.get("code")),
                param=self._field(details.get("param")),
                should_retry=False,
            )
        if not kind.endswith((".partial_image", ".completed")):
            return None
        if not isinstance(event.get("b64_json"), str):
            raise InvalidResponseError(f"the upstream's {kind} event has no image")
        return {**event, "type": kind}


def _model(payload: Mapping[str, Any]) -> str | None:
    model = payload.get("model")
    return model if isinstance(model, str) else None


def _images_answer(body: bytes) -> dict[str, Any]:
    """An Images API success body: a JSON object with a `data` list.

    The JSON parser never scans the megabytes of base64 in `b64_json`, nor are they copied
    (see `_parse_cutting_base64`; figures (c) and (g) in bench/README.md).
    """
    try:
        data = _parse_cutting_base64(body)
    except ValueError:
        raise InvalidResponseError("the upstream answered with invalid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InvalidResponseError("the upstream's answer has no 'data' list")
    return data


_B64_KEY = b'"b64_json"'


_B64_VALUE = re.compile(rb'[ \t\n\r]*:[ \t\n\r]*"')


def _parse_cutting_base64(body: bytes) -> Any:
    """json.loads(body), without the JSON parser scanning (or Python copying) each
    `b64_json` text.

    Each `"b64_json": "<text>"` whose text has no backslash is swapped for a random token
    before parsing and put back as a memoryview of `body` (no copy of its megabytes) only
    if every token comes back as exactly one `data` item's `b64_json`. Anything else (the
    key inside another string, a duplicate key, an odd shape) is parsed whole, the ordinary
    way. A byte in the text that is not base64 (a control character, non-ASCII), which the
    JSON parser might refuse, is left for the caller's strict base64 decode to refuse.
    """
    nonce = secrets.token_hex(8)
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    cut: dict[str, memoryview] = {}
    copied = pos = 0
    while (key := body.find(_B64_KEY, pos)) >= 0:
        value = _B64_VALUE.match(body, key + len(_B64_KEY))
        if value is None:
            pos = key + len(_B64_KEY)
            continue
        start = value.end()
        end = body.find(b'"', start)
        if end < 0:
            break
        pos = end + 1
        if body.find(b"\\", start, end) >= 0:
            continue
        token = f"{nonce}-{len(cut)}"
        pieces += [view[copied:start], token.encode()]
        cut[token] = view[start:end]
        copied = end
    if not cut:
        return json.loads(body)
    pieces.append(view[copied:])
    data = json.loads(b"".join(pieces))
    items = data.get("data") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else ():
        value = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(value, str) and value in cut:
            item["b64_json"] = cut.pop(value)
    return json.loads(body) if cut else data


def add_usage(usages: list[Any]) -> dict[str, Any] | None:
    """Token usage over several reports (a stream's completed events, fan-out calls): numbers
    added, nested details too; None when there is none. A count one report gives as a
    number and another as details is not added (the details win)."""
    present = [u for u in usages if isinstance(u, dict)]
    if len(present) <= 1:
        return present[0] if present else None
    total: dict[str, Any] = {}
    for usage in present:
        for key, value in usage.items():
            if isinstance(value, dict):
                total[key] = add_usage([total.get(key), value])
            elif (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and not isinstance(total.get(key), dict)
            ):
                total[key] = total.get(key, 0) + value
    return total

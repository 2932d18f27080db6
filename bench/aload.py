"""A small asyncio HTTP/1.1 load client for bench/scale.py (standard library only).

It can fire many requests at once (`burst`), hold many idle keep-alive connections
(`hold_idle`) and many open Server-Sent Events streams (`open_streams`), and keeps every
request and every held connection inside a time bound: nothing here waits forever, and
`Held.close()` ends whatever is still open. One event loop holds thousands of connections
without a thread each, so the client stays cheap next to the service it measures.

Only what the bench needs of HTTP/1.1: Content-Length and chunked bodies, or a body read
until the server closes; no TLS, no redirects, no compression. All traffic goes where the
caller says (the bench only ever says 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024  # bytes of status line and headers
MAX_BODY = 64 * 1024 * 1024  # bytes of one body (a LiteLLM answer carries the image)


class HTTPError(Exception):
    """The server's answer could not be read as HTTP/1.1."""


@dataclass
class Answer:
    """One request's outcome: status 0 with `error` set when there was no answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    started: float
    ended: float
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def json(self) -> Any:
        return json.loads(self.body)


def encode_request(
    method: str,
    path: str,
    host: str,
    port: int,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    keep_alive: bool,
) -> bytes:
    """The bytes of one request; a dict or list body is sent as JSON."""
    data = b""
    fields = {"Host": f"{host}:{port}", "Accept": "application/json", "User-Agent": "aload"}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        fields["Content-Type"] = "application/json"
    fields.update(headers or {})
    if body is not None or method in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = str(len(data))
    fields["Connection"] = "keep-alive" if keep_alive else "close"
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + data


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-case) of the next answer on `reader`."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        message = "cut head" if exc.partial else "connection closed before an answer"
        raise HTTPError(message) from None
    except asyncio.LimitOverrunError:
        raise HTTPError("answer head too long") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_body(
    reader: asyncio.StreamReader,
    headers: Mapping[str, str],
    *,
    on_chunk: Callable[[bytes], None] | None = None,
) -> bytes:
    """The body after `headers`; with `on_chunk`, each piece goes there instead (a stream)."""
    pieces: list[bytes] = []
    keep = on_chunk or pieces.append
    total = 0
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise HTTPError("body too long")
                keep((await reader.readexactly(size + 2))[:-2])
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY:
                raise HTTPError(f"bad Content-Length {length}")
            keep(await reader.readexactly(length))
        else:  # until the server closes
            while chunk := await reader.read(65536):
                total += len(chunk)
                if total > MAX_BODY:
                    raise HTTPError("body too long")
                keep(chunk)
    except asyncio.IncompleteReadError:
        raise HTTPError("connection closed in the middle of the body") from None
    except (ValueError, asyncio.LimitOverrunError) as exc:
        raise HTTPError(f"bad chunked body: {exc}") from None
    return b"".join(pieces)


def _failure(started: float, exc: BaseException) -> Answer:
    kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    return Answer(0, {}, b"", started, time.perf_counter(), f"{kind}: {exc}".rstrip(": "))


_FAILURES = (OSError, HTTPError, TimeoutError, asyncio.IncompleteReadError)


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float,
) -> Answer:
    """One request on a fresh connection (`Connection: close`), all of it within `timeout`."""
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
            writer.write(encode_request(method, path, host, port, body, headers, keep_alive=False))
            await writer.drain()
            status, answer_headers = await read_head(reader)
            data = await read_body(reader, answer_headers)
        return Answer(status, answer_headers, data, started, time.perf_counter())
    except _FAILURES as exc:
        return _failure(started, exc)
    finally:
        if writer is not None:
            writer.close()


class Connection:
    """One keep-alive connection: requests one after another, each within its timeout."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> Answer:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        self.host, self.port, limit=MAX_HEAD
                    )
                assert self.reader is not None
                self.writer.write(
                    encode_request(
                        method, path, self.host, self.port, body, headers, keep_alive=True
                    )
                )
                await self.writer.drain()
                status, answer_headers = await read_head(self.reader)
                data = await read_body(self.reader, answer_headers)
            if answer_headers.get("connection", "").lower() == "close":
                self.close()
            return Answer(status, answer_headers, data, started, time.perf_counter())
        except _FAILURES as exc:
            self.close()
            return _failure(started, exc)

    async def wait_closed_by_server(self) -> None:
        """Return when the server closes the (idle) connection; any bytes are ignored."""
        if self.reader is None:
            return
        with contextlib.suppress(OSError):
            while await self.reader.read(4096):
                pass

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def burst(
    n: int, call: Callable[[int], Awaitable[Answer]], *, timeout: float
) -> tuple[float, list[Answer]]:
    """`n` calls started together; (wall from the first start to the last end, answers).

    Each call is cut at `timeout` (a call that ignores it is cancelled 10 s later)."""
    go = asyncio.Event()

    async def one(index: int) -> Answer:
        await go.wait()
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call(index), timeout + 10)
        except TimeoutError as exc:
            return _failure(started, exc)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0)  # every task is waiting on `go`
    go.set()
    answers = list(await asyncio.gather(*tasks))
    wall = max(a.ended for a in answers) - min(a.started for a in answers) if answers else 0.0
    return wall, answers


async def gather_bounded(
    coroutines: list[Awaitable[Any]], *, limit: int, timeout: float
) -> list[Any]:
    """Run `coroutines` at most `limit` at a time; TimeoutError as the result of any still
    unfinished after `timeout` seconds (those are cancelled)."""
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with gate:
            return await coroutine

    tasks = [asyncio.create_task(one(c)) for c in coroutines]
    done, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [
        t.result() if t in done and not t.cancelled() else TimeoutError("not finished in time")
        for t in tasks
    ]


# --- held connections ---------------------------------------------------------------------


@dataclass
class HeldOne:
    """One held connection: how it opened and, if it ended before we closed it, when."""

    kind: str  # "idle", "stream" or "request"
    status: int = 0
    error: str | None = None
    opened_at: float | None = None
    ended_at: float | None = None  # the server (or a failure) ended it while held
    events: int = 0  # SSE events seen ("event:" lines)
    body: bytes = b""  # a refused stream's or a finished request's body
    released: bool = False  # we let go of it (its bound passed, or close())
    refused: str | None = None  # answered, but not held: "HTTP 503", "HTTP 200, closed"

    @property
    def open(self) -> bool:
        return self.opened_at is not None and self.ended_at is None and not self.released


@dataclass
class Held:
    """Connections held open until `close()` or their time bound, whichever is first."""

    items: list[HeldOne] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def count(self, predicate: Callable[[HeldOne], bool]) -> int:
        return sum(1 for item in self.items if predicate(item))

    def summary(self) -> dict[str, Any]:
        """How many opened, are open now, ended while held, and why the others did not open
        (an answer that refused, an error, or no answer yet)."""
        why = Counter(
            item.refused or item.error or "no answer yet"
            for item in self.items
            if item.opened_at is None
        )
        return {
            "asked": len(self.items),
            "opened": self.count(lambda i: i.opened_at is not None),
            "open_now": self.count(lambda i: i.open),
            "ended_while_held": self.count(lambda i: i.ended_at is not None),
            "not_opened": dict(why.most_common()),
        }

    async def close(self) -> None:
        """Let go of everything still held (cancelled first, so none counts as ended)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for item in self.items:
            item.released = True
        for writer in self.writers:
            writer.close()


async def _hold(
    held: Held,
    item: HeldOne,
    host: str,
    port: int,
    raw: bytes,
    *,
    open_timeout: float,
    hold_for: float,
    opened: Callable[[int, Mapping[str, str]], bool],
    stream: bool,
) -> None:
    """Send `raw`, read the answer's head; if `opened(status, headers)`, hold the connection
    (reading a stream's events, or waiting for an idle one to be closed) for `hold_for`."""
    try:
        async with asyncio.timeout(open_timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
            held.writers.append(writer)
            writer.write(raw)
            await writer.drain()
            item.status, headers = await read_head(reader)
            if not (stream and opened(item.status, headers)):
                item.body = await read_body(reader, headers)
        if not opened(item.status, headers):
            closed = headers.get("connection", "").lower() == "close"
            item.refused = f"HTTP {item.status}" + (", closed" if closed else "")
            writer.close()  # as a client does with an answer it cannot use
            return
        item.opened_at = time.perf_counter()

        def count_events(chunk: bytes) -> None:
            item.events += chunk.count(b"\nevent:") + chunk.startswith(b"event:")

        async with asyncio.timeout(hold_for):
            if stream:
                await read_body(reader, headers, on_chunk=count_events)
            else:
                while await reader.read(4096):
                    pass
        item.ended_at = time.perf_counter()
    except TimeoutError:
        if item.opened_at is None:
            item.error = "timeout"
        item.released = True  # or held for its whole bound: still open when we let go
    except (OSError, HTTPError, asyncio.IncompleteReadError) as exc:
        item.error = f"{type(exc).__name__}: {exc}"
        if item.opened_at is not None:
            item.ended_at = time.perf_counter()


async def hold_idle(
    host: str,
    port: int,
    n: int,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    open_timeout: float,
    hold_for: float,
    held: Held | None = None,
) -> Held:
    """Open `n` keep-alive connections, each sends one `GET path` and then stays idle (an
    answered 2xx counts as opened); they are held until `hold_for` or `close()`."""
    held = held or Held()
    raw = encode_request("GET", path, host, port, None, headers, keep_alive=True)
    for _ in range(n):
        item = HeldOne("idle")
        held.items.append(item)
        held.tasks.append(
            asyncio.create_task(
                _hold(
                    held,
                    item,
                    host,
                    port,
                    raw,
                    open_timeout=open_timeout,
                    hold_for=hold_for,
                    opened=lambda status, h: (
                        200 <= status < 300 and h.get("connection", "").lower() != "close"
                    ),
                    stream=False,
                )
            )
        )
    return held


async def open_streams(
    host: str,
    port: int,
    paths: list[str],
    *,
    headers: Mapping[str, str] | None = None,
    open_timeout: float,
    hold_for: float,
    held: Held | None = None,
) -> Held:
    """`GET` each of `paths` as an event stream (200 with text/event-stream counts as opened)
    and read its events until the server ends it, `hold_for` passes or `close()`."""
    held = held or Held()
    wanted = {"Accept": "text/event-stream", **(headers or {})}
    for path in paths:
        item = HeldOne("stream")
        held.items.append(item)
        raw = encode_request("GET", path, host, port, None, wanted, keep_alive=True)
        held.tasks.append(
            asyncio.create_task(
                _hold(
                    held,
                    item,
                    host,
                    port,
                    raw,
                    open_timeout=open_timeout,
                    hold_for=hold_for,
                    opened=lambda status, h: (
                        status == 200 and h.get("content-type", "").startswith("text/event-stream")
                    ),
                    stream=True,
                )
            )
        )
    return held


async def hold_requests(
    host: str,
    port: int,
    n: int,
    method: str,
    path: str,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    hold_for: float,
    held: Held | None = None,
) -> Held:
    """`n` requests left waiting for their (slow) answers: each counts as opened once sent,
    and as ended when its answer comes back before `hold_for` or `close()`."""
    held = held or Held()
    raw = encode_request(method, path, host, port, body, headers, keep_alive=False)

    async def one(item: HeldOne) -> None:
        try:
            async with asyncio.timeout(hold_for):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
                held.writers.append(writer)
                writer.write(raw)
                await writer.drain()
                item.opened_at = time.perf_counter()
                item.status, answer_headers = await read_head(reader)
                item.body = await read_body(reader, answer_headers)
            item.ended_at = time.perf_counter()
        except TimeoutError:
            item.released = True  # still waiting when we let go: held for its whole bound
        except (OSError, HTTPError, asyncio.IncompleteReadError) as exc:
            item.error = f"{type(exc).__name__}: {exc}"
            if item.opened_at is not None:
                item.ended_at = time.perf_counter()

    for _ in range(n):
        item = HeldOne("request")
        held.items.append(item)
        held.tasks.append(asyncio.create_task(one(item)))
    return held


async def settle(held: Held, predicate: Callable[[Held], bool], timeout: float) -> bool:
    """Wait (polling, at most `timeout`) until `predicate(held)`; whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(held):
            return True
        await asyncio.sleep(0.1)
    return predicate(held)

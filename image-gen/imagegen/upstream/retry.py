"""When to try an upstream call again and how long to wait: the deadline of a whole
operation, the retry policy (exponential backoff with jitter), and `Retry-After`."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from imagegen.upstream.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    OpenAIError,
)

_MAX_RETRY_AFTER = 86_400.0  # a day: anything longer from an upstream is not believed


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
        backoff = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return backoff * (0.75 + random.random() / 4)  # noqa: S311 - jitter, not crypto


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds, decimal or HTTP date).

    Anything unparseable, negative or not finite is ignored rather than trusted; a wait
    longer than a day is cut to a day (after milliseconds are turned into seconds).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        value = _finite(raw_ms)
        if value is not None:
            return min(value / 1000, _MAX_RETRY_AFTER)
    raw = lowered.get("retry-after")
    if not raw:
        return None
    value = _finite(raw)
    if value is not None:
        return min(value, _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return min(_MAX_RETRY_AFTER, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def _finite(raw: str) -> float | None:
    """A header's non-negative finite number, or None."""
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None

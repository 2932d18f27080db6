"""Bounds on open event streams (GET /jobs/<id>/events), per worker process.

Under Gunicorn an open stream is served by the worker's stream hub (hub.py): a socket and a
small buffer, no request thread; elsewhere (the development server) it holds a thread for
as long as it is open (up to 15 minutes). Either way streams are bounded, so that clients
cannot take every descriptor or thread. A worker serves at most `IMAGE_GEN_MAX_STREAMS`
(1,000 by default) streams at once, and at most `IMAGE_GEN_MAX_STREAMS_PER_TOKEN` for one
client token; one more is refused at once with TOO_MANY_STREAMS (503 for the worker, 429
for the token) and Retry-After, while polling GET /jobs/<id> keeps working.
"""

from __future__ import annotations

import threading
from collections import Counter

from imagegen.errors import TooManyStreams, TooManyStreamsForToken
from imagegen.observability import metrics

RETRY_AFTER = 5  # seconds: streams end with their job, or when their client leaves


class StreamLease:
    """One open stream's place; `release()` gives it back (again: nothing happens)."""

    def __init__(self, limiter: StreamLimiter, token: str | None) -> None:
        self._limiter = limiter
        self.token = token
        self.held = True

    def release(self) -> None:
        self._limiter._give_back(self)


class StreamLimiter:
    """Counts this process's open event streams, in all and per token."""

    def __init__(self, total: int, per_token: int) -> None:
        self.total = total
        self.per_token = per_token
        self._lock = threading.Lock()
        self._open = 0
        self._by_token: Counter[str] = Counter()

    def open(self, token: str | None) -> StreamLease:
        """A place for one more stream (`token`: the caller's token name, None on an open
        service); TooManyStreams when this worker or this token has no place left."""
        with self._lock:
            worker_full = self._open >= self.total
            token_full = token is not None and self._by_token[token] >= self.per_token
            if not (worker_full or token_full):
                self._open += 1
                if token is not None:
                    self._by_token[token] += 1
        if worker_full or token_full:
            raise _refusal(worker_full, self.total if worker_full else self.per_token)
        metrics.EVENT_STREAMS.inc()
        return StreamLease(self, token)

    def _give_back(self, lease: StreamLease) -> None:
        with self._lock:
            if not lease.held:
                return
            lease.held = False
            self._open -= 1
            if lease.token is not None:
                self._by_token[lease.token] -= 1
                if not self._by_token[lease.token]:
                    del self._by_token[lease.token]
        metrics.EVENT_STREAMS.dec()


def _refusal(worker: bool, limit: int) -> TooManyStreams:
    """The refusal of one more stream: the worker's bound (503) or the token's (429)."""
    instead = (
        "poll GET /jobs/<job_id> instead, or follow the events again after Retry-After seconds."
    )
    if worker:
        kind: type[TooManyStreams] = TooManyStreams
        message = (
            f"This worker already serves {limit} event streams, the most it serves at once; "
            f"{instead}"
        )
    else:
        kind = TooManyStreamsForToken
        message = (
            f"This token already has {limit} event streams open on this worker, the most one "
            f"token may have; close one, {instead}"
        )
    return kind(
        message,
        retry_after=RETRY_AFTER,
        details={"scope": "worker" if worker else "token", "limit": limit},
    )

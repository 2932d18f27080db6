"""The caps' rules, the same for every CapsBook: which windows, when a request fits, and
when a refused one may retry.

Caps are sliding windows: images in the last hour, images and US dollars in the last 24
hours. A book finds the entries in a window; these functions decide.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

from imagegen.books.interfaces import CapExceeded, Reservation

log = logging.getLogger(__name__)

HOUR = 3600.0
DAY = 86400.0
# cap name -> (what it counts, window in seconds)
CAPS: dict[str, tuple[str, float]] = {
    "images_per_hour": ("images", HOUR),
    "images_per_day": ("images", DAY),
    "usd_per_day": ("usd", DAY),
}
_EPSILON = 1e-9  # dollars are floats: a sum may miss the limit by a rounding error


def check_room(
    *,
    scope: str,
    cap: str,
    limit: float,
    asked: float,
    entries: Sequence[tuple[float, float]],
    now: float,
) -> None:
    """Raise CapExceeded unless `asked` fits under `limit` beside `entries` ((time, amount)
    in the cap's window, oldest first); its retry_after is when enough of them leave."""
    window = CAPS[cap][1]
    used = sum(amount for _, amount in entries)
    if used + asked <= limit + _EPSILON:
        return
    if asked > limit + _EPSILON:
        raise CapExceeded(scope=scope, cap=cap, limit=limit, used=used, retry_after=None)
    # Room comes back as the oldest entries leave the window.
    needed, freed, retry_after = used + asked - limit, 0.0, window
    for at, amount in entries:
        freed += amount
        if freed >= needed - _EPSILON:
            retry_after = at + window - now
            break
    raise CapExceeded(
        scope=scope, cap=cap, limit=limit, used=used, retry_after=max(retry_after, 1.0)
    )


def check_every_cap(
    checks: Sequence[tuple[str, Mapping[str, float]]],
    *,
    images: int,
    usd: float,
    now: float,
    entries: Callable[[str, float, str], Sequence[tuple[float, float]]],
) -> None:
    """Raise CapExceeded unless the request fits every cap of every (scope, caps) in
    `checks`; `entries(column, since, scope)` reads a scope's (time, amount) entries of
    "images" or "usd" after `since`, oldest first (scope GLOBAL: every token's)."""
    for scope, caps in checks:
        for cap, limit in caps.items():
            column, window = CAPS[cap]
            asked = images if column == "images" else usd
            found = entries(column, now - window, scope)
            check_room(scope=scope, cap=cap, limit=limit, asked=asked, entries=found, now=now)


def amount(usd: float) -> float:
    """The dollars to write; ValueError unless finite and from 0. An infinite or NaN amount
    in the books would make every later request cross every dollar cap."""
    try:
        value = math.nan if isinstance(usd, bool) else float(usd)
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{str(usd)[:40]} is not an amount of US dollars")
    return value


def settled_amount(reservation: Reservation, usd: float) -> float:
    """The real cost to book in place of the estimate; the estimate (logged) when `usd` is
    not a finite amount of dollars from 0."""
    try:
        return amount(usd)
    except ValueError as exc:
        log.error("reservation %d settled at its estimate: %s", reservation.id, exc)
        return reservation.usd


def retry_after_seconds(value: float) -> int:
    """A Retry-After header value: whole seconds, at least 1."""
    return max(1, math.ceil(value))

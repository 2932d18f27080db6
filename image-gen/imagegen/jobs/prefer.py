"""The `Prefer` header (RFC 7240): `respond-async` and `wait=N`, the two this service honours."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_WAIT = 60.0  # the longest Prefer: wait=N honoured: proxies cut requests at about 100 s


@dataclass(frozen=True)
class Preference:
    """What a request's Prefer headers ask for, of what this service honours."""

    respond_async: bool = False
    wait: float | None = None

    @property
    def asynchronous(self) -> bool:
        return self.respond_async or self.wait is not None


_PREFERENCE = re.compile(r'(?:[^,"]|"[^"]*")+')


def parse_prefer(values: Iterable[str]) -> Preference:
    """`respond-async` and `wait=N` from Prefer header values; anything else is ignored."""
    respond_async, wait = False, None
    for value in values:
        for item in _PREFERENCE.findall(value):
            token = item.split(";", 1)[0]
            name, _, raw = token.partition("=")
            name, raw = name.strip().lower(), raw.strip().strip('"')
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and raw.isascii() and raw.isdigit() and len(raw) <= 9:
                wait = min(float(raw), MAX_WAIT)
    return Preference(respond_async, wait)

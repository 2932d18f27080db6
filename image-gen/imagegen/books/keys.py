"""The idempotency keys' rules, the same for every IdempotencyBook: what a claim of a key
that is already stored gets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from imagegen import strictjson
from imagegen.books.interfaces import Claim

log = logging.getLogger(__name__)


def stored_claim(row: Sequence[Any], token: str, fingerprint: str, now: float) -> Claim | None:
    """What a claim of a stored key gets (`row`: its fingerprint, state, lease_until,
    status, headers, body): "mismatch", "replay" or "running"; None when its lease ran
    out and the claim takes it over."""
    stored, state, lease_until, status, headers, body = row
    if stored != fingerprint:
        return Claim("mismatch")
    if state == "done":
        return Claim("replay", status=status, headers=strictjson.loads(headers), body=bytes(body))
    if lease_until > now:
        return Claim("running")
    log.warning("idempotency key of %s taken over: its request's lease ran out", token)
    return None

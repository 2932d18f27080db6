"""Timestamps as the API and metadata show them."""

from __future__ import annotations

import datetime as dt


def utc_now() -> str:
    """Now as ISO-8601 UTC with milliseconds, e.g. 2026-11-25T22:06:44.123Z."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def today() -> dt.date:
    """Today's UTC date, which decides each model's lifecycle status."""
    return dt.datetime.now(dt.UTC).date()

"""JSON as the service writes and reads it: never NaN or Infinity, which are not JSON.

Python's json module writes `NaN` and `Infinity` by default, and strict parsers (browsers,
Go, jq, most SDKs) refuse a document holding them. Every JSON the service writes (answers,
metadata, job records, events, webhooks) goes through `dumps` or the
app's `StrictJSONProvider`, which raise ValueError instead: a non-finite value is an error
the writer handles, never a file or an answer nobody can read.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask.json.provider import DefaultJSONProvider


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps` that raises ValueError for NaN and infinities instead of writing them."""
    return json.dumps(value, allow_nan=False, **options)


def loads(text: str | bytes, **options: Any) -> Any:
    """`json.loads` that raises ValueError for NaN, Infinity and numbers beyond a float."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite, **options)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON (jsonify, request.get_json) without NaN or Infinity either way."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(obj, allow_nan=False, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return super().loads(s, parse_constant=_refuse_constant, parse_float=_finite, **kwargs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:32]} is too large")
    return value

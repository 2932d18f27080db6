"""GET /usage: what the caller has made and spent in the current windows, against its caps."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from imagegen.access.auth import current_caller
from imagegen.access.tokens import Limits
from imagegen.apidoc import errors, json_response, operation
from imagegen.books.interfaces import CapsBook
from imagegen.clock import utc_now
from imagegen.services import services

bp = Blueprint("usage", __name__)


@bp.get("/usage")
@operation(
    "getUsage",
    tag="service",
    summary="What the caller made and spent in the current windows, against its caps",
    description="Images in the last hour and day and US dollars in the last day (sliding "
    "windows), with each cap and what is left. A client token sees its own figures and the "
    "service's; an admin token sees every token's.",
    responses={"200": json_response("The usage figures.", "Usage"), **errors(500)},
)
def usage() -> ResponseReturnValue:
    """The caller's images and estimated spend (an admin token sees every token)."""
    settings = services().settings
    ledger: CapsBook = services().ledger
    caller = current_caller()
    body: dict[str, Any] = {
        "timestamp": utc_now(),
        "windows": {"images_last_hour": "3600 s", "images_last_day": "86400 s, sliding"},
        "auth_required": settings.auth_required,
    }
    global_usage = _with_remaining(ledger.usage(None), settings.global_limits)
    if caller.admin:
        tokens = {token.name: token for token in settings.tokens or ()}
        names = sorted(set(tokens) | set(ledger.tokens_seen()))
        body["tokens"] = [
            {
                "name": name,
                "admin": bool(tokens.get(name) and tokens[name].admin),
                **_with_remaining(
                    ledger.usage(name), tokens[name].limits if name in tokens else Limits()
                ),
            }
            for name in names
        ]
    else:
        body["token"] = {
            "name": caller.name,
            **_with_remaining(ledger.usage(caller.name), caller.limits),
        }
    body["global"] = global_usage
    return jsonify(body)


def _with_remaining(used: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Usage figures with each cap and what is left under it."""
    counted = {
        "images_per_hour": used["images_last_hour"],
        "images_per_day": used["images_last_day"],
        "usd_per_day": used["usd_last_day"],
    }
    caps = {
        cap: {"limit": limit, "remaining": round(max(limit - counted[cap], 0), 6)}
        for cap, limit in limits.caps().items()
    }
    return {**used, "limits": limits.as_dict(), "caps": caps}

"""Talking to /mcp through a Flask test client: JSON-RPC requests and their results."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

ACCEPT = {"Accept": "application/json, text/event-stream"}
V2025_06 = {**ACCEPT, "MCP-Protocol-Version": "2025-06-18"}


def rpc(
    client: FlaskClient,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    request_id: Any = 1,
) -> Any:
    """One JSON-RPC request; the HTTP answer (the JSON-RPC body is .get_json())."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return client.post("/mcp", json=message, headers=V2025_06 if headers is None else headers)


def result_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert "error" not in body, body
    return body["result"]


def tools_by_name(client: FlaskClient, headers: dict[str, str] = V2025_06) -> dict[str, dict]:
    return {t["name"]: t for t in result_of(rpc(client, "tools/list", headers=headers))["tools"]}

"""The Model Context Protocol's constants for this server: the revisions it speaks, JSON-RPC
error codes, the bounds of a result, and the one JSON-RPC error type.

Imports nothing of the service: the transport, the tools and the OpenAPI description read it.
"""

from __future__ import annotations

import re
from typing import Any

# Newest first: a client asking for another revision is offered the first.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
# Assumed when a request has no MCP-Protocol-Version header (as the transport says): it
# allows batches and knows no structured output, resource links or titles.
LEGACY_VERSION = "2025-03-26"
# The most base64 one result may carry (inline thumbnails, a resource's blob). Hosts refuse
# tool results over about 1 MB; this leaves room for the rest of the result.
MAX_INLINE_BYTES = 512 * 1024
THUMBNAIL_WIDTH = 256
THUMBNAIL_FORMAT = "jpeg"  # the smallest, and every host can show it
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002  # as MCP's resources page names it


class RpcError(Exception):
    """A JSON-RPC error answering one request."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def is_structured(version: str) -> bool:
    """Whether `version` knows structured output, resource links and titles (2025-06-18+)."""
    return version != LEGACY_VERSION

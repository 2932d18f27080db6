"""TODO: the mcp package."""

"""MCP for agent hosts: the Streamable HTTP endpoint (server) and the stdio bridge (stdio)."""

"""MCP for agent hosts: the Streamable HTTP transport and its methods (server), the tools
(tools, with their schemas in schemas), the in-process calls they make (loopback), the
protocol's constants (protocol) and the stdio bridge (stdio)."""

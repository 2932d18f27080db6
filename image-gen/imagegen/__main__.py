"""`python -m imagegen COMMAND`: the service's commands, run beside it (or in its container).

python -m imagegen tokens new NAME [LIMITS...]   make a client token and its line
python -m imagegen tokens hash                   hash a token read from stdin
python -m imagegen mcp-stdio [--url URL]         an MCP server on stdio forwarding to /mcp
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n", 1)[1]


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "tokens":
        from imagegen.access import tokens

        return tokens.main(rest)
    if command == "mcp-stdio":
        from imagegen.mcp import stdio

        return stdio.main(rest)
    sys.stderr.write("usage:\n" + USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

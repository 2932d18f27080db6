"""Docker HEALTHCHECK: exit 0 when GET /health answers 200, 1 otherwise (the image has no curl).

Asks the local Gunicorn on the port of GUNICORN_BIND (default 5000), never through a proxy.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_SECONDS = 4.0


def health_url(bind: str) -> str:
    """The /health URL on loopback for a Gunicorn bind address such as 0.0.0.0:5000."""
    port = bind.rpartition(":")[2] or "5000"
    return f"http://127.0.0.1:{port}/health"


def main() -> int:
    url = health_url(os.environ.get("GUNICORN_BIND", "0.0.0.0:5000"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Gunicorn with the service's "today" pinned, the way the tests start it.

    IMAGE_GEN_TEST_TODAY=2027-11-25 python -m tests.support.pinned_gunicorn \
        -c image-gen/gunicorn.conf.py wsgi:app

Replaces `imagegen.clock.today` in the master, then runs Gunicorn's own command line. Every
worker is forked from that master (at start, after SIGHUP, on max_requests recycling), so
each one answers for the pinned day. Test-only: the service itself reads the real clock.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(REPO / "image-gen"))
    from gunicorn.app.wsgiapp import run

    from imagegen import clock
    from tests.support.clock import PinnedClock, run_day

    clock.today = PinnedClock(run_day())
    sys.argv[0] = "gunicorn"
    run()


if __name__ == "__main__":
    main()

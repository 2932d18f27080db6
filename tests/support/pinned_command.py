"""A `python -m` command of the service with its "today" pinned, the way the tests run it.

    IMAGE_GEN_TEST_TODAY=2027-11-25 python -m tests.support.pinned_command imagegen.migrate ARGS

Replaces `imagegen.clock.today` (the settings check the default model against it), then runs
the module as `python -m MODULE ARGS` would. Test-only, as tests/support/pinned_gunicorn.py.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(REPO / "image-gen"))
    from imagegen import clock
    from tests.support.clock import PinnedClock, run_day

    clock.today = PinnedClock(run_day())
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

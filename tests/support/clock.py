"""The day the tests run on: one pinned "today" for the model catalog's lifecycle.

The service decides each model's status from `imagegen.clock.today()`. Tests never let it
read the wall clock, or every lifecycle date in the catalog would fail them on its day.
The `today` fixture (tests/conftest.py) pins it for every test to DEFAULT_TODAY; a whole
run moves with IMAGE_GEN_TEST_TODAY=YYYY-MM-DD, and a test about a given day says so with
`today.set(day)`. Gunicorn started by the tests gets the same day
(tests/support/pinned_gunicorn.py).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

# The day the catalog and its prices were read: one model shut down, three deprecated.
DEFAULT_TODAY = dt.date(2026, 11, 25)
TODAY_VARIABLE = "IMAGE_GEN_TEST_TODAY"


def run_day(environ: Mapping[str, str] = os.environ) -> dt.date:
    """The day this run is pinned to: IMAGE_GEN_TEST_TODAY if set, else DEFAULT_TODAY."""
    value = environ.get(TODAY_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TODAY
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{TODAY_VARIABLE}={value!r} is not a date such as 2027-11-25") from None


class PinnedClock:
    """Stands in for `imagegen.clock.today`: answers its day until told another."""

    def __init__(self, day: dt.date) -> None:
        self.day = day

    def __call__(self) -> dt.date:
        return self.day

    def set(self, day: dt.date) -> None:
        """Make `day` the service's today (for the rest of this test)."""
        self.day = day

    def __repr__(self) -> str:
        return f"PinnedClock({self.day.isoformat()})"

"""Helpers for the books' contract tests: a clock the test moves, races between threads,
and a holder process that dies."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

RACE_TIMEOUT = 30.0  # seconds for every racer to finish


class BookClock:
    """The books' clock in a test: stands still until the test moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def race(count: int, attempt: Callable[[int], Any]) -> list[Any]:
    """Run `attempt(i)` in `count` threads released at once; their results (or the
    exceptions they raised) in thread order."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(number: int) -> None:
        try:
            start.wait(RACE_TIMEOUT)
            results[number] = attempt(number)
        except Exception as exc:
            results[number] = exc

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RACE_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a racer never finished"
    return results


@contextlib.contextmanager
def process_holding(take: Callable[[], object]) -> Iterator[Callable[[], None]]:
    """A child process that calls `take()` (it claims something in the books and keeps it)
    and then waits; yields `kill`, which SIGKILLs it as a crash would. The child is killed
    on the way out in any case."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take, say so, wait to be killed; never return into pytest
        code = 1
        try:
            os.close(ready_r)
            held = take()
            os.write(ready_w, b"1" if held is not None else b"0")
            time.sleep(120)
        finally:
            os._exit(code)
    os.close(ready_w)
    alive = True

    def kill() -> None:
        nonlocal alive
        if alive:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            alive = False

    try:
        with os.fdopen(ready_r, "rb") as ready:
            said = ready.read(1)  # the child writes once, or dies (end of file)
        assert said == b"1", "the child process could not take what it was asked to"
        yield kill
    finally:
        kill()

"""Helpers for the Django test modules; their fixtures are in ``tests/conftest.py``."""

import asyncio
import threading
import time

import psutil

from .probe import TIMEOUT


async def settled():
    """``threadgov.stats()`` once every worker has finished its bookkeeping after the last call.

    A worker delivers a call's result before it runs the after-call hook and gives its lease back,
    so right after the last response a lane released at context exit may still count as leased.
    """
    import threadgov

    def idle():
        stats = threadgov.stats()
        return stats.busy == 0 and stats.leased == 0

    await until(idle, "the workers to settle")
    return threadgov.stats()


def assert_ok(responses, body=None) -> None:
    """Every response is a 200 (with ``body``, when given)."""
    bad = [(r.request_id, r.status, r.body[:200]) for r in responses if r.status != 200]
    assert not bad, f"{len(bad)} of {len(responses)} failed, e.g. {bad[:3]}"
    if body is not None:
        assert {r.text for r in responses} == {body}


async def until(predicate, what: str = "condition", timeout: float = TIMEOUT) -> None:
    """Yield to the loop until ``predicate()`` holds.

    Only for state that worker threads update just after a call's result is delivered (the pool's
    bookkeeping), never as a way to wait for work to happen.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class ThreadStarts:
    """Every thread started while the fixture is active, and the peak thread counts.

    A process's thread count can only rise when a thread starts, so recording it right after
    each start gives the exact peak, with no sampling.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.threads: list = []
        self.everything: list = []
        self.before = self.before_active = 0
        self.peak = self.peak_active = 0

    def arm(self) -> None:
        """Start a measurement: from now on, only new threads count."""
        with self._lock:
            self.threads = []
            self.before = self.peak = psutil.Process().num_threads()
            self.before_active = self.peak_active = threading.active_count()

    def started(self, thread: threading.Thread) -> None:
        process, active = psutil.Process().num_threads(), threading.active_count()
        with self._lock:
            self.threads.append(thread)
            self.everything.append(thread)
            self.peak = max(self.peak, process)
            self.peak_active = max(self.peak_active, active)

    @property
    def names(self) -> list:
        return [t.name for t in self.threads]

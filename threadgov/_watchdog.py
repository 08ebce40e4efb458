"""Reports calls that run too long, and a pool that has stopped moving."""

import logging
import sys
import threading
import time
import traceback
from typing import Callable, List, Optional

__all__ = ["Watchdog"]

logger = logging.getLogger("threadgov")


def _stack(thread: Optional[threading.Thread]) -> str:
    frame = sys._current_frames().get(thread.ident) if thread is not None else None
    if frame is None:
        return "  (no stack: the thread is not running Python code)\n"
    return "".join(traceback.format_stack(frame))


class Watchdog:
    """Checks the pool every ``threshold / 4`` seconds (at most once a second) from its own thread.

    * A call running for ``threshold`` seconds or more is logged once (WARNING, logger
      ``threadgov``) with its worker's current stack, and counted in ``slow_calls``.
    * When no worker is free, calls are queued and none has started for ``threshold`` seconds, a
      saturation report lists what every worker is doing (once per episode).

    ``check()`` does one round; tests call it directly with an injected clock.
    """

    def __init__(self, pool, threshold: float, *, clock: Callable[[], float] = time.perf_counter):
        self._pool = pool
        self.threshold = threshold
        self._clock = clock
        self.slow_calls = 0
        self._reported = {}  # worker -> the call number already reported
        self._saturation_reported = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="threadgov-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        interval = min(1.0, self.threshold / 4)
        while not self._stop.wait(interval):
            try:
                self.check()
            except Exception:  # never let the watchdog die silently
                logger.exception("threadgov: watchdog check failed")

    def check(self) -> List[str]:
        """One round of checks; returns the messages it logged."""
        now = self._clock()
        state = self._pool.watch()
        messages = []
        for worker, number, started in state["running"]:
            if now - started >= self.threshold and self._reported.get(worker) != number:
                self._reported[worker] = number
                self.slow_calls += 1
                message = (
                    f"threadgov: slow call: {worker.thread.name} has been running one call for "
                    f"{now - started:.3f} s (slow_call_threshold={self.threshold:g} s); its stack:\n"
                    f"{_stack(worker.thread)}"
                )
                logger.warning(message)
                messages.append(message)
        stalled = (
            state["full"] and state["queued"] > 0 and now - state["last_start"] >= self.threshold
        )
        if stalled and not self._saturation_reported:
            self._saturation_reported = True
            lines = [
                f"threadgov: saturated: all {state['size']} workers are busy or leased, "
                f"{state['queued']} calls queued, none started for {now - state['last_start']:.3f} s. "
                "A request holding a worker while it awaits something only another request can "
                "produce deadlocks here; affinity='call' avoids it. Workers:"
            ]
            for worker, what in state["workers"]:
                lines.append(f"- {worker.thread.name}: {what}")
                if what.startswith("running"):
                    lines.append(_stack(worker.thread).rstrip("\n"))
            message = "\n".join(lines)
            logger.error(message)
            messages.append(message)
        elif not stalled:
            self._saturation_reported = False
        return messages

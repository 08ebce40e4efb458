"""The governor: one object holding all state, created by ``install()`` and removed by ``uninstall()``."""

import atexit
import threading
import time
from typing import Callable, Optional

from ._asgiref import Routing, waiting_thread_executor
from ._django import ConnectionCleanup
from ._errors import ConfigurationError, NotInstalledError
from ._pool import Pool
from ._sizing import Size, resolve_size
from ._stats import Stats, Timings

__all__ = ["AFFINITIES", "Governor", "install", "uninstall", "stats"]

# "request": a ThreadSensitiveContext (a Django request) keeps its worker until it exits.
# "call": a worker is held only while one of the context's calls runs.
AFFINITIES = ("request", "call")

# Seconds uninstall() waits, by default, for running calls to finish.
DEFAULT_TIMEOUT = 30.0


def _process_threads() -> int:
    try:
        import psutil

        return psutil.Process().num_threads()
    except Exception:  # psutil missing or no access to this process's information
        return threading.active_count()


class Governor:
    """A bounded pool wired into asgiref, with connection cleanup and statistics."""

    def __init__(
        self,
        size: Size,
        *,
        affinity: str = "request",
        close_connections: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.size = size
        self.affinity = affinity
        self.close_connections = close_connections
        self._pool = Pool(
            size.size,
            hooks=ConnectionCleanup() if close_connections else None,
            clock=clock,
            nested_executor=waiting_thread_executor,
        )
        self._routing = Routing(self._pool, sticky=affinity == "request")

    @property
    def config(self) -> tuple:
        return (self.size.size, self.affinity, self.close_connections)

    def start(self) -> None:
        self._routing.install()

    def stop(self, timeout: Optional[float] = DEFAULT_TIMEOUT) -> bool:
        self._routing.uninstall()
        return self._pool.shutdown(timeout)

    def stats(self) -> Stats:
        live = self._pool.snapshot()
        wait = Timings.from_values(live.pop("wait_values"), live.pop("wait_max"))
        run = Timings.from_values(live.pop("run_values"), live.pop("run_max"))
        return Stats(
            size=self.size.size,
            source=self.size.source,
            affinity=self.affinity,
            rejected=0,
            wait_time=wait,
            run_time=run,
            process_threads=_process_threads(),
            **live,
        )


_lock = threading.Lock()
_governor: Optional[Governor] = None  # guarded by _lock


def _check_affinity(affinity: object) -> str:
    if not isinstance(affinity, str):
        raise TypeError(f"affinity must be a str, not {type(affinity).__name__}")
    if affinity not in AFFINITIES:
        accepted = " or ".join(repr(a) for a in AFFINITIES)
        raise ConfigurationError(f"affinity={affinity!r} is not valid: expected {accepted}")
    return affinity


def install(
    max_threads: Optional[int] = None,
    *,
    affinity: str = "request",
    close_connections: bool = True,
) -> None:
    """Route all of asgiref's sync work through one pool of at most N threads.

    N is ``max_threads`` if given, else ``ASGI_THREADS``, else Python's ``ThreadPoolExecutor``
    default for the CPUs this process may use. Calling it again with the same settings does
    nothing; with different ones it raises :class:`ConfigurationError` (``uninstall()`` first).
    """
    global _governor
    size = resolve_size(max_threads)
    _check_affinity(affinity)
    if not isinstance(close_connections, bool):
        raise TypeError(f"close_connections must be a bool, not {type(close_connections).__name__}")
    with _lock:
        if _governor is not None:
            if _governor.config == (size.size, affinity, close_connections):
                return
            size_now, affinity_now, close_now = _governor.config
            raise ConfigurationError(
                f"threadgov is already installed with max_threads={size_now}, "
                f"affinity={affinity_now!r}, close_connections={close_now}; "
                "call threadgov.uninstall() before installing it with other settings"
            )
        governor = Governor(size, affinity=affinity, close_connections=close_connections)
        governor.start()
        _governor = governor
    atexit.register(_uninstall_at_exit)


def uninstall(*, timeout: Optional[float] = DEFAULT_TIMEOUT) -> bool:
    """Restore asgiref's stock behaviour and stop the workers.

    Calls already submitted still run; the workers are joined for up to ``timeout`` seconds (None:
    no limit) and close their database connections as they exit. Returns True if every worker
    exited in time (also when nothing was installed).
    """
    global _governor
    with _lock:
        governor, _governor = _governor, None
    if governor is None:
        return True
    atexit.unregister(_uninstall_at_exit)
    return governor.stop(timeout)


def _uninstall_at_exit() -> None:
    uninstall(timeout=5.0)


def stats() -> Stats:
    """A snapshot of the installed governor (see :class:`Stats`)."""
    governor = _governor
    if governor is None:
        raise NotInstalledError("threadgov is not installed: call threadgov.install() first")
    return governor.stats()

"""The governor: one object holding all state, created by ``install()`` and removed by ``uninstall()``."""

import atexit
import threading
import time
from typing import Callable, Optional

from ._asgiref import Routing, WaitingThreads
from ._channels import install_channels, uninstall_channels
from ._django import ConnectionCleanup
from ._errors import ConfigurationError, NotInstalledError
from ._options import Options, resolve_options
from ._pool import Pool
from ._sizing import Size, resolve_size
from ._stats import Stats, Timings
from ._watchdog import Watchdog

__all__ = ["Governor", "current", "install", "install_resolved", "uninstall", "stats"]

# Seconds uninstall() waits, by default, for running calls to finish.
DEFAULT_TIMEOUT = 30.0


def _process_threads() -> int:
    try:
        import psutil

        return psutil.Process().num_threads()
    except Exception:  # psutil missing or no access to this process's information
        return threading.active_count()


class Governor:
    """A bounded pool wired into asgiref, with connection cleanup, limits and statistics."""

    def __init__(
        self,
        size: Size,
        options: Options = Options(),
        *,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.size = size
        self.options = options
        self._pool = Pool(
            size.size,
            hooks=ConnectionCleanup() if options.close_connections else None,
            clock=clock,
            nested_executor=WaitingThreads(),
            max_queue=options.max_queue,
            queue_timeout=options.queue_timeout,
        )
        self._routing = Routing(self._pool, sticky=options.affinity == "request")
        self._watchdog = (
            Watchdog(self._pool, options.slow_call_threshold, clock=clock)
            if options.slow_call_threshold is not None
            else None
        )

    def start(self) -> None:
        self._routing.install()
        install_channels(self)
        if self._watchdog is not None:
            self._watchdog.start()

    def stop(self, timeout: Optional[float] = DEFAULT_TIMEOUT, *, cancel_queued: bool = False) -> bool:
        uninstall_channels()
        self._routing.uninstall()
        if self._watchdog is not None:
            self._watchdog.stop()
        return self._pool.shutdown(timeout, cancel_queued=cancel_queued)

    def serial_context(self):
        """See :meth:`threadgov._asgiref.Routing.serial_context`."""
        return self._routing.serial_context()

    def stats(self) -> Stats:
        live = self._pool.snapshot()
        wait = Timings.from_values(live.pop("wait_values"), live.pop("wait_max"))
        run = Timings.from_values(live.pop("run_values"), live.pop("run_max"))
        return Stats(
            size=self.size.size,
            source=self.size.source,
            affinity=self.options.affinity,
            wait_time=wait,
            run_time=run,
            process_threads=_process_threads(),
            slow_calls=self._watchdog.slow_calls if self._watchdog is not None else 0,
            **live,
        )


_lock = threading.Lock()
_governor: Optional[Governor] = None  # guarded by _lock


def install(
    max_threads: Optional[int] = None,
    *,
    affinity: str = "request",
    close_connections: bool = True,
    max_queue: Optional[int] = None,
    queue_timeout: Optional[float] = None,
    slow_call_threshold: Optional[float] = None,
) -> None:
    """Route all of asgiref's sync work through one pool of at most N threads.

    N is ``max_threads`` if given, else ``ASGI_THREADS``, else Python's ``ThreadPoolExecutor``
    default for the CPUs this process may use. The limits default to their environment variables
    (``THREADGOV_MAX_QUEUE``, ``THREADGOV_QUEUE_TIMEOUT``, ``THREADGOV_SLOW_CALL``), else off.
    Calling it again with the same settings does nothing; with different ones it raises
    :class:`ConfigurationError` (``uninstall()`` first).
    """
    options = resolve_options(
        affinity=affinity,
        close_connections=close_connections,
        max_queue=max_queue,
        queue_timeout=queue_timeout,
        slow_call_threshold=slow_call_threshold,
    )
    install_resolved(resolve_size(max_threads), options)


def install_resolved(size: Size, options: Options) -> bool:
    """Install a governor for settings already resolved; False if the same one was installed."""
    global _governor
    with _lock:
        if _governor is not None:
            if (_governor.size.size, _governor.options) == (size.size, options):
                return False
            raise ConfigurationError(
                f"threadgov is already installed with max_threads={_governor.size.size}, "
                f"{_describe(_governor.options)}; call threadgov.uninstall() before installing it "
                "with other settings"
            )
        governor = Governor(size, options)
        governor.start()
        _governor = governor
        atexit.register(_uninstall_at_exit)
    return True


def _describe(options: Options) -> str:
    return ", ".join(f"{name}={getattr(options, name)!r}" for name in options.__dataclass_fields__)


def uninstall(*, timeout: Optional[float] = DEFAULT_TIMEOUT, cancel_queued: bool = False) -> bool:
    """Restore asgiref's stock behaviour and stop the workers.

    Calls already running finish. Queued calls still run (drain) unless ``cancel_queued`` is true:
    then they are cancelled and never run. The workers are joined for up to ``timeout`` seconds
    (None: no limit) and close their database connections as they exit. Returns True if every
    worker exited in time (also when nothing was installed).
    """
    global _governor
    with _lock:
        governor, _governor = _governor, None
        if governor is None:
            return True
        atexit.unregister(_uninstall_at_exit)
    return governor.stop(timeout, cancel_queued=cancel_queued)


def _uninstall_at_exit() -> None:
    uninstall(timeout=5.0, cancel_queued=True)


def current() -> Optional[Governor]:
    """The installed governor, if any."""
    return _governor


def stats() -> Stats:
    """A snapshot of the installed governor (see :class:`Stats`)."""
    governor = _governor
    if governor is None:
        raise NotInstalledError("threadgov is not installed: call threadgov.install() first")
    return governor.stats()

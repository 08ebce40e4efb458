"""Prometheus metrics of the governor (optional: ``pip install 'threadgov[metrics]'``).

Two ways, depending on how many processes serve the application:

* **One process** (the default): :class:`StatsCollector` is a custom collector that reads
  ``threadgov.stats()`` at scrape time, so every sample of one scrape comes from one consistent
  snapshot. :func:`enable` registers it in prometheus_client's default ``REGISTRY``, so any
  exporter of that registry (``metrics_view``, django-prometheus, ``start_http_server``) shows it.

* **Several processes** (gunicorn with N ``UvicornWorker``\\ s; ``PROMETHEUS_MULTIPROC_DIR`` set in
  the environment before prometheus_client is imported): a scrape reaches one worker, which cannot
  see the others' pools, so every process writes its own values into prometheus_client's
  per-process files and the scrape aggregates the files of all processes
  (``MultiProcessCollector``). :class:`Mirror` copies ``stats()`` into multiprocess-aware
  ``Gauge``\\ s and ``Counter``\\ s: from a daemon thread every ``THREADGOV_METRICS_INTERVAL``
  seconds (default 1; restarted in a forked child) and once more at each scrape in the process
  serving it. Counters are advanced by the difference since the last copy (a new governor starts
  again from 0, which Prometheus treats as a counter reset). How the samples combine:

  - gauges of sizes and counts (``threadgov_size``, ``_busy``, ``_idle``, ``_queued``, ...,
    ``threadgov_installed``): ``livesum``, the fleet's total over live processes (so
    ``threadgov_installed`` counts the governed processes);
  - peaks and durations (``threadgov_peak_busy``, ``threadgov_wait_time_seconds{quantile}``, ...):
    ``livemax``, the worst live process (percentiles cannot be added up);
  - counters: summed over every process that ever wrote, dead ones included, as counters must.

  Call ``prometheus_client.multiprocess.mark_process_dead(worker.pid)`` in gunicorn's
  ``child_exit`` hook so that dead workers leave the gauges, and empty the directory at start-up.
"""

import atexit
import os
import threading
import weakref
from typing import Callable, Dict, Iterator, Optional, Tuple

__all__ = [
    "INTERVAL_VAR",
    "Mirror",
    "StatsCollector",
    "available",
    "enable",
    "multiprocess_dir",
    "render",
]

INTERVAL_VAR = "THREADGOV_METRICS_INTERVAL"
DEFAULT_INTERVAL = 1.0

# (name, stats field, help, multiprocess mode)
GAUGES: Tuple[Tuple[str, str, str, str], ...] = (
    ("threadgov_size", "size", "Most worker threads the pool may run (N).", "livesum"),
    ("threadgov_threads_alive", "threads_alive", "Worker threads started and alive.", "livesum"),
    ("threadgov_busy", "busy", "Workers running a call.", "livesum"),
    ("threadgov_idle", "idle", "Workers parked, waiting for work.", "livesum"),
    ("threadgov_leased", "leased", "Workers bound to a context (request) or the shared lane.", "livesum"),
    ("threadgov_queued", "queued", "Calls submitted and not started yet.", "livesum"),
    ("threadgov_waiting_contexts", "waiting_contexts", "Contexts (requests) waiting to lease a worker.", "livesum"),
    ("threadgov_peak_busy", "peak_busy", "Highest busy since install().", "livemax"),
    ("threadgov_peak_queued", "peak_queued", "Highest queued since install().", "livemax"),
    ("threadgov_process_threads", "process_threads", "Threads of the whole process.", "livesum"),
)

# (name without _total, stats field, help)
COUNTERS: Tuple[Tuple[str, str, str], ...] = (
    ("threadgov_calls_submitted", "submitted", "Calls handed to the pool."),
    ("threadgov_calls_completed", "completed", "Calls that ran to the end, returning or raising."),
    ("threadgov_calls_failed", "failed", "Calls that raised."),
    ("threadgov_calls_cancelled", "cancelled", "Calls dropped before they started (caller cancelled)."),
    ("threadgov_calls_dropped", "dropped", "Calls whose caller was cancelled while they ran (result dropped)."),
    ("threadgov_calls_rejected", "rejected", "Calls refused by back-pressure (max_queue, queue_timeout)."),
    ("threadgov_calls_slow", "slow_calls", "Calls that ran longer than slow_call_threshold."),
)

# (name prefix, stats field, what)
TIMINGS: Tuple[Tuple[str, str, str], ...] = (
    ("threadgov_wait_time", "wait_time", "from submission to start"),
    ("threadgov_run_time", "run_time", "running"),
)
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))

INSTALLED = ("threadgov_installed", "1 if the governor is installed in the process, else 0.")
DB_CONNECTIONS = (
    "threadgov_db_connections",
    "Open Django database connections on worker threads, per alias.",
)


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def multiprocess_dir() -> Optional[str]:
    """prometheus_client's multiprocess directory, if multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def _snapshot():
    from ._governor import current

    governor = current()
    return (governor, governor.stats()) if governor is not None else (None, None)


def _timing_help(what: str, kind: str) -> str:
    if kind == "quantile":
        return (
            f"Seconds a call spent {what}: nearest-rank percentile over the most recent calls "
            "(at most 4096)."
        )
    return f"Longest time a call spent {what} since install(), in seconds."


# -- one process: a collector read at scrape time -------------------------------------------------


class StatsCollector:
    """A prometheus_client collector that reads ``stats()`` once per scrape."""

    def __init__(self, snapshot: Callable[[], tuple] = _snapshot):
        self._snapshot = snapshot

    def describe(self):
        return list(self._families(None))

    def collect(self):
        _, stats = self._snapshot()
        return list(self._families(stats))

    def _families(self, stats) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        installed = GaugeMetricFamily(*INSTALLED)
        installed.add_metric([], 0.0 if stats is None else 1.0)
        yield installed
        for name, field, doc, _ in GAUGES:
            family = GaugeMetricFamily(name, doc)
            if stats is not None:
                family.add_metric([], float(getattr(stats, field)))
            yield family
        db = GaugeMetricFamily(*DB_CONNECTIONS, labels=["alias"])
        if stats is not None:
            for alias, count in stats.db_connections:
                db.add_metric([alias], float(count))
        yield db
        for name, field, doc in COUNTERS:
            family = CounterMetricFamily(name, doc)
            if stats is not None:
                family.add_metric([], float(getattr(stats, field, 0)))
            yield family
        for prefix, field, what in TIMINGS:
            quantiles = GaugeMetricFamily(f"{prefix}_seconds", _timing_help(what, "quantile"), labels=["quantile"])
            maximum = GaugeMetricFamily(f"{prefix}_max_seconds", _timing_help(what, "max"))
            if stats is not None:
                timings = getattr(stats, field)
                for quantile, attribute in QUANTILES:
                    quantiles.add_metric([quantile], getattr(timings, attribute))
                maximum.add_metric([], timings.max)
            yield quantiles
            yield maximum


# -- several processes: multiprocess-aware metrics updated from stats() --------------------------


class Mirror:
    """Copies ``stats()`` into multiprocess-aware Gauges and Counters of this process.

    The metrics are registered in no registry: in multiprocess mode their values live in
    prometheus_client's per-process files and are read back by a ``MultiProcessCollector``.
    """

    def __init__(self, snapshot: Callable[[], tuple] = _snapshot):
        from prometheus_client import Counter, Gauge

        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._installed = Gauge(*INSTALLED, multiprocess_mode="livesum", registry=None)
        self._gauges = {
            field: Gauge(name, doc, multiprocess_mode=mode, registry=None) for name, field, doc, mode in GAUGES
        }
        self._db = Gauge(*DB_CONNECTIONS, labelnames=["alias"], multiprocess_mode="livesum", registry=None)
        self._db_aliases: set = set()
        self._counters = {field: Counter(name, doc, registry=None) for name, field, doc in COUNTERS}
        self._counted: Dict[str, float] = {}
        self._governor: Optional[weakref.ref] = None
        self._timings = {}
        for prefix, field, what in TIMINGS:
            self._timings[field] = (
                Gauge(f"{prefix}_seconds", _timing_help(what, "quantile"), labelnames=["quantile"],
                      multiprocess_mode="livemax", registry=None),
                Gauge(f"{prefix}_max_seconds", _timing_help(what, "max"), multiprocess_mode="livemax",
                      registry=None),
            )

    def update(self) -> None:
        """Copy the current statistics (thread-safe)."""
        governor, stats = self._snapshot()
        with self._lock:
            if stats is None:
                self._installed.set(0)
                for gauge in self._gauges.values():
                    gauge.set(0)
                for alias in self._db_aliases:
                    self._db.labels(alias).set(0)
                return
            previous = self._governor() if self._governor is not None else None
            if previous is not governor:  # a new governor counts from 0 again
                self._counted = {}
                self._governor = weakref.ref(governor)
            self._installed.set(1)
            for field, gauge in self._gauges.items():
                gauge.set(getattr(stats, field))
            current = dict(stats.db_connections)
            for alias in self._db_aliases | set(current):
                self._db.labels(alias).set(current.get(alias, 0))
            self._db_aliases |= set(current)
            for field, counter in self._counters.items():
                value = getattr(stats, field, 0)
                last = self._counted.get(field, 0)
                delta = value - last if value >= last else value
                if delta:
                    counter.inc(delta)
                self._counted[field] = value
            for field, (quantiles, maximum) in self._timings.items():
                timings = getattr(stats, field)
                for quantile, attribute in QUANTILES:
                    quantiles.labels(quantile).set(getattr(timings, attribute))
                maximum.set(timings.max)


class _Updater:
    """The daemon thread that runs ``Mirror.update`` every ``interval`` seconds in this process."""

    def __init__(self, mirror: Mirror, interval: float):
        self.mirror = mirror
        self.interval = interval
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="threadgov-metrics", daemon=True)
        self._thread.start()
        atexit.register(_mark_dead, self.pid)

    def _run(self) -> None:
        import logging

        while True:
            try:
                self.mirror.update()
            except Exception:  # never let the metrics die silently, never stop serving them
                logging.getLogger("threadgov").exception("threadgov: updating the metrics failed")
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def _mark_dead(pid: int) -> None:
    """At a clean exit, drop this process's live gauges (as gunicorn's ``child_exit`` hook would)."""
    if os.getpid() != pid:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # the directory is gone, or was never there: nothing to drop
        pass


_lock = threading.Lock()
_collector: Optional[StatsCollector] = None  # registered in the default REGISTRY
_mirror: Optional[Mirror] = None
_updater: Optional[_Updater] = None


def interval() -> float:
    from ._options import parse_seconds

    text = os.environ.get(INTERVAL_VAR)
    return DEFAULT_INTERVAL if text is None else parse_seconds(text, setting=INTERVAL_VAR)


def enable() -> None:
    """Publish the governor's metrics (idempotent; safe before ``install()``).

    One process: register :class:`StatsCollector` in the default ``REGISTRY``. Multiprocess mode:
    start copying ``stats()`` into this process's files (and again in every forked child).
    Raises ImportError without prometheus_client.
    """
    global _collector, _mirror, _updater
    import prometheus_client

    with _lock:
        if multiprocess_dir():
            if _mirror is None:
                _mirror = Mirror()
            if _updater is None or _updater.pid != os.getpid():
                _updater = _Updater(_mirror, interval())
        elif _collector is None:
            _collector = StatsCollector()
            prometheus_client.REGISTRY.register(_collector)


def disable() -> None:
    """Undo :func:`enable` (for tests)."""
    global _collector, _updater
    import prometheus_client

    with _lock:
        if _collector is not None:
            prometheus_client.REGISTRY.unregister(_collector)
            _collector = None
        updater, _updater = _updater, None
    if updater is not None and updater.pid == os.getpid():
        updater.stop()


def _after_fork_in_child() -> None:
    # Only the forking thread survives a fork: the lock may look held, and the updater thread is
    # gone. Start a new one for this process (gunicorn --preload forks after enable()).
    global _lock, _updater
    _lock = threading.Lock()
    if _updater is not None and _updater.pid != os.getpid():
        _updater = _Updater(_updater.mirror, _updater.interval)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def render(accept: Optional[str] = None) -> Tuple[bytes, str]:
    """The metrics text for a scrape: ``(body, content type)``, negotiated from ``accept``.

    One process: the default ``REGISTRY`` (threadgov's collector included). Multiprocess mode:
    this process's values are refreshed, then every process's files are aggregated.
    """
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    enable()
    encoder, content_type = choose_encoder(accept or "")
    if multiprocess_dir():
        from prometheus_client import multiprocess

        if _mirror is not None:
            _mirror.update()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return encoder(registry), content_type
    return encoder(REGISTRY), content_type

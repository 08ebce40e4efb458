"""``python -m threadgov demo``: stock asgiref against the governor, on a real Django app, in-process.

No database server and no network: Django is configured in this process with a SQLite file in a
temporary directory (``CONN_MAX_AGE=60``, so every thread keeps its connection, as a production
setting would), one model, and one sync view that makes two ORM queries. Django's ``ASGIHandler``
is called directly with ``scope``/``receive``/``send`` and a burst of requests is fired at it, all
at once: first with stock asgiref, then with ``threadgov.install()``, then with ``threadgov.install()``
and threadgov's own handler (``threadgov.asgi.ASGIHandler``: one governed call per request).

What is counted (per run):

* **peak process threads**: ``threading.Thread.start`` is wrapped during the burst and the OS
  thread count (psutil) is read after every start; thread counts only grow at a start, so the
  maximum of those readings is the peak, deterministically.
* **threads that ran the view**: distinct ``Thread`` objects (kept alive, so never confused with
  a later thread reusing an id) on which the view ran.
* **DB connections**: SQLite connections are created through a ``sqlite3.Connection`` subclass
  (the ``factory`` connection option) that counts every connection opened, how many were open at
  once, and how each ended: closed with ``close()`` (Django closing it), or only freed when the
  garbage collector reclaimed the thread-local ``DatabaseWrapper`` of a dead thread (nobody
  closed it). Stock asgiref runs each request on a new thread; Django's ``close_old_connections``
  keeps a connection younger than ``CONN_MAX_AGE``, so it dies with its thread. After the stock
  burst the demo waits for those threads to exit and collects garbage, which frees them; any still
  open after that is closed by the demo (and counted as such).

The demo owns its process: Django settings can be configured only once.
"""

import asyncio
import gc
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

__all__ = ["run"]

# ROOT_URLCONF is this module; filled in by _configure().
urlpatterns: List[Any] = []

_Book: Any = None  # the demo model, created by _configure()


# -- database connection accounting ---------------------------------------------------------------


class _ConnectionLedger:
    """Counts SQLite connections opened and how they ended (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: Dict[int, "weakref.ref[sqlite3.Connection]"] = {}  # serial -> connection
        self._serials = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.opened = 0
            self.closed = 0  # by close()
            self.collected = 0  # freed by the garbage collector without close()
            self.peak_open = len(self._live)

    def open(self, conn: sqlite3.Connection) -> int:
        with self._lock:
            self._serials += 1
            serial = self._serials
            self._live[serial] = weakref.ref(conn)
            self.opened += 1
            self.peak_open = max(self.peak_open, len(self._live))
        finalizer = weakref.finalize(conn, self._gone, serial)
        finalizer.atexit = False
        return serial

    def close(self, serial: int) -> None:
        with self._lock:
            if self._live.pop(serial, None) is not None:
                self.closed += 1

    def _gone(self, serial: int) -> None:
        with self._lock:
            if self._live.pop(serial, None) is not None:
                self.collected += 1

    @property
    def open_now(self) -> int:
        with self._lock:
            return len(self._live)

    def close_leftovers(self) -> int:
        """Close connections nobody closed (Django opens them with check_same_thread=False)."""
        with self._lock:
            refs = list(self._live.values())
        count = 0
        for ref in refs:
            conn = ref()
            if conn is not None:
                conn.close()
                count += 1
        return count


_LEDGER = _ConnectionLedger()


class _CountedConnection(sqlite3.Connection):
    """The ``factory`` of every SQLite connection Django opens in the demo."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ledger_serial = _LEDGER.open(self)

    def close(self) -> None:
        _LEDGER.close(self._ledger_serial)
        super().close()


# -- thread accounting ----------------------------------------------------------------------------


class _ThreadWatch:
    """Peak OS threads and threads started while active; threads that ran the view."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._lock = threading.Lock()
        self.before = self._process.num_threads()
        self.peak = self.before
        self.started: List[threading.Thread] = []
        self.view_threads: Dict[threading.Thread, None] = {}

    @contextmanager
    def watching(self):
        original = threading.Thread.start
        watch = self

        def start(thread, *args, **kwargs):
            original(thread, *args, **kwargs)
            count = watch._process.num_threads()
            with watch._lock:
                watch.started.append(thread)
                if count > watch.peak:
                    watch.peak = count

        threading.Thread.start = start
        try:
            yield self
        finally:
            threading.Thread.start = original

    def ran_view(self) -> None:
        thread = threading.current_thread()
        with self._lock:
            self.view_threads[thread] = None

    def join_started(self, timeout: float) -> int:
        """Wait for the threads started during the burst to exit; the number still alive."""
        deadline = time.monotonic() + timeout
        for thread in self.started:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for t in self.started if t.is_alive())


_WATCH: Optional[_ThreadWatch] = None


# -- the Django app -------------------------------------------------------------------------------


def _book_view(request):
    """A sync view making two ORM queries (reads only: SQLite serialises writes)."""
    from django.http import JsonResponse

    if _WATCH is not None:
        _WATCH.ran_view()
    total = _Book.objects.count()
    recent = list(_Book.objects.filter(year__gte=2000).order_by("-year").values_list("title", flat=True)[:5])
    return JsonResponse({"total": total, "recent": recent})


def _configure(directory: str) -> None:
    import django
    from django.conf import settings
    from django.db import connection, models
    from django.urls import path

    global _Book
    settings.configure(
        DEBUG=False,
        SECRET_KEY="threadgov-demo-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(directory, "demo.sqlite3"),
                "CONN_MAX_AGE": 60,
                "OPTIONS": {"factory": _CountedConnection, "timeout": 20},
            }
        },
    )
    django.setup()

    class Book(models.Model):
        title = models.CharField(max_length=100)
        year = models.IntegerField()

        class Meta:
            app_label = "threadgov_demo"

    _Book = Book
    urlpatterns[:] = [path("books/", _book_view)]
    with connection.schema_editor() as editor:
        editor.create_model(Book)
    Book.objects.bulk_create(Book(title=f"Book {i}", year=1950 + i) for i in range(100))
    connection.close()


# -- the burst ------------------------------------------------------------------------------------


def _scope(i: int) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/books/",
        "raw_path": b"/books/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 10000 + i % 50000),
        "server": ("testserver", 80),
    }


async def _request(app, i: int) -> Optional[str]:
    """One request; None if it succeeded, else what went wrong."""
    body_sent = False
    done = asyncio.Event()
    status: Optional[int] = None
    chunks: List[bytes] = []

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # Django listens for a disconnect until the response is sent
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(_scope(i), receive, send)
    except Exception as exc:  # counted as an error, not raised: the burst goes on
        return f"{type(exc).__name__}: {exc}"
    finally:
        done.set()
    if status != 200:
        return f"HTTP {status}"
    try:
        if json.loads(b"".join(chunks))["total"] != 100:
            return "wrong body"
    except (ValueError, KeyError, TypeError):
        return "unreadable body"
    return None


async def _burst(app, requests: int, watch: _ThreadWatch) -> tuple:
    with watch.watching():
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(_request(app, i) for i in range(requests)))
        elapsed = time.perf_counter() - started
    return elapsed, [o for o in outcomes if o is not None]


def _run_once(requests: int, governed: bool, threads: int, affinity: str, handler: bool = False) -> dict:
    global _WATCH
    import threadgov

    if handler:
        from threadgov.asgi import ASGIHandler
    else:
        from django.core.handlers.asgi import ASGIHandler

    gc.collect()
    _LEDGER.reset()
    app = ASGIHandler()
    watch = _WATCH = _ThreadWatch()
    stats = None
    uninstalled = True
    if governed:
        threadgov.install(max_threads=threads, affinity=affinity)
    try:
        elapsed, errors = asyncio.run(_burst(app, requests, watch))
        open_after_burst = _LEDGER.open_now
        if governed:
            stats = threadgov.stats()
    finally:
        if governed:
            # Workers close their connections as they exit.
            uninstalled = threadgov.uninstall(timeout=10.0)
        _WATCH = None
    # Stock: every request ran on a thread of its own, which exits once asgiref's join thread has
    # shut its executor down; the connection it kept goes with its DatabaseWrapper, in a cycle.
    still_alive = watch.join_started(timeout=10.0)
    gc.collect()
    closed_by_demo = _LEDGER.close_leftovers()
    result = {
        "threads_before": watch.before,
        "peak_threads": watch.peak,
        "threads_started": len(watch.started),
        "threads_alive_after": still_alive,
        "view_threads": len(watch.view_threads),
        "view_thread_names_sample": sorted({t.name for t in watch.view_threads})[:8],
        "db_opened": _LEDGER.opened,
        "db_peak_open": _LEDGER.peak_open,
        "db_open_after_burst": open_after_burst,
        "db_closed": _LEDGER.closed - closed_by_demo,
        "db_freed_by_gc": _LEDGER.collected,
        "db_closed_by_demo": closed_by_demo,
        "seconds": elapsed,
        "requests_per_second": requests / elapsed if elapsed > 0 else float("inf"),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }
    if governed:
        result["max_threads"] = threads
        result["thread_bound"] = watch.before + threads
        result["uninstalled_cleanly"] = uninstalled
        result["stats"] = stats.as_dict() if stats is not None else None
    return result


# -- output ---------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _report(
    requests: int, threads: int, affinity: str, source: str, stock: dict, gov: dict, fused: dict, out
) -> None:
    w = out.write
    w(
        f"threadgov demo: {requests} concurrent requests to a sync Django view (2 ORM queries, SQLite,\n"
        f"CONN_MAX_AGE=60), served in-process by Django's ASGIHandler; governed: max_threads={threads}\n"
        f"({source}), affinity={affinity!r}; the last column also uses threadgov.asgi.ASGIHandler\n"
        f"(one governed call per request).\n\n"
    )
    rows = [
        ("peak process threads", "peak_threads"),
        ("threads started during the burst", "threads_started"),
        ("threads that ran the view", "view_threads"),
        ("DB connections opened", "db_opened"),
        ("DB connections open at once (peak)", "db_peak_open"),
        ("  ended with close()", "db_closed"),
        ("  ended unclosed, freed by the GC", "db_freed_by_gc"),
        ("requests/s", "requests_per_second"),
        ("errors (not 200 + right body)", "errors"),
    ]
    left = max(len(label) for label, _ in rows) + 2
    col = 15
    runs = (stock, gov, fused)
    w(f"{'':<{left}}{'stock asgiref':>{col}}{'threadgov':>{col}}{'+ its handler':>{col}}\n")
    for label, key in rows:
        cells = [run[key] for run in runs]
        if isinstance(cells[0], float):
            cells = [f"{cell:,.0f}" for cell in cells]
        w(f"{label:<{left}}" + "".join(f"{cell:>{col}}" for cell in cells) + "\n")
    w("\n")
    for label, run in (("governed", gov), ("governed + handler", fused)):
        w(
            f"Bounds, {label}: peak threads {run['peak_threads']} <= {run['threads_before']} before the "
            f"burst + {threads} workers = {run['thread_bound']}; threads that ran the view "
            f"{run['view_threads']} <= {threads}.\n"
        )
    names = ", ".join(gov["view_thread_names_sample"])
    w(f"Governed view threads: {names}\n")
    leftovers = sum(run["db_closed_by_demo"] for run in runs)
    if leftovers:
        w(f"The demo closed {leftovers} connection(s) still open after the threads had exited.\n")
    for label, run in (("stock", stock), ("governed", gov), ("governed + handler", fused)):
        if run["errors"]:
            w(f"{label} errors, e.g.: {'; '.join(run['error_samples'])}\n")
        if run["threads_alive_after"]:
            w(f"{label}: {run['threads_alive_after']} thread(s) started during the burst still alive.\n")
    stats = gov.get("stats")
    if stats:
        wait, run_t = stats["wait_time"], stats["run_time"]
        db = ", ".join(f"{alias}={n}" for alias, n in stats["db_connections"].items()) or "none"
        w("\nthreadgov.stats() after the governed burst:\n")
        lines = [
            ("size", f"{stats['size']} ({stats['source']})"),
            ("threads_alive", stats["threads_alive"]),
            ("submitted / completed / failed", f"{stats['submitted']} / {stats['completed']} / {stats['failed']}"),
            ("peak_busy / peak_queued", f"{stats['peak_busy']} / {stats['peak_queued']}"),
            ("wait_time p50 / p95 / max", f"{_ms(wait['p50'])} / {_ms(wait['p95'])} / {_ms(wait['max'])}"),
            ("run_time p50 / p95 / max", f"{_ms(run_t['p50'])} / {_ms(run_t['p95'])} / {_ms(run_t['max'])}"),
            ("db_connections (open, by alias)", db),
            ("process_threads", stats["process_threads"]),
        ]
        width = max(len(k) for k, _ in lines) + 2
        for key, value in lines:
            w(f"  {key:<{width}}{value}\n")
    for label, run in (("governed", gov), ("governed + handler", fused)):
        if not run["uninstalled_cleanly"]:
            w(f"{label}: threadgov.uninstall() timed out waiting for its workers.\n")


def run(
    requests: int,
    threads: int,
    affinity: str,
    json_path: Optional[str] = None,
    out=None,
    source: str = "max_threads argument",
) -> int:
    """Run the demo; 0 if both runs completed with every request served and cleaned up."""
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="threadgov-demo-") as directory:
        _configure(directory)
        stock = _run_once(requests, False, threads, affinity)
        gov = _run_once(requests, True, threads, affinity)
        fused = _run_once(requests, True, threads, affinity, handler=True)
        _report(requests, threads, affinity, source, stock, gov, fused, out)
        from django.db import connections

        connections.close_all()
    if json_path:
        data = {
            "requests": requests,
            "max_threads": threads,
            "max_threads_source": source,
            "affinity": affinity,
            "stock": stock,
            "governed": gov,
            "governed_handler": fused,
        }
        text = json.dumps(data, indent=2, sort_keys=True)
        if json_path == "-":
            out.write(text + "\n")
        else:
            with open(json_path, "w") as f:
                f.write(text + "\n")
    ok = stock["errors"] == 0 and all(
        run["errors"] == 0
        and run["uninstalled_cleanly"]
        and run["view_threads"] <= threads
        and run["peak_threads"] <= run["thread_bound"]
        for run in (gov, fused)
    )
    return 0 if ok else 1

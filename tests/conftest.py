"""Session-wide setup: Django is configured once per test process, at import (no pytest-django).

The default database is an SQLite file in a temporary directory removed at the end of the session;
the ``pg`` alias (PostgreSQL) is configured but never connected unless a test uses it.
"""

import os
import shutil
import sys
import tempfile
import threading

import pytest

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:  # the test Django app is imported as ``djangoapp``
    sys.path.insert(0, _TESTS)

import djangoapp  # noqa: E402

_DB_DIR = tempfile.mkdtemp(prefix="threadgov-tests-")
djangoapp.configure(_DB_DIR)

from django.core import signals  # noqa: E402

import threadgov  # noqa: E402
from djangoapp.probe import TIMEOUT, on_request_finished, on_request_started, probe  # noqa: E402
from djangoapp.testing import ThreadStarts  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    from django.db import connections

    connections.close_all()
    shutil.rmtree(_DB_DIR, ignore_errors=True)


# -- fixtures of the Django tests (test_django_asgi.py, test_postgres.py) --------------------------


@pytest.fixture
def thread_starts(monkeypatch):
    starts = ThreadStarts()
    original = threading.Thread.start

    def start(self, *args, **kwargs):
        original(self, *args, **kwargs)
        starts.started(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield starts
    monkeypatch.setattr(threading.Thread, "start", original)
    # No thread started by the test outlives it (stock asgiref's per-request threads included).
    for thread in starts.everything:
        thread.join(TIMEOUT)
    alive = [t.name for t in starts.everything if t.is_alive()]
    assert not alive, f"threads left running: {alive}"


@pytest.fixture
def governor(thread_starts, monkeypatch):
    """install(max_threads, **kwargs) -> threadgov.stats, for one test; always uninstalled, no worker
    left behind.

    Depends on thread_starts so that it is torn down (uninstalled) before threads are joined.
    Options not passed are off: none comes from a THREADGOV_* variable of the environment.
    """
    for var in [name for name in os.environ if name.startswith("THREADGOV_")]:
        monkeypatch.delenv(var)

    def install(max_threads: int, **kwargs):
        threadgov.install(max_threads=max_threads, **kwargs)
        return threadgov.stats

    yield install
    assert threadgov.uninstall(timeout=TIMEOUT), "workers still running after uninstall()"
    left = [t.name for t in threading.enumerate() if t.name.startswith("threadgov-")]
    assert not left, f"threadgov workers alive after uninstall(): {left}"


@pytest.fixture
def probed():
    """The probe, reset, with its request_started / request_finished receivers connected."""
    probe.reset()
    signals.request_started.connect(on_request_started, dispatch_uid="threadgov-tests-started")
    signals.request_finished.connect(on_request_finished, dispatch_uid="threadgov-tests-finished")
    try:
        yield probe
    finally:
        signals.request_started.disconnect(dispatch_uid="threadgov-tests-started")
        signals.request_finished.disconnect(dispatch_uid="threadgov-tests-finished")
        probe.reset()

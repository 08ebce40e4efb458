"""PostgreSQL under the governor: at most N backends however many requests, all closed by uninstall().

Skipped when the server is unreachable, except under CI (``CI`` set), where that is a failure.
The test process's backends are told apart by their application_name; they are inspected from a
separate "monitor" connection with another application_name.
"""

import asyncio
import os
import threading
import time

import psycopg
import pytest
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.db import connections

import threadgov
from djangoapp import PG_APPLICATION_NAME, PG_PARAMS
from djangoapp.client import run_many
from djangoapp.probe import STAGES, TIMEOUT, Gate
from djangoapp.testing import until

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

MONITOR_NAME = f"threadgov-tests-monitor-{os.getpid()}"


@pytest.fixture(scope="module")
def monitor():
    """An autocommit connection of the test process itself (not Django's), to watch the server."""
    try:
        conn = psycopg.connect(
            **PG_PARAMS, application_name=MONITOR_NAME, autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        conn, error = None, " ".join(str(exc).split())
    if conn is None:
        reason = f"PostgreSQL unreachable at {PG_PARAMS['host']}:{PG_PARAMS['port']} ({error})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the server must be running", pytrace=False)
        pytest.skip(reason)
    try:
        yield conn
    finally:
        terminate_ours(conn)
        conn.close()


def backends(monitor) -> set:
    """PIDs of this process's Django backends (application_name = ours)."""
    rows = monitor.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (PG_APPLICATION_NAME,)
    ).fetchall()
    return {pid for (pid,) in rows}


def terminate_ours(monitor) -> None:
    monitor.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (PG_APPLICATION_NAME,),
    )


def wait_no_backends(monitor, timeout: float = TIMEOUT) -> set:
    """A backend leaves pg_stat_activity shortly after its client has closed the connection."""
    deadline = time.monotonic() + timeout
    while (left := backends(monitor)) and time.monotonic() < deadline:
        time.sleep(0.01)  # sleep-ok: polls the server, which sends no event
    return left


@pytest.fixture
def clean_server(monitor):
    """No backend of ours before the test; any left by it is terminated afterwards."""
    connections["pg"].close()  # the main thread holds no connection of the pg alias
    assert wait_no_backends(monitor) == set(), "backends of this process left by an earlier test"
    yield monitor
    terminate_ours(monitor)
    assert wait_no_backends(monitor) == set()


async def test_500_requests_at_concurrency_64_use_at_most_4_backends(governor, probed, clean_server):
    monitor = clean_server
    governor(4)
    handler = ASGIHandler()
    seen = []  # pg_stat_activity samples taken while requests are in flight

    def sample(response):
        if int(response.request_id[1:]) % 25 == 0:
            seen.append(len(backends(monitor)))

    responses = await run_many(handler, "/pg/", 500, concurrency=64, on_response=sample)

    bad = [(r.status, r.body[:200]) for r in responses if r.status != 200]
    assert not bad, f"{len(bad)} of 500 failed, e.g. {bad[:3]}"
    pids = {int(r.text) for r in responses}
    assert 1 <= len(pids) <= 4, pids
    assert seen and max(seen) <= 4, seen
    live = backends(monitor)
    assert 1 <= len(live) <= 4 and live <= pids, (live, pids)
    await until(lambda: threadgov.stats().busy == 0, "the workers to finish their bookkeeping")
    stats = threadgov.stats()
    assert dict(stats.db_connections).get("pg", 0) == len(live), (stats.db_connections, live)
    assert stats.threads_alive <= 4
    # Each request's steps on one governed thread.
    assert probed.errors == []
    for r in responses:
        assert probed.stages_of(r.request_id) == list(STAGES)
        assert len(probed.threads_of(r.request_id)) == 1
    assert all(name.startswith("threadgov-") for name in probed.all_threads().values())

    # uninstall(): the workers exit and close their connections.
    assert threadgov.uninstall(timeout=TIMEOUT)
    assert not [t for t in threading.enumerate() if t.name.startswith("threadgov-")]
    assert wait_no_backends(monitor) == set()


async def test_control_stock_asgiref_opens_a_backend_per_request(thread_starts, probed, clean_server):
    """Without the governor (CONN_MAX_AGE=60, concurrency 64), 16 requests in the view at once
    hold 16 backends: the bound above is not trivially true."""
    monitor = clean_server
    handler = ASGIHandler()
    gate = Gate(16, asyncio.get_running_loop())
    probed.hold = gate

    def close_pg(sender, **kwargs):
        # Cleanup on the thread that owns the connection: stock asgiref keeps a request's thread
        # (and its persistent connection) until the request ends.
        connections["pg"].close()

    signals.request_finished.connect(close_pg, dispatch_uid="threadgov-tests-close-pg")
    try:
        pending = asyncio.ensure_future(run_many(handler, "/pg/", 16, concurrency=64))
        try:
            await gate.wait_all()  # 16 requests are in the view, each with its own connection
            held = backends(monitor)
        finally:
            gate.open()
        responses = await asyncio.wait_for(pending, TIMEOUT)
    finally:
        signals.request_finished.disconnect(dispatch_uid="threadgov-tests-close-pg")

    assert [r.status for r in responses] == [200] * 16
    pids = {int(r.text) for r in responses}
    assert len(pids) == 16 > 4
    assert held == pids
    threads = probed.all_threads()
    assert len(threads) >= 16 and not any(n.startswith("threadgov-") for n in threads.values())
    assert wait_no_backends(monitor) == set()


# -- overload and database faults (back-pressure, broken connections) -------------------------


async def test_tenfold_overload_is_refused_with_503_and_stays_bounded(thread_starts, clean_server):
    """640 concurrent slow requests, N=4, max_queue=32: threads and backends stay within N, the
    excess gets 503 with Retry-After, every accepted request gets its 200, nothing hangs."""
    from threadgov.asgi import GovernorMiddleware

    monitor = clean_server
    threadgov.install(max_threads=4, max_queue=32)
    try:
        app = GovernorMiddleware(ASGIHandler(), retry_after=2)
        seen = []

        def sample(response):
            if int(response.request_id[1:]) % 40 == 0:
                seen.append(len(backends(monitor)))

        thread_starts.arm()
        responses = await asyncio.wait_for(
            run_many(app, "/pg-slow/", 640, on_response=sample), 60
        )
        statuses = [r.status for r in responses]
        ok = [r for r in responses if r.status == 200]
        refused = [r for r in responses if r.status == 503]
        assert len(ok) + len(refused) == 640, sorted(set(statuses))
        assert ok and refused
        assert all(r.headers[b"retry-after"] == b"2" for r in refused)
        assert all(r.text.isdigit() for r in ok)
        assert len({r.text for r in ok}) <= 4  # distinct backends that served
        assert seen and max(seen) <= 4, seen
        assert thread_starts.peak <= thread_starts.before + 4 + 2
        stats = threadgov.stats()
        assert stats.rejected == len(refused) and stats.peak_queued <= 32
        assert stats.threads_alive <= 4
    finally:
        assert threadgov.uninstall(timeout=TIMEOUT)
    assert wait_no_backends(monitor) == set()


@pytest.fixture
def writes_table(clean_server):
    monitor = clean_server
    monitor.execute(
        "CREATE TABLE IF NOT EXISTS threadgov_test_writes (id bigserial PRIMARY KEY, request_id text)"
    )
    monitor.execute("TRUNCATE threadgov_test_writes")
    yield monitor
    monitor.execute("DROP TABLE IF EXISTS threadgov_test_writes")


async def test_killed_backends_are_replaced_without_a_restart(writes_table):
    """All governed backends are terminated mid-load: requests then in flight may fail, but no
    request reports a write that was lost, and every later request succeeds."""
    monitor = writes_table
    threadgov.install(max_threads=4)
    try:
        app = ASGIHandler()
        killed = []

        def kill_midway(response):
            if len(killed) == 0 and response.request_id == "a60":
                killed.append(backends(monitor))
                terminate_ours(monitor)

        during = await run_many(app, "/pg-write/", 200, concurrency=16, prefix="a", on_response=kill_midway)
        assert killed and killed[0], "the kill happened while backends were connected"
        after = await run_many(app, "/pg-write/", 100, concurrency=16, prefix="b")

        assert [r.status for r in after] == [200] * 100
        reported = {int(r.text): r.request_id for r in during + after if r.status == 200}
        rows = dict(monitor.execute("SELECT id, request_id FROM threadgov_test_writes").fetchall())
        lost = {i: rid for i, rid in reported.items() if rows.get(i) != rid}
        assert not lost, f"{len(lost)} writes reported but not in the table: {list(lost.items())[:3]}"
        assert len(backends(monitor)) <= 4
    finally:
        assert threadgov.uninstall(timeout=TIMEOUT)
    assert wait_no_backends(monitor) == set()

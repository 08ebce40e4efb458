"""Django under ASGI, in-process through ``ASGIHandler``: threads are bounded, requests keep their
thread (affinity "request"), and under affinity "call" an awaiting async view holds no worker.

Synchronisation is by events and gates only; the sole polling (``until``) waits for the pool's own
bookkeeping that a worker does just after it has delivered a call's result.
"""

import asyncio
import threading

import pytest
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.db.backends.signals import connection_created

import threadgov
from djangoapp import ITEM_NAMES
from djangoapp.client import run_many, start
from djangoapp.models import Item
from djangoapp.probe import REQUEST_ID, STAGES, TIMEOUT, AsyncGate, Gate
from djangoapp.testing import assert_ok, settled, until

pytestmark = pytest.mark.timeout(60)  # async tests run by pytest-asyncio (asyncio_mode = "auto")

ORM_BODY = f"{len(ITEM_NAMES)} True"


def assert_every_step_recorded(probe, responses):
    assert probe.errors == []
    for r in responses:
        assert probe.stages_of(r.request_id) == list(STAGES), r.request_id


def assert_one_thread_per_request(probe, responses):
    split = {
        r.request_id: probe.calls[r.request_id]
        for r in responses
        if len(probe.threads_of(r.request_id)) != 1
    }
    assert not split, f"{len(split)} requests ran on several threads, e.g. {next(iter(split.items()))}"


def assert_governed_threads(probe, max_threads):
    used = probe.all_threads()
    assert 1 <= len(used) <= max_threads, sorted(used.values())
    assert all(name.startswith("threadgov-") for name in used.values()), sorted(used.values())


def test_pg_alias_is_not_connected_by_setup():
    # A sync test, on the main thread, outside any event loop: it sees the thread's own Django
    # connections, those conftest's setup used. The PostgreSQL alias was never connected.
    assert connections["default"].connection is None  # closed after setup
    assert connections["pg"].connection is None


async def test_1000_concurrent_requests_use_at_most_4_threads(governor, thread_starts, probed):
    governor(4)
    handler = ASGIHandler()
    thread_starts.arm()  # threads before: measured right before the burst, after install()

    responses = await run_many(handler, "/orm/", 1000)

    assert_ok(responses, ORM_BODY)
    # Exact peaks: recorded right after every thread start.
    assert thread_starts.peak <= thread_starts.before + 4 + 2, (thread_starts.before, thread_starts.peak)
    assert thread_starts.peak_active <= thread_starts.before_active + 4
    # The only threads started were the governor's, at most 4.
    assert len(thread_starts.names) <= 4
    assert all(name.startswith("threadgov-") for name in thread_starts.names), thread_starts.names
    # Every thread-sensitive step ran on a governed thread; a request's steps all on one.
    assert_every_step_recorded(probed, responses)
    assert_governed_threads(probed, 4)
    assert_one_thread_per_request(probed, responses)

    stats = await settled()
    assert stats.threads_alive <= 4
    assert stats.peak_busy <= 4
    assert stats.completed >= 1000 * len(STAGES)
    assert stats.failed == 0
    # Every context has exited: nothing queued, no worker leased.
    assert (stats.queued, stats.waiting_contexts, stats.leased) == (0, 0, 0)
    # CONN_MAX_AGE=0: the SQLite connections were closed after each call.
    assert dict(stats.db_connections).get("default", 0) == 0


async def test_control_stock_asgiref_uses_a_thread_per_request(thread_starts, probed):
    """Without the governor, 50 requests held in the view at once are on 50 threads: the
    bounds asserted elsewhere are not trivially true."""
    handler = ASGIHandler()
    gate = Gate(50, asyncio.get_running_loop())
    probed.hold = gate
    thread_starts.arm()

    pending = asyncio.ensure_future(run_many(handler, "/block/", 50))
    await gate.wait_all()  # all 50 are in the view at the same moment
    gate.open()
    responses = await asyncio.wait_for(pending, TIMEOUT)

    assert_ok(responses, "held")
    assert_every_step_recorded(probed, responses)
    used = probed.all_threads()
    assert len(used) >= 50 > 4
    assert not any(name.startswith("threadgov-") for name in used.values())
    assert_one_thread_per_request(probed, responses)  # stock keeps request affinity too
    assert thread_starts.peak > thread_starts.before + 4 + 2


async def test_fifth_request_waits_while_four_hold_every_thread(governor, probed):
    governor(4)
    handler = ASGIHandler()
    gate = Gate(4, asyncio.get_running_loop())
    probed.hold = gate

    tasks = [start(handler, "/block/", f"held{i}") for i in range(5)]
    await gate.wait_all()  # 4 requests are in the view, each holding a worker
    # The fifth request's first call (request_started) is queued, its context waits for a worker.
    await until(lambda: threadgov.stats().waiting_contexts >= 1, "the fifth request to queue")
    stats = threadgov.stats()
    assert gate.arrived == 4
    assert stats.threads_alive == 4
    assert stats.busy == 4 and stats.leased == 4
    assert stats.queued >= 1 and stats.waiting_contexts == 1
    assert not any(task.done() for task in tasks)

    gate.open()
    responses = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert_ok(responses, "held")
    assert gate.arrived == 5
    assert_every_step_recorded(probed, responses)
    assert_governed_threads(probed, 4)
    assert_one_thread_per_request(probed, responses)
    stats = await settled()
    assert (stats.queued, stats.waiting_contexts, stats.leased) == (0, 0, 0)
    assert stats.peak_queued >= 1


async def test_call_affinity_bounds_threads(governor, thread_starts, probed):
    """Under "call" a request's steps may move between threads, but never beyond N threads."""
    governor(2, affinity="call")
    handler = ASGIHandler()
    thread_starts.arm()

    responses = await run_many(handler, "/orm/", 300)

    assert_ok(responses, ORM_BODY)
    assert_every_step_recorded(probed, responses)
    assert_governed_threads(probed, 2)
    assert len(thread_starts.names) <= 2
    assert thread_starts.peak <= thread_starts.before + 2 + 2
    stats = await settled()
    assert stats.threads_alive <= 2 and stats.peak_busy <= 2
    assert (stats.queued, stats.waiting_contexts, stats.leased) == (0, 0, 0)


async def test_call_affinity_awaiting_async_view_holds_no_worker(governor, probed):
    governor(1, affinity="call")
    handler = ASGIHandler()
    slow = AsyncGate()
    probed.async_hold = slow

    waiting = start(handler, "/wait/", "slow")
    await asyncio.wait_for(slow.entered.wait(), TIMEOUT)
    # Its calls so far (request_started, middleware_in) ran and gave the worker back.
    await settled()

    # With a single thread, other requests complete while the slow one awaits.
    others = await asyncio.wait_for(run_many(handler, "/orm/", 20, prefix="other"), TIMEOUT)
    assert_ok(others, ORM_BODY)
    assert not waiting.done()
    await settled()  # still nothing leased: the slow request holds no worker
    assert not waiting.done()

    slow.open()
    response = await asyncio.wait_for(waiting, TIMEOUT)
    assert (response.status, response.text) == (200, "waited")
    # The slow request's own steps (all but the async view) also ran on the single worker.
    assert probed.stages_of("slow") == [s for s in STAGES if s != "view"]
    assert_governed_threads(probed, 1)
    assert probed.errors == []


async def test_request_affinity_awaiting_async_view_holds_its_worker(governor, probed):
    governor(1, affinity="request")
    handler = ASGIHandler()
    slow = AsyncGate()
    probed.async_hold = slow

    waiting = start(handler, "/wait/", "slow")
    await asyncio.wait_for(slow.entered.wait(), TIMEOUT)
    await until(lambda: threadgov.stats().busy == 0, "the worker to finish its call")
    stats = threadgov.stats()
    assert stats.leased == 1  # idle, but kept by the slow request's context
    assert stats.threads_alive == 1

    # Another request cannot get the only worker: its first call queues.
    other = start(handler, "/orm/", "other")
    await until(lambda: threadgov.stats().waiting_contexts == 1, "the other request to queue")
    assert not other.done() and not waiting.done()
    assert probed.stages_of("other") == []

    slow.open()
    responses = await asyncio.wait_for(asyncio.gather(waiting, other), TIMEOUT)
    assert [(r.status, r.text) for r in responses] == [(200, "waited"), (200, ORM_BODY)]
    assert probed.stages_of("other") == list(STAGES)
    assert_governed_threads(probed, 1)
    assert len(probed.threads_of("slow")) == 1
    assert probed.errors == []
    stats = await settled()
    assert (stats.queued, stats.waiting_contexts, stats.leased) == (0, 0, 0)


async def test_uninstall_restores_stock_behaviour(governor, thread_starts, probed):
    governor(2)
    handler = ASGIHandler()
    assert_ok(await run_many(handler, "/orm/", 10), ORM_BODY)
    assert threadgov.uninstall(timeout=TIMEOUT)
    assert not [t for t in threading.enumerate() if t.name.startswith("threadgov-")]

    responses = await run_many(handler, "/orm/", 10, prefix="after")
    assert_ok(responses, ORM_BODY)
    after = {ident: name for r in responses for _, ident, name in probed.calls[r.request_id]}
    assert after and not any(name.startswith("threadgov-") for name in after.values())
    assert_one_thread_per_request(probed, responses)


@pytest.mark.parametrize("governed", [False, True], ids=["stock", "governed"])
async def test_one_db_connection_per_request(governed, governor, probed):
    """With CONN_MAX_AGE=0 stock Django opens one connection per request: its thread-sensitive calls
    share a thread, so the view reuses the connection a request_started receiver opened, and
    request_finished closes it. A governed request must do the same."""
    opened = []

    def on_connection_created(sender, connection, **kwargs):
        opened.append((REQUEST_ID.get(), connection.alias))

    def query_at_start(sender, **kwargs):
        Item.objects.exists()

    if governed:
        governor(2)
    connection_created.connect(on_connection_created, dispatch_uid="threadgov-tests-created")
    signals.request_started.connect(query_at_start, dispatch_uid="threadgov-tests-query-at-start")
    try:
        responses = await run_many(ASGIHandler(), "/orm/", 20)
    finally:
        signals.request_started.disconnect(dispatch_uid="threadgov-tests-query-at-start")
        connection_created.disconnect(dispatch_uid="threadgov-tests-created")

    assert_ok(responses, ORM_BODY)
    assert_one_thread_per_request(probed, responses)
    per_request = {r.request_id: opened.count((r.request_id, "default")) for r in responses}
    assert set(per_request.values()) == {1}, per_request

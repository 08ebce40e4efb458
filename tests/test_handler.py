"""threadgov.asgi.ASGIHandler: Django's ASGI handler with one thread-sensitive call per request.

Driven in-process like test_django_asgi.py; synchronisation by events and gates only.
"""

import asyncio
import threading

import django
import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.test import override_settings

from djangoapp import ITEM_NAMES
from djangoapp.client import run_many, start
from djangoapp.probe import STAGES, TIMEOUT, AsyncGate, Gate
from djangoapp.testing import assert_ok, settled, until
from threadgov.asgi import ASGIHandler, get_asgi_application

pytestmark = pytest.mark.timeout(60)

ORM_BODY = f"{len(ITEM_NAMES)} True"
SYNC_MIDDLEWARE = ["djangoapp.middleware.SyncProbeMiddleware"]
ASYNC_MIDDLEWARE = ["djangoapp.middleware.ProbeMiddleware"]
# Django 4.2's send_response() closes the response itself: one more call, after the body.
CLOSES_AFTER_SENDING = django.VERSION < (5, 0)
CALLS_PER_REQUEST = 2 if CLOSES_AFTER_SENDING else 1


def assert_steps_in_order_on_one_thread(probe, responses, stages=STAGES):
    assert probe.errors == []
    for r in responses:
        assert probe.stages_of(r.request_id) == list(stages), r.request_id
        assert len(probe.threads_of(r.request_id)) == 1, probe.calls[r.request_id]


def test_get_asgi_application_returns_the_handler():
    assert type(get_asgi_application()) is ASGIHandler
    assert issubclass(ASGIHandler, DjangoASGIHandler)


async def test_only_http_is_handled():
    with pytest.raises(ValueError, match="Django can only handle ASGI/HTTP connections, not websocket"):
        await ASGIHandler()({"type": "websocket"}, None, None)


@pytest.mark.parametrize("middleware", [SYNC_MIDDLEWARE, ASYNC_MIDDLEWARE], ids=["sync-mw", "async-mw"])
async def test_a_request_is_one_governed_call(governor, probed, middleware):
    stats = governor(4)
    with override_settings(MIDDLEWARE=middleware):
        handler = ASGIHandler()
        control = DjangoASGIHandler()
    responses = await run_many(handler, "/orm/", 200)
    assert_ok(responses, ORM_BODY)
    assert_steps_in_order_on_one_thread(probed, responses)
    used = probed.all_threads()
    assert 1 <= len(used) <= 4 and all(n.startswith("threadgov-") for n in used.values())
    after = await settled()
    assert after.submitted == 200 * CALLS_PER_REQUEST
    assert (after.threads_alive, after.failed, after.queued, after.leased) <= (4, 0, 0, 0)
    assert dict(after.db_connections).get("default", 0) == 0  # CONN_MAX_AGE=0: closed

    # Control: Django's handler makes a call per step (request_started, the middleware's two with
    # sync middleware or the view with async-only middleware..., response.close).
    before = stats().submitted
    assert_ok(await run_many(control, "/orm/", 10, prefix="control"), ORM_BODY)
    assert stats().submitted - before >= 10 * 3


async def test_request_finished_comes_before_the_body_only_for_in_memory_responses(governor, probed):
    governor(2)
    with override_settings(MIDDLEWARE=SYNC_MIDDLEWARE):
        handler = ASGIHandler()
    plain = await start(handler, "/orm/", "plain", mark_sent=True)
    streamed = await start(handler, "/stream/", "streamed", mark_sent=True)
    assert (plain.status, plain.text) == (200, ORM_BODY)
    assert (streamed.status, streamed.text) == (200, "one two three")
    steps = ["request_started", "middleware_in", "view", "middleware_out"]
    if CLOSES_AFTER_SENDING:
        assert probed.stages_of("plain") == steps + ["body_sent", "request_finished"]
    else:
        assert probed.stages_of("plain") == steps + ["request_finished", "body_sent"]
    # Streaming: closed after its body, on the request's worker all the same.
    assert probed.stages_of("streamed") == steps + ["body_sent", "request_finished"]
    streamed_threads = {t for s, t, _ in probed.calls["streamed"] if s != "body_sent"}
    assert len(streamed_threads) == 1
    await settled()


async def test_many_streaming_responses_keep_one_thread_each(governor, probed):
    governor(2)
    with override_settings(MIDDLEWARE=SYNC_MIDDLEWARE):
        handler = ASGIHandler()
    responses = await run_many(handler, "/stream/", 100)
    assert_ok(responses, "one two three")
    assert_steps_in_order_on_one_thread(probed, responses)
    after = await settled()
    assert after.submitted == 200  # the call of the request, then response.close()
    assert after.threads_alive <= 2


async def test_the_fifth_request_waits_while_four_views_hold_every_worker(governor, probed):
    stats = governor(4)
    with override_settings(MIDDLEWARE=SYNC_MIDDLEWARE):
        handler = ASGIHandler()
    gate = Gate(4, asyncio.get_running_loop())
    probed.hold = gate
    tasks = [start(handler, "/block/", f"held{i}") for i in range(5)]
    await gate.wait_all()
    await until(lambda: stats().waiting_contexts == 1, "the fifth request to queue")
    assert (stats().busy, stats().threads_alive) == (4, 4)
    assert not any(task.done() for task in tasks)
    gate.open()
    responses = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert_ok(responses, "held")
    assert gate.arrived == 5
    assert_steps_in_order_on_one_thread(probed, responses)
    after = await settled()
    assert (after.queued, after.waiting_contexts, after.leased) == (0, 0, 0)


async def test_an_async_view_holds_its_worker_while_it_awaits(governor, probed):
    """The documented cost: in sync mode Django runs an async view on the loop while the request's
    worker waits for it, so the worker is busy, not merely leased."""
    stats = governor(1)
    with override_settings(MIDDLEWARE=SYNC_MIDDLEWARE):
        handler = ASGIHandler()
    slow = AsyncGate()
    probed.async_hold = slow
    waiting = start(handler, "/wait/", "slow")
    await asyncio.wait_for(slow.entered.wait(), TIMEOUT)
    assert (stats().busy, stats().threads_alive) == (1, 1)
    other = start(handler, "/orm/", "other")
    await until(lambda: stats().waiting_contexts == 1, "the other request to queue")
    slow.open()
    responses = await asyncio.wait_for(asyncio.gather(waiting, other), TIMEOUT)
    assert [(r.status, r.text) for r in responses] == [(200, "waited"), (200, ORM_BODY)]
    assert probed.stages_of("slow") == ["request_started", "middleware_in", "middleware_out",
                                        "request_finished"]
    assert len(probed.threads_of("slow")) == 1
    await settled()


async def test_an_enclosing_context_keeps_its_worker(governor, probed):
    """Inside a ThreadSensitiveContext opened around the handler, the request's calls are that
    context's: the handler must not end its lease early."""
    stats = governor(2)
    with override_settings(MIDDLEWARE=SYNC_MIDDLEWARE):
        handler = ASGIHandler()

    def name():
        return threading.current_thread().name

    async with ThreadSensitiveContext():
        before = await sync_to_async(name)()
        response = await start(handler, "/orm/", "inner")
        await until(lambda: stats().busy == 0, "the request's call to end")
        assert stats().leased == 1  # still the enclosing context's
        after = await sync_to_async(name)()
    assert (response.status, response.text) == (200, ORM_BODY)
    assert before == after == probed.calls["inner"][0][2]
    await settled()


async def test_uninstalled_it_serves_like_django(probed):
    with override_settings(MIDDLEWARE=SYNC_MIDDLEWARE):
        handler = ASGIHandler()
    responses = await run_many(handler, "/orm/", 20)
    assert_ok(responses, ORM_BODY)
    assert_steps_in_order_on_one_thread(probed, responses)
    assert not any(n.startswith("threadgov-") for n in probed.all_threads().values())

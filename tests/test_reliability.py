"""Back-pressure, queue timeouts, cancellation at shutdown, the watchdog and the ASGI middleware."""

import asyncio
import logging
import threading

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async

import threadgov
from djangoapp.probe import TIMEOUT
from djangoapp.testing import until
from threadgov._governor import current
from threadgov.asgi import TRY_AGAIN_LATER, GovernorMiddleware


def name():
    return threading.current_thread().name


@pytest.fixture
def gate():
    event = threading.Event()
    yield event
    event.set()  # never leave a worker blocked


def held(gate):
    return sync_to_async(gate.wait, thread_sensitive=False)(TIMEOUT)


async def test_full_queue_refuses_non_sensitive_calls(governor, gate):
    stats = governor(1, max_queue=2)
    ran = []
    holder = asyncio.ensure_future(held(gate))
    await until(lambda: stats().busy == 1, "the worker to be busy")
    queued = [asyncio.ensure_future(sync_to_async(ran.append, thread_sensitive=False)(i)) for i in range(2)]
    await until(lambda: stats().queued == 2, "two queued calls")
    with pytest.raises(threadgov.PoolSaturated, match="queue is full"):
        await sync_to_async(ran.append, thread_sensitive=False)("refused")
    assert stats().rejected == 1 and stats().queued == 2
    gate.set()
    await asyncio.wait_for(asyncio.gather(holder, *queued), TIMEOUT)
    assert ran == [0, 1]


async def test_full_queue_refuses_new_contexts_but_never_an_admitted_one(governor):
    stats = governor(1, max_queue=1)
    release = asyncio.Event()
    second_call = []

    async def admitted():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()
            await release.wait()
            second_call.append(await sync_to_async(name)())  # the queue is full: still runs

    async def request(label):
        async with ThreadSensitiveContext():
            return await sync_to_async(lambda: label)()

    first = asyncio.create_task(admitted())
    await until(lambda: stats().leased == 1, "the first context to hold the worker")
    waiting = asyncio.create_task(request("waits"))
    await until(lambda: stats().waiting_contexts == 1, "a waiting context")
    with pytest.raises(threadgov.PoolSaturated):
        await request("refused")
    release.set()
    assert await asyncio.wait_for(waiting, TIMEOUT) == "waits"
    await first
    assert second_call == ["threadgov-1"]
    assert stats().rejected == 1


async def test_max_queue_zero_refuses_whenever_no_thread_is_free(governor, gate):
    stats = governor(1, max_queue=0)
    holder = asyncio.ensure_future(held(gate))
    await until(lambda: stats().busy == 1, "the worker to be busy")
    with pytest.raises(threadgov.PoolSaturated):
        await sync_to_async(name, thread_sensitive=False)()
    gate.set()
    await holder
    assert (await sync_to_async(name, thread_sensitive=False)()) == "threadgov-1"


async def test_queue_timeout_expires_a_waiting_call_which_then_never_runs(governor, gate):
    stats = governor(1, queue_timeout=0.05)
    ran = []
    holder = asyncio.ensure_future(held(gate))
    await until(lambda: stats().busy == 1, "the worker to be busy")
    with pytest.raises(threadgov.PoolSaturated, match="queue_timeout"):
        await asyncio.wait_for(sync_to_async(ran.append, thread_sensitive=False)("late"), TIMEOUT)
    assert stats().rejected == 1 and stats().queued == 0
    gate.set()
    await holder
    await sync_to_async(ran.append, thread_sensitive=False)("after")
    assert ran == ["after"]


async def one_worker_held_and_three_calls_queued(gate, ran):
    """install(max_threads=1); the worker held by ``gate``; three calls appending to ``ran`` queued."""
    threadgov.install(max_threads=1)
    holder = asyncio.ensure_future(held(gate))
    await until(lambda: threadgov.stats().busy == 1, "the worker to be busy")
    queued = [asyncio.ensure_future(sync_to_async(ran.append, thread_sensitive=False)(i)) for i in range(3)]
    await until(lambda: threadgov.stats().queued == 3, "three queued calls")
    return holder, queued


async def test_uninstall_can_cancel_queued_calls(gate):
    try:
        ran = []
        holder, queued = await one_worker_held_and_three_calls_queued(gate, ran)
        governor = current()
        result = []

        def stop():  # uninstall() blocks until the held worker exits
            result.append(threadgov.uninstall(timeout=TIMEOUT, cancel_queued=True))

        stopper = threading.Thread(target=stop)
        stopper.start()
        for call in queued:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, TIMEOUT)
        gate.set()  # the running call finishes; the worker exits
        await holder
        stopper.join(TIMEOUT)
        assert result == [True]
        assert ran == []
        assert governor.stats().cancelled == 3
    finally:
        gate.set()
        threadgov.uninstall()


async def test_uninstall_drains_queued_calls_by_default(gate):
    try:
        ran = []
        holder, queued = await one_worker_held_and_three_calls_queued(gate, ran)
        stopper = threading.Thread(target=threadgov.uninstall, kwargs={"timeout": TIMEOUT})
        stopper.start()
        gate.set()
        await asyncio.wait_for(asyncio.gather(holder, *queued), TIMEOUT)
        stopper.join(TIMEOUT)
        assert ran == [0, 1, 2]
        assert not [t for t in threading.enumerate() if t.name.startswith("threadgov-")]
    finally:
        gate.set()
        threadgov.uninstall()


def held_in_a_slow_call(gate, entered):
    entered.set()
    gate.wait(TIMEOUT)


async def test_a_slow_call_is_logged_once_with_its_stack(governor, gate, caplog):
    stats = governor(1, slow_call_threshold=3600)  # the watchdog thread never fires by itself
    watchdog = current()._watchdog
    entered = threading.Event()
    call = asyncio.ensure_future(sync_to_async(held_in_a_slow_call, thread_sensitive=False)(gate, entered))
    await until(entered.is_set, "the call to start")
    real_clock = watchdog._clock
    watchdog._clock = lambda: real_clock() + 3600  # an injected clock: an hour later
    with caplog.at_level(logging.WARNING, logger="threadgov"):
        first = watchdog.check()
        second = watchdog.check()
    slow = [r for r in caplog.records if "slow call" in r.getMessage()]
    assert len(slow) == 1 and len(first) == 1 and second == []
    assert "held_in_a_slow_call" in slow[0].getMessage() and "threadgov-1" in slow[0].getMessage()
    assert stats().slow_calls == 1
    gate.set()
    await call


async def test_a_stalled_pool_is_reported_once(governor, gate, caplog):
    stats = governor(1, slow_call_threshold=3600)
    watchdog = current()._watchdog
    holder = asyncio.ensure_future(held(gate))
    await until(lambda: stats().busy == 1, "the worker to be busy")
    queued = asyncio.ensure_future(sync_to_async(name, thread_sensitive=False)())
    await until(lambda: stats().queued == 1, "a queued call")
    real_clock = watchdog._clock
    watchdog._clock = lambda: real_clock() + 3600
    with caplog.at_level(logging.WARNING, logger="threadgov"):
        watchdog.check()
        watchdog.check()
    reports = [r for r in caplog.records if "saturated" in r.getMessage()]
    assert len(reports) == 1
    assert "threadgov-1: running a call" in reports[0].getMessage()
    gate.set()
    await asyncio.wait_for(asyncio.gather(holder, queued), TIMEOUT)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("THREADGOV_MAX_QUEUE", "abc"),
        ("THREADGOV_MAX_QUEUE", "-1"),
        ("THREADGOV_MAX_QUEUE", "1.5"),
        ("THREADGOV_MAX_QUEUE", ""),
        ("THREADGOV_MAX_QUEUE", "9" * 50),
        ("THREADGOV_QUEUE_TIMEOUT", "0"),
        ("THREADGOV_QUEUE_TIMEOUT", "-2"),
        ("THREADGOV_QUEUE_TIMEOUT", "soon"),
        ("THREADGOV_QUEUE_TIMEOUT", "nan"),
        ("THREADGOV_QUEUE_TIMEOUT", "1e9"),
        ("THREADGOV_SLOW_CALL", "inf"),
        ("THREADGOV_SLOW_CALL", " "),
    ],
)
def test_bad_limit_environment_variables_name_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(threadgov.ConfigurationError) as info:
        threadgov.install(max_threads=2)
    message = str(info.value)
    assert variable in message and repr(value) in message and "\n" not in message
    with pytest.raises(threadgov.NotInstalledError):
        threadgov.stats()


def test_limit_environment_variables_apply_and_arguments_win(monkeypatch):
    monkeypatch.setenv("THREADGOV_MAX_QUEUE", " 16 ")
    monkeypatch.setenv("THREADGOV_QUEUE_TIMEOUT", "2.5")
    try:
        threadgov.install(max_threads=2)
        assert current().options.max_queue == 16 and current().options.queue_timeout == 2.5
        threadgov.uninstall()
        threadgov.install(max_threads=2, max_queue=4)
        assert current().options.max_queue == 4
    finally:
        threadgov.uninstall()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_queue": -1}, threadgov.ConfigurationError),
        ({"max_queue": 1.0}, TypeError),
        ({"queue_timeout": 0}, threadgov.ConfigurationError),
        ({"queue_timeout": float("nan")}, threadgov.ConfigurationError),
        ({"queue_timeout": "5"}, TypeError),
        ({"slow_call_threshold": -1}, threadgov.ConfigurationError),
        ({"close_connections": 1}, TypeError),
    ],
)
def test_bad_limit_arguments(kwargs, error):
    with pytest.raises(error) as info:
        threadgov.install(max_threads=2, **kwargs)
    assert next(iter(kwargs)) in str(info.value)


# -- the ASGI middleware ----------------------------------------------------------------------


class Collector:
    def __init__(self):
        self.messages = []

    async def __call__(self, message):
        self.messages.append(message)

    @property
    def status(self):
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def headers(self):
        return dict(next(m["headers"] for m in self.messages if m["type"] == "http.response.start"))


def http_scope(path="/"):
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}


async def no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


async def refusing_app(scope, receive, send):
    raise threadgov.PoolSaturated("the queue is full")


async def test_middleware_answers_503_with_retry_after():
    send = Collector()
    await GovernorMiddleware(refusing_app, retry_after=3)(http_scope(), no_body, send)
    assert send.status == 503 and send.headers[b"retry-after"] == b"3"


async def test_middleware_closes_a_refused_websocket_with_1013():
    send = Collector()

    async def receive():
        return {"type": "websocket.connect"}

    await GovernorMiddleware(refusing_app)({"type": "websocket", "path": "/ws"}, receive, send)
    assert send.messages == [{"type": "websocket.close", "code": TRY_AGAIN_LATER}]


async def test_middleware_serves_stats_when_asked(governor):
    governor(2)
    send = Collector()
    await GovernorMiddleware(refusing_app, stats_path="/_threadgov/stats")(
        http_scope("/_threadgov/stats"), no_body, send
    )
    assert send.status == 200
    body = b"".join(m.get("body", b"") for m in send.messages)
    assert b'"size": 2' in body


async def test_middleware_uninstalls_at_lifespan_shutdown_for_an_app_without_lifespan():
    from django.core.handlers.asgi import ASGIHandler

    threadgov.install(max_threads=2)
    try:
        await sync_to_async(name)()  # a worker exists
        messages = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            messages.put_nowait({"type": kind})
        send = Collector()
        await asyncio.wait_for(
            GovernorMiddleware(ASGIHandler())({"type": "lifespan"}, messages.get, send), TIMEOUT
        )
        assert [m["type"] for m in send.messages] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert current() is None
        assert not [t for t in threading.enumerate() if t.name.startswith("threadgov-")]
    finally:
        threadgov.uninstall()


async def test_a_client_leaving_while_its_request_waits_for_a_worker_frees_its_place(gate):
    from django.core import signals
    from django.core.handlers.asgi import ASGIHandler

    threadgov.install(max_threads=1)
    started_requests = []

    def on_started(sender, scope=None, **kwargs):
        started_requests.append(dict(scope["headers"]).get(b"x-req"))

    signals.request_started.connect(on_started, dispatch_uid="threadgov-tests-left")
    try:
        holder = asyncio.ensure_future(held(gate))  # the only worker is busy
        await until(lambda: threadgov.stats().busy == 1, "the worker to be busy")
        leave = asyncio.Event()
        body_sent = []

        async def receive():
            if not body_sent:
                body_sent.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await leave.wait()
            return {"type": "http.disconnect"}

        scope = dict(http_scope("/orm/"), headers=[(b"host", b"testserver"), (b"x-req", b"left")])
        send = Collector()
        request = asyncio.ensure_future(GovernorMiddleware(ASGIHandler())(scope, receive, send))
        await until(lambda: threadgov.stats().queued == 1, "the request to wait for the worker")
        leave.set()
        await asyncio.wait_for(request, TIMEOUT)
        gate.set()
        await holder
        await sync_to_async(name)()  # the worker is free again and has passed the dropped call
        assert started_requests == [] and send.messages == []
        assert threadgov.stats().cancelled == 1
    finally:
        signals.request_started.disconnect(dispatch_uid="threadgov-tests-left")
        gate.set()
        threadgov.uninstall()


async def test_a_running_call_whose_caller_is_cancelled_finishes_and_is_counted_as_dropped(governor, gate):
    stats = governor(1)
    finished = []
    entered = threading.Event()

    def work():
        entered.set()
        gate.wait(TIMEOUT)
        finished.append(True)

    call = asyncio.ensure_future(sync_to_async(work, thread_sensitive=False)())
    await until(entered.is_set, "the call to start")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    gate.set()
    assert (await sync_to_async(name, thread_sensitive=False)()) == "threadgov-1"
    assert finished == [True]
    assert stats().dropped == 1 and stats().cancelled == 0 and stats().completed == 2

"""Channels consumers under the governor (threadgov/_channels.py).

Each consumer instance runs in a serial context: its thread-sensitive calls (sync handlers,
``database_sync_to_async``) run one at a time and in order, on its home worker; different consumers
run in parallel on up to N workers. Consumers are driven in-process with Channels'
``WebsocketCommunicator``. Parallelism is shown with barriers, never with timings, except in the
acceptance test at the end, which the issue states in seconds (upper bounds only, loosely).
"""

import asyncio
import inspect
import os
import sys
import threading
import time
from collections import defaultdict

import pytest

channels = pytest.importorskip("channels")

from asgiref.sync import (  # noqa: E402
    SyncToAsync,
    ThreadSensitiveContext,
    async_to_sync,
    sync_to_async,
)
from channels.consumer import AsyncConsumer, SyncConsumer  # noqa: E402
from channels.db import database_sync_to_async  # noqa: E402
from channels.generic.websocket import (  # noqa: E402
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.test import override_settings  # noqa: E402

import threadgov  # noqa: E402
from threadgov import _governor  # noqa: E402
from threadgov._channels import channels_governor, install_channels, uninstall_channels  # noqa: E402

pytestmark = [
    pytest.mark.timeout(120),
    # channels_redis 4.2 (the version that supports asgiref 3.8) calls a Channels 4.2 API that
    # Channels itself deprecates.
    pytest.mark.filterwarnings("ignore:valid_(channel|group)_name is deprecated:DeprecationWarning"),
]

TIMEOUT = 10  # seconds; a safety net for a broken build, never a synchronisation


def governed_worker(name: str) -> bool:
    return name.startswith("threadgov-")


# -- recording what the consumers' calls did -------------------------------------------------------


class Calls:
    """Every recorded call: consumer id, sequence number, thread, start and end (monotonic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.records = []  # (cid, seq, thread name, thread ident, start, end)
        self._active = defaultdict(int)
        self.overlaps = []  # consumers seen with two calls running at once

    def run(self, cid: str, seq, work=lambda: None):
        thread = threading.current_thread()
        with self._lock:
            self._active[cid] += 1
            if self._active[cid] > 1:
                self.overlaps.append(cid)
        start = time.monotonic()
        try:
            return work()
        finally:
            end = time.monotonic()
            with self._lock:
                self._active[cid] -= 1
                self.records.append((cid, seq, thread.name, thread.ident, start, end))

    def of(self, cid: str) -> list:
        with self._lock:
            return [r for r in self.records if r[0] == cid]

    def seqs(self, cid: str) -> list:
        return [r[1] for r in sorted(self.of(cid), key=lambda r: r[4])]

    def threads(self) -> set:
        with self._lock:
            return {r[2] for r in self.records}

    def assert_serial(self, cid: str) -> None:
        """The consumer's calls never overlapped in time (each started after the previous ended)."""
        spans = sorted((r[4], r[5]) for r in self.of(cid))
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"{cid}: calls overlap: {spans}"


calls = Calls()
barrier_box = {"barrier": None}  # a threading.Barrier the handlers meet at, when a test sets one


def meet() -> None:
    barrier = barrier_box["barrier"]
    if barrier is not None:
        barrier.wait(TIMEOUT)


# -- consumers ------------------------------------------------------------------------------------


class EchoSync(WebsocketConsumer):
    """Sync consumer: each text frame is one handler call on a worker thread."""

    def receive(self, text_data=None, bytes_data=None):
        cid, seq = text_data.split(":")
        calls.run(cid, int(seq), meet)
        self.send(text_data=f"{cid}:{seq}:{threading.current_thread().name}")


class CountJson(JsonWebsocketConsumer):
    """Sync JSON consumer doing ORM work (the default SQLite database of the test project)."""

    def receive_json(self, content, **kwargs):
        from djangoapp.models import Item

        def work():
            return Item.objects.count(), Item.objects.filter(name=content["name"]).exists()

        count, exists = calls.run(content["cid"], content["seq"], work)
        self.send_json({"seq": content["seq"], "count": count, "exists": exists})


class GatherAsync(AsyncWebsocketConsumer):
    """Async consumer: each frame fires 4 database_sync_to_async calls at once (asyncio.gather)."""

    async def receive(self, text_data=None, bytes_data=None):
        cid = text_data

        def work(seq):
            return calls.run(cid, seq, lambda: threading.current_thread().name)

        names = await asyncio.gather(*(database_sync_to_async(work)(seq) for seq in range(4)))
        await self.send(text_data=",".join(names))


class Room(JsonWebsocketConsumer):
    """Sync consumer on a channel layer group: joins at connect, broadcasts what it receives."""

    group = "threadgov-room"

    def connect(self):
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        self.accept()

    def disconnect(self, code):
        async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def receive_json(self, content, **kwargs):
        calls.run(content["cid"], ("send", content["seq"]))
        async_to_sync(self.channel_layer.group_send)(
            self.group, {"type": "room.message", "text": f"{content['cid']}:{content['seq']}"}
        )

    def room_message(self, event):
        calls.run(self.scope["cid"], ("got", event["text"]))
        self.send_json({"text": event["text"]})


class SleepAsync(AsyncWebsocketConsumer):
    """The acceptance consumer: each frame is one 100 ms database_sync_to_async call."""

    async def receive(self, text_data=None, bytes_data=None):
        cid, seq = text_data.split(":")

        def work():
            time.sleep(0.1)  # sleep-ok: simulated database work, the quantity under test
            return threading.current_thread().name

        name = await database_sync_to_async(calls.run)(cid, int(seq), work)
        await self.send(text_data=f"{seq}:{name}")


class ContextProbe(WebsocketConsumer):
    """Replies whether its handler ran inside a ThreadSensitiveContext."""

    def receive(self, text_data=None, bytes_data=None):
        inside = SyncToAsync.thread_sensitive_context.get(None) is not None
        self.send(text_data="context" if inside else "none")


async def probe_context() -> str:
    communicator = await connect(ContextProbe.as_asgi())
    await communicator.send_to(text_data="?")
    reply = await communicator.receive_from(timeout=TIMEOUT)
    await communicator.disconnect(timeout=TIMEOUT)
    return reply


class Hold(WebsocketConsumer):
    """Sync consumer whose handler blocks until the test releases it."""

    release = None  # a threading.Event, set by the test
    entered = None  # an asyncio.Event of the test's loop
    loop = None

    def receive(self, text_data=None, bytes_data=None):
        Hold.loop.call_soon_threadsafe(Hold.entered.set)
        if not Hold.release.wait(TIMEOUT):
            raise RuntimeError("not released")
        calls.run(text_data, 0)
        self.send(text_data="done")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def governed():
    """install(max_threads) plus the Channels hook for one test; everything undone afterwards."""
    import channels.db

    calls.reset()
    barrier_box["barrier"] = None
    # Channels' ApplicationCommunicator patches channels.db.close_old_connections with a no-op
    # around each await (mock.patch); interleaved communicators can leave the no-op behind.
    close_old_connections = channels.db.close_old_connections

    def install(max_threads: int, **kwargs):
        threadgov.install(max_threads=max_threads, **kwargs)
        governor = _governor.current()
        assert install_channels(governor)
        return governor

    try:
        yield install
    finally:
        uninstall_channels()
        channels.db.close_old_connections = close_old_connections
        barrier_box["barrier"] = None
        assert threadgov.uninstall(timeout=TIMEOUT), "workers still running after uninstall()"
        left = [t.name for t in threading.enumerate() if governed_worker(t.name)]
        assert not left, f"threadgov workers alive after uninstall(): {left}"
        assert AsyncConsumer.__dict__["__call__"] is ORIGINAL_CALL


ORIGINAL_CALL = AsyncConsumer.__dict__["__call__"]


async def connect(app, path: str = "/ws/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app, path)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def until(predicate, what: str) -> None:
    """Yield to the loop until predicate() holds: only for the pool's own bookkeeping, which worker
    threads update just after a call's result is delivered."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


# -- installing and uninstalling -------------------------------------------------------------------


async def test_install_wraps_call_and_uninstall_restores_it_exactly():
    original = AsyncConsumer.__dict__["__call__"]
    assert "__call__" not in SyncConsumer.__dict__  # every consumer class inherits this one
    assert await probe_context() == "none"  # stock Channels: no context
    threadgov.install(max_threads=2)
    try:
        governor = _governor.current()
        assert install_channels(governor)
        wrapped = AsyncConsumer.__dict__["__call__"]
        assert wrapped is not original and wrapped.__wrapped__ is original
        assert inspect.iscoroutinefunction(wrapped)
        assert list(inspect.signature(wrapped).parameters) == ["self", "scope", "receive", "send"]
        assert channels_governor() is governor
        assert await probe_context() == "context"
        # Installing again changes nothing but the governor.
        assert install_channels(governor)
        assert AsyncConsumer.__dict__["__call__"] is wrapped
        uninstall_channels()
        assert AsyncConsumer.__dict__["__call__"] is original
        assert channels_governor() is None
        uninstall_channels()  # twice: nothing to do
        assert AsyncConsumer.__dict__["__call__"] is original
    finally:
        uninstall_channels()
        assert threadgov.uninstall(timeout=TIMEOUT)


async def test_a_wrapper_installed_on_top_is_left_in_place_and_ours_passes_through():
    original = AsyncConsumer.__dict__["__call__"]
    # 2 threads: the pass-through consumer's calls lease one to the shared lane for good.
    threadgov.install(max_threads=2)
    try:
        install_channels(_governor.current())
        ours = AsyncConsumer.__dict__["__call__"]

        async def theirs(self, scope, receive, send):
            return await ours(self, scope, receive, send)

        AsyncConsumer.__call__ = theirs
        uninstall_channels()
        assert AsyncConsumer.__dict__["__call__"] is theirs  # not clobbered
        assert channels_governor() is None
        assert await probe_context() == "none"  # ours, inside theirs, passes straight through
        install_channels(_governor.current())  # ours is still in the chain: not wrapped twice
        assert AsyncConsumer.__dict__["__call__"] is theirs
        assert await probe_context() == "context"
        uninstall_channels()
    finally:
        AsyncConsumer.__call__ = original
        uninstall_channels()
        # Forget the wrapper that was left inside theirs, so that later installs patch afresh.
        import threadgov._channels as module

        module._target = module._original = module._wrapper = None
        assert threadgov.uninstall(timeout=TIMEOUT)


def test_without_channels_install_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "channels.consumer", None)  # import raises ImportError
    assert install_channels(object()) is False
    assert channels_governor() is None
    uninstall_channels()
    monkeypatch.undo()
    assert AsyncConsumer.__dict__["__call__"] is ORIGINAL_CALL


# -- behaviour -------------------------------------------------------------------------------------


async def test_sync_consumers_run_in_parallel_each_one_serially_in_order(governed):
    governed(3)
    # Three handlers of three different consumers must be running at once to pass the barrier:
    # stock Channels (one thread for every consumer) would time out here.
    barrier_box["barrier"] = threading.Barrier(3)
    consumers = [await connect(EchoSync.as_asgi()) for _ in range(6)]
    for i, communicator in enumerate(consumers):
        for seq in range(3):  # queued at once: the consumer handles them one by one
            await communicator.send_to(text_data=f"c{i}:{seq}")
    for i, communicator in enumerate(consumers):
        replies = [await communicator.receive_from(timeout=TIMEOUT) for _ in range(3)]
        assert [r.rsplit(":", 1)[0] for r in replies] == [f"c{i}:{seq}" for seq in range(3)]
        assert all(governed_worker(r.rsplit(":", 1)[1]) for r in replies), replies
    for communicator in consumers:
        await communicator.disconnect(timeout=TIMEOUT)

    assert calls.overlaps == []
    for i in range(6):
        assert calls.seqs(f"c{i}") == [0, 1, 2]
        calls.assert_serial(f"c{i}")
    threads = calls.threads()
    assert len(threads) == 3 and all(governed_worker(n) for n in threads), threads
    stats = threadgov.stats()
    assert stats.threads_alive <= 3 and stats.peak_busy == 3
    # Each consumer's lane was released when it ended: no worker stays leased, nothing queued.
    await until(lambda: threadgov.stats().busy == 0, "the workers to finish their bookkeeping")
    stats = threadgov.stats()
    assert (stats.leased, stats.queued, stats.waiting_contexts) == (0, 0, 0)


async def test_json_websocket_consumers_do_orm_work_on_at_most_n_threads(governed):
    governed(2)
    consumers = [await connect(CountJson.as_asgi()) for _ in range(8)]
    for i, communicator in enumerate(consumers):
        for seq in range(3):
            await communicator.send_json_to({"cid": f"j{i}", "seq": seq, "name": "alpha"})
    for communicator in consumers:
        replies = [await communicator.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
        assert replies == [{"seq": seq, "count": 3, "exists": True} for seq in range(3)]
        await communicator.disconnect(timeout=TIMEOUT)

    assert calls.overlaps == []
    for i in range(8):
        assert calls.seqs(f"j{i}") == [0, 1, 2]
    threads = calls.threads()
    assert 1 <= len(threads) <= 2 and all(governed_worker(n) for n in threads), threads
    await until(lambda: threadgov.stats().busy == 0, "the workers to finish their bookkeeping")
    stats = threadgov.stats()
    assert stats.threads_alive <= 2 and stats.leased == 0
    assert dict(stats.db_connections).get("default", 0) == 0  # CONN_MAX_AGE=0: closed after use


async def test_async_consumer_concurrent_database_calls_run_serially_in_submission_order(governed):
    governed(4)
    consumers = [await connect(GatherAsync.as_asgi()) for _ in range(6)]
    for i, communicator in enumerate(consumers):
        await communicator.send_to(text_data=f"g{i}")
    for communicator in consumers:
        names = (await communicator.receive_from(timeout=TIMEOUT)).split(",")
        assert len(names) == 4 and all(governed_worker(n) for n in names), names
        await communicator.disconnect(timeout=TIMEOUT)

    assert calls.overlaps == []
    for i in range(6):
        assert calls.seqs(f"g{i}") == [0, 1, 2, 3]
        calls.assert_serial(f"g{i}")
    assert len(calls.threads()) <= 4


@pytest.fixture(params=["memory", "redis"])
def channel_layer(request):
    """CHANNEL_LAYERS for one test: Channels' in-memory layer, or channels_redis on local Redis."""
    if request.param == "memory":
        config = {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    else:
        pytest.importorskip("channels_redis", reason="channels_redis is not installed")
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        except redis.exceptions.RedisError as exc:
            pytest.skip(f"Redis unreachable at 127.0.0.1:6379 ({exc})")
        # socket_timeout=None: redis-py 8 defaults it to 5 s, which breaks channels_redis's
        # blocking BZPOPMIN (django/channels_redis#422), with or without threadgov.
        host = {"address": "redis://127.0.0.1:6379", "socket_timeout": None}
        config = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [host], "prefix": f"threadgov-test-{os.getpid()}"},
        }
    with override_settings(CHANNEL_LAYERS={"default": config}):
        yield request.param


async def test_channel_layer_groups_with_sync_consumers(governed, channel_layer):
    from channels.layers import get_channel_layer

    governed(2)
    count = 6
    consumers = []
    for i in range(count):
        communicator = WebsocketCommunicator(Room.as_asgi(), "/ws/")
        communicator.scope["cid"] = f"r{i}"
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        consumers.append(communicator)
    try:
        for i, communicator in enumerate(consumers):
            await communicator.send_json_to({"cid": f"r{i}", "seq": 0})
        expected = sorted(f"r{i}:0" for i in range(count))
        for communicator in consumers:
            got = [
                (await communicator.receive_json_from(timeout=TIMEOUT))["text"] for _ in range(count)
            ]
            assert sorted(got) == expected
            assert await communicator.receive_nothing(timeout=0.05)
    finally:
        for communicator in consumers:
            await communicator.disconnect(timeout=TIMEOUT)
        layer = get_channel_layer()
        await layer.flush()
        if hasattr(layer, "close_pools"):
            await layer.close_pools()

    assert calls.overlaps == []
    threads = calls.threads()
    assert 1 <= len(threads) <= 2 and all(governed_worker(n) for n in threads), threads
    for i in range(count):
        assert len(calls.of(f"r{i}")) == 1 + count  # its own send, then every broadcast
        calls.assert_serial(f"r{i}")


async def test_a_cancelled_consumer_releases_its_lane(governed):
    governed(1)
    Hold.release, Hold.entered = threading.Event(), asyncio.Event()
    Hold.loop = asyncio.get_running_loop()
    held = await connect(Hold.as_asgi())
    await held.send_to(text_data="held")
    await asyncio.wait_for(Hold.entered.wait(), TIMEOUT)
    # The only worker runs the held consumer's handler; cancel the consumer meanwhile.
    held.future.cancel()
    Hold.release.set()
    with pytest.raises(asyncio.CancelledError):
        await held.future
    # Its call finishes (threads cannot be interrupted), then its lane gives the worker back.
    await until(lambda: threadgov.stats().busy == 0 and threadgov.stats().leased == 0, "release")
    other = await connect(EchoSync.as_asgi())
    await other.send_to(text_data="after:0")
    assert (await other.receive_from(timeout=TIMEOUT)).startswith("after:0:threadgov-")
    await other.disconnect(timeout=TIMEOUT)


async def test_consumer_survives_uninstall_and_later_consumers_run_stock(governed):
    governor = governed(2)
    communicator = await connect(EchoSync.as_asgi())
    await communicator.send_to(text_data="u:0")
    assert (await communicator.receive_from(timeout=TIMEOUT)).startswith("u:0:threadgov-")

    uninstall_channels()
    assert threadgov.uninstall(timeout=TIMEOUT)
    # The running consumer goes on, now on asgiref's stock executors.
    await communicator.send_to(text_data="u:1")
    reply = await communicator.receive_from(timeout=TIMEOUT)
    assert reply.startswith("u:1:") and not governed_worker(reply.split(":")[2])
    await communicator.disconnect(timeout=TIMEOUT)
    later = await connect(EchoSync.as_asgi())
    await later.send_to(text_data="v:0")
    reply = await later.receive_from(timeout=TIMEOUT)
    assert not governed_worker(reply.split(":")[2])
    await later.disconnect(timeout=TIMEOUT)
    assert governor is not None and channels_governor() is None


async def test_a_consumer_inside_an_outer_context_uses_that_context(governed):
    governed(2)
    async with ThreadSensitiveContext():
        outer = await sync_to_async(lambda: threading.current_thread().name)()
        app = EchoSync.as_asgi()
        communicator = WebsocketCommunicator(app, "/ws/")
        # asgiref's ApplicationCommunicator starts the app in an empty context; start it in ours.
        communicator._future = asyncio.ensure_future(
            app(communicator.scope, communicator.input_queue.get, communicator.output_queue.put)
        )
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        await communicator.send_to(text_data="o:0")
        reply = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect(timeout=TIMEOUT)
    # The outer context is a request-affinity context: it kept its worker for the consumer's call.
    assert reply == f"o:0:{outer}"


# -- PostgreSQL: at most N backends for any number of consumers ------------------------------------


class PgJson(JsonWebsocketConsumer):
    def receive_json(self, content, **kwargs):
        from django.db import connections

        def work():
            with connections["pg"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                return cursor.fetchone()[0]

        pid = calls.run(content["cid"], content["seq"], work)
        self.send_json({"seq": content["seq"], "pid": pid})


@pytest.mark.postgres
async def test_consumers_share_at_most_n_postgres_backends_closed_by_uninstall(governed):
    psycopg = pytest.importorskip("psycopg")
    from djangoapp import PG_APPLICATION_NAME, PG_PARAMS

    try:
        monitor = psycopg.connect(**PG_PARAMS, autocommit=True, connect_timeout=5,
                                  application_name=f"threadgov-tests-monitor-{os.getpid()}")
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable ({' '.join(str(exc).split())})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the server must be running", pytrace=False)
        pytest.skip(reason)

    def backends() -> set:
        rows = monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (PG_APPLICATION_NAME,)
        ).fetchall()
        return {pid for (pid,) in rows}

    def wait_none() -> set:
        deadline = time.monotonic() + TIMEOUT
        while (left := backends()) and time.monotonic() < deadline:
            time.sleep(0.01)  # sleep-ok: polls the server, which sends no event
        return left

    try:
        assert wait_none() == set(), "backends of this process left by an earlier test"
        governed(3)
        consumers = [await connect(PgJson.as_asgi()) for _ in range(20)]
        for i, communicator in enumerate(consumers):
            for seq in range(2):
                await communicator.send_json_to({"cid": f"p{i}", "seq": seq})
        pids = set()
        for communicator in consumers:
            replies = [await communicator.receive_json_from(timeout=TIMEOUT) for _ in range(2)]
            assert [r["seq"] for r in replies] == [0, 1]
            pids.update(r["pid"] for r in replies)
        live = backends()
        for communicator in consumers:
            await communicator.disconnect(timeout=TIMEOUT)
        assert 1 <= len(pids) <= 3 and live <= pids, (pids, live)
        assert threadgov.uninstall(timeout=TIMEOUT)
        assert wait_none() == set()
    finally:
        monitor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (PG_APPLICATION_NAME,),
        )
        monitor.close()


# -- acceptance (ISSUE 7) --------------------------------------------------------------------------


async def run_sleepers(consumers: int, calls_each: int) -> float:
    """``consumers`` websocket consumers, each sending ``calls_each`` frames at once; every frame
    is one 100 ms database_sync_to_async call. Returns the seconds from first send to last reply."""
    communicators = [await connect(SleepAsync.as_asgi()) for _ in range(consumers)]
    started = time.monotonic()

    async def one(i, communicator):
        for seq in range(calls_each):
            await communicator.send_to(text_data=f"a{i}:{seq}")
        replies = [await communicator.receive_from(timeout=30) for _ in range(calls_each)]
        assert [int(r.split(":")[0]) for r in replies] == list(range(calls_each))

    await asyncio.gather(*(one(i, c) for i, c in enumerate(communicators)))
    elapsed = time.monotonic() - started
    for communicator in communicators:
        await communicator.disconnect(timeout=TIMEOUT)
    assert calls.overlaps == []
    for i in range(consumers):
        assert calls.seqs(f"a{i}") == list(range(calls_each))
        calls.assert_serial(f"a{i}")
    return elapsed


async def test_acceptance_stock_control_serializes_every_consumer():
    """Stock Channels (no governor), reduced to 10 consumers x 2 calls: all 20 calls run on one
    thread, one at a time (the full 50 x 4 would take 20 s)."""
    assert _governor.current() is None
    calls.reset()
    elapsed = await run_sleepers(10, 2)
    threads = calls.threads()
    assert len(threads) == 1 and not any(governed_worker(n) for n in threads), threads
    spans = sorted((r[4], r[5]) for r in calls.records)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), "stock calls overlapped"
    assert elapsed >= 2.0, elapsed  # 20 calls of 100 ms, one after the other


async def test_acceptance_50_consumers_4_calls_each_on_8_threads(governed):
    governed(8)
    elapsed = await run_sleepers(50, 4)
    threads = calls.threads()
    assert len(calls.records) == 200
    assert 1 < len(threads) <= 8 and all(governed_worker(n) for n in threads), threads
    for i in range(50):  # each consumer's calls on one thread (run_sleepers checked the order)
        assert len({r[2] for r in calls.of(f"a{i}")}) == 1, calls.of(f"a{i}")
    stats = threadgov.stats()
    assert stats.threads_alive <= 8 and stats.peak_busy <= 8
    assert elapsed < 4.0, f"50 x 4 calls of 100 ms on 8 threads took {elapsed:.2f} s"

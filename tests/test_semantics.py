"""asgiref's promises under the governor: affinity, ordering, nesting, deadlock freedom,
cancellation, exceptions and contextvars. Synchronisation is by events and barriers only."""

import asyncio
import collections
import contextvars
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, async_to_sync, sync_to_async

import threadgov
from djangoapp.probe import TIMEOUT
from djangoapp.testing import until


def name():
    return threading.current_thread().name


async def test_context_keeps_one_thread_and_contexts_share_n(governor):
    governor(3)

    async def request():
        async with ThreadSensitiveContext():
            names = [await sync_to_async(name)() for _ in range(3)]
            await asyncio.sleep(0)
            names.append(await sync_to_async(name)())
        return names

    results = await asyncio.gather(*(request() for _ in range(40)))
    for names in results:
        assert len(set(names)) == 1
    used = {n for names in results for n in names}
    assert len(used) <= 3 and all(n.startswith("threadgov-") for n in used)
    assert threadgov.stats().threads_alive <= 3


async def test_waiting_contexts_are_served_in_fifo_order(governor):
    stats = governor(1)
    order = []
    release_first = asyncio.Event()

    async def first():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()  # leases the only worker
            await release_first.wait()

    async def later(label):
        async with ThreadSensitiveContext():
            await sync_to_async(order.append)(label)

    holder = asyncio.create_task(first())
    await until(lambda: stats().leased == 1, "the first context to lease the worker")
    tasks = []
    for i, label in enumerate("abcde", start=1):
        tasks.append(asyncio.create_task(later(label)))
        await until(lambda i=i: stats().waiting_contexts == i, f"{i} waiting contexts")
    assert order == []
    release_first.set()
    await asyncio.wait_for(asyncio.gather(holder, *tasks), TIMEOUT)
    assert order == list("abcde")


async def test_calls_outside_a_context_share_one_governed_thread(governor):
    governor(4)
    names = await asyncio.gather(*(sync_to_async(name)() for _ in range(20)))
    assert len(set(names)) == 1 and names[0].startswith("threadgov-")


async def test_non_sensitive_calls_are_bounded(governor):
    stats = governor(3)
    gate = threading.Event()

    def blocked():
        gate.wait(TIMEOUT)
        return name()

    calls = [asyncio.ensure_future(sync_to_async(blocked, thread_sensitive=False)()) for _ in range(30)]
    await until(lambda: stats().busy == 3 and stats().queued == 27, "3 busy, 27 queued")
    assert stats().threads_alive == 3
    gate.set()
    names = await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT)
    assert len(set(names)) <= 3 and all(n.startswith("threadgov-") for n in names)
    assert stats().completed == 30 and stats().peak_busy == 3 and stats().peak_queued == 27


async def test_loop_default_executor_is_governed(governor):
    governor(2)  # the loop is running: install() adopts it at once
    loop = asyncio.get_running_loop()
    names = await asyncio.gather(
        asyncio.to_thread(name),
        loop.run_in_executor(None, name),
        *(asyncio.to_thread(name) for _ in range(10)),
    )
    assert all(n.startswith("threadgov-") for n in names) and len(set(names)) <= 2


def test_loop_created_after_install_is_adopted_at_its_first_governed_call(governor):
    governor(2)

    async def main():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()
        return await asyncio.to_thread(name)

    assert asyncio.run(main()).startswith("threadgov-")


async def test_contexts_holding_every_worker_can_still_run_non_sensitive_calls(governor):
    stats = governor(2)
    all_leased = asyncio.Event()

    async def request():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()
            if stats().leased == 2:
                all_leased.set()
            await all_leased.wait()
            return await sync_to_async(name, thread_sensitive=False)()

    names = await asyncio.wait_for(asyncio.gather(request(), request()), TIMEOUT)
    assert all(n.startswith("threadgov-") for n in names)


async def test_blocked_workers_waiting_on_non_sensitive_calls_do_not_deadlock(governor):
    """Every worker sits in async_to_sync awaiting a non-sensitive call (e.g. DNS through the
    loop's default executor): the waiting threads run those calls themselves."""
    stats = governor(2)
    both_in = threading.Barrier(2, timeout=TIMEOUT)

    async def inner():
        loop = asyncio.get_running_loop()
        a = await sync_to_async(name, thread_sensitive=False)()
        b = await loop.run_in_executor(None, name)
        return a, b

    def view():
        both_in.wait()  # both workers are now busy
        return name(), async_to_sync(inner)()

    async def request():
        async with ThreadSensitiveContext():
            return await sync_to_async(view)()

    results = await asyncio.wait_for(asyncio.gather(request(), request()), TIMEOUT)
    for outer, inner_names in results:
        assert outer.startswith("threadgov-")
        assert all(n.startswith("threadgov-") for n in inner_names)
    assert stats().threads_alive == 2


async def test_nested_thread_sensitive_call_runs_on_the_calling_thread(governor):
    stats = governor(2)

    async def inner():
        return await sync_to_async(name)()

    def outer():
        return name(), async_to_sync(inner)()

    async with ThreadSensitiveContext():
        before = threading.active_count()
        caller, nested = await asyncio.wait_for(sync_to_async(outer)(), TIMEOUT)
    assert caller == nested and caller.startswith("threadgov-")
    assert stats().threads_alive == 1
    assert threading.active_count() <= before + 1  # at most the one worker, started lazily


async def test_cancelled_queued_non_sensitive_call_never_runs(governor):
    stats = governor(1)
    gate = threading.Event()
    ran = []
    holder = asyncio.ensure_future(sync_to_async(gate.wait, thread_sensitive=False)(TIMEOUT))
    await until(lambda: stats().busy == 1, "the worker to be busy")
    victim = asyncio.ensure_future(sync_to_async(ran.append, thread_sensitive=False)("victim"))
    await until(lambda: stats().queued == 1, "the call to be queued")
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    gate.set()
    await holder
    await sync_to_async(ran.append, thread_sensitive=False)("after")  # FIFO: runs after the victim's turn
    assert ran == ["after"]
    assert stats().cancelled == 1


async def test_cancelled_request_waiting_for_a_worker_never_runs(governor):
    stats = governor(1)
    release = asyncio.Event()
    ran = []

    async def holder():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()
            await release.wait()

    async def victim():
        async with ThreadSensitiveContext():
            await sync_to_async(ran.append)("victim")

    first = asyncio.create_task(holder())
    await until(lambda: stats().leased == 1, "the worker to be leased")
    second = asyncio.create_task(victim())
    await until(lambda: stats().waiting_contexts == 1, "the second context to wait")
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    async with ThreadSensitiveContext():
        await sync_to_async(ran.append)("after")
    assert ran == ["after"]
    assert stats().cancelled == 1


class Boom(Exception):
    pass


def explode():
    raise Boom("from the worker")


@pytest.mark.parametrize("thread_sensitive", [True, False])
async def test_exceptions_propagate_as_in_asgiref(governor, thread_sensitive):
    stats = governor(2)
    with pytest.raises(Boom, match="from the worker") as info:
        await sync_to_async(explode, thread_sensitive=thread_sensitive)()
    assert any(entry.name == "explode" for entry in info.traceback)
    assert stats().failed == 1 and stats().completed == 1
    # The worker survives a failure.
    assert (await sync_to_async(name, thread_sensitive=thread_sensitive)()).startswith("threadgov-")


request_id = contextvars.ContextVar("request_id", default=None)


async def contextvar_scenario():
    def read_and_write():
        seen = request_id.get()
        request_id.set("set-in-thread")
        return seen

    async with ThreadSensitiveContext():
        request_id.set("set-in-loop")
        seen_sensitive = await sync_to_async(read_and_write)()
        after_sensitive = request_id.get()
        request_id.set("again")
        seen_other = await sync_to_async(read_and_write, thread_sensitive=False)()
        after_other = request_id.get()
    return seen_sensitive, after_sensitive, seen_other, after_other


async def test_contextvars_behave_as_in_asgiref(governor):
    stock = await asyncio.create_task(contextvar_scenario())
    governor(2)
    ours = await asyncio.create_task(contextvar_scenario())
    assert ours == stock
    assert ours[0] == "set-in-loop" and ours[1] == "set-in-thread"


async def test_call_affinity_frees_the_worker_between_calls(governor):
    stats = governor(1, affinity="call")
    slow_io = asyncio.Event()

    async def slow_request():
        async with ThreadSensitiveContext():
            first = await sync_to_async(name)()
            await slow_io.wait()  # e.g. an async view awaiting another service
            return first, await sync_to_async(name)()

    slow = asyncio.create_task(slow_request())
    await until(lambda: stats().completed == 1, "the slow request's first call")
    assert stats().leased == 0
    # The only worker is free: another request runs to completion meanwhile.
    async with ThreadSensitiveContext():
        other = await asyncio.wait_for(sync_to_async(name)(), TIMEOUT)
    slow_io.set()
    first, second = await slow
    assert {first, second, other} == {"threadgov-1"}


async def test_request_affinity_keeps_the_worker_between_calls(governor):
    stats = governor(1)
    slow_io = asyncio.Event()

    async def slow_request():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()
            await slow_io.wait()
            await sync_to_async(name)()

    async def other_request():
        async with ThreadSensitiveContext():
            return await sync_to_async(name)()

    slow = asyncio.create_task(slow_request())
    await until(lambda: stats().completed == 1, "the slow request's first call")
    assert stats().leased == 1
    other = asyncio.create_task(other_request())
    await until(lambda: stats().waiting_contexts == 1, "the other request to wait")
    assert not other.done()
    slow_io.set()
    await asyncio.wait_for(asyncio.gather(slow, other), TIMEOUT)
    assert stats().leased == 0 or stats().waiting_contexts == 0


async def test_call_affinity_keeps_a_contexts_calls_in_order(governor):
    governor(2, affinity="call")
    seen = []

    async with ThreadSensitiveContext():
        await asyncio.gather(*(sync_to_async(seen.append)(i) for i in range(50)))
    assert seen == list(range(50))


async def test_context_exit_starts_no_thread(governor, monkeypatch):
    governor(2)

    async def request():
        async with ThreadSensitiveContext():
            await sync_to_async(name)()

    await request()  # warm up: the worker exists
    started = []
    original = threading.Thread.start

    def counting_start(self, *args, **kwargs):
        started.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(50):
        await request()
    # No join thread per context (asgiref 3.13 starts one at every exit); at most the pool's own
    # second worker, started lazily when a request arrives before the first worker is back.
    assert [n for n in started if not n.startswith("threadgov-")] == []
    assert threadgov.stats().threads_alive <= 2


@pytest.mark.skipif(
    "executor" not in inspect.signature(ThreadSensitiveContext).parameters,
    reason="ThreadSensitiveContext(executor=...) needs asgiref 3.13",
)
async def test_an_explicit_context_executor_is_honoured(governor):
    governor(2)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine") as mine:
        async with ThreadSensitiveContext(executor=mine):
            assert (await sync_to_async(name)()).startswith("mine")


async def test_channels_database_sync_to_async_is_governed(governor):
    db = pytest.importorskip("channels.db")
    governor(2)
    names = await asyncio.gather(*(db.database_sync_to_async(name)() for _ in range(5)))
    assert all(n.startswith("threadgov-") for n in names)


def test_uninstall_restores_stock_asgiref_exactly():
    original_map = SyncToAsync.context_to_thread_executor
    original_single = SyncToAsync.single_thread_executor
    loop = asyncio.new_event_loop()
    try:

        async def governed_call():
            async with ThreadSensitiveContext():
                await sync_to_async(name)()
            return await asyncio.to_thread(name)

        threadgov.install(max_threads=2)
        assert SyncToAsync.context_to_thread_executor is not original_map
        assert loop.run_until_complete(governed_call()).startswith("threadgov-")
        assert threadgov.uninstall(timeout=TIMEOUT)
        assert SyncToAsync.context_to_thread_executor is original_map
        assert SyncToAsync.single_thread_executor is original_single
        assert loop.run_until_complete(asyncio.to_thread(name)).startswith("asyncio")

        async def stock_context():
            async with ThreadSensitiveContext():
                return await sync_to_async(name)()

        assert not loop.run_until_complete(stock_context()).startswith("threadgov-")
        assert not [t for t in threading.enumerate() if t.name.startswith("threadgov-")]
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        threadgov.uninstall()


def test_install_twice_is_a_no_op_and_uninstall_twice_too():
    try:
        threadgov.install(max_threads=2)
        map_after_first = SyncToAsync.context_to_thread_executor
        threadgov.install(max_threads=2)
        assert SyncToAsync.context_to_thread_executor is map_after_first
    finally:
        assert threadgov.uninstall()
        assert threadgov.uninstall()


async def test_a_context_collected_without_exiting_frees_its_worker(governor):
    stats = governor(1)

    class Context:  # stands in for a ThreadSensitiveContext dropped without __aexit__
        pass

    lanes = SyncToAsync.context_to_thread_executor
    abandoned = Context()
    assert lanes[abandoned].submit(name).result(TIMEOUT) == "threadgov-1"
    await until(lambda: stats().completed == 1, "the call to be counted")
    assert stats().leased == 1
    del abandoned  # the last reference: the lane is released at the next governor call
    async with ThreadSensitiveContext():
        assert (await asyncio.wait_for(sync_to_async(name)(), TIMEOUT)) == "threadgov-1"


async def test_a_serial_context_keeps_order_but_holds_no_worker_while_idle(governor):
    stats = governor(1)  # affinity "request": serial contexts lease no worker all the same
    routing = threadgov._governor.current()
    idle = asyncio.Event()
    seen = []

    async def consumer():
        async with routing.serial_context():
            await asyncio.gather(*(sync_to_async(seen.append)(i) for i in range(20)))
            await idle.wait()  # a websocket with nothing to say
            await sync_to_async(seen.append)("last")

    task = asyncio.create_task(consumer())
    await until(lambda: len(seen) == 20 and stats().busy == 0, "the consumer's first calls")
    assert stats().leased == 0
    async with ThreadSensitiveContext():  # a request gets the only worker meanwhile
        await asyncio.wait_for(sync_to_async(name)(), TIMEOUT)
    idle.set()
    await asyncio.wait_for(task, TIMEOUT)
    assert seen == list(range(20)) + ["last"]


async def test_a_call_outside_any_context_does_not_keep_the_only_worker(governor):
    stats = governor(1)
    assert (await sync_to_async(name)()) == "threadgov-1"  # e.g. a Channels middleware's lookup
    await until(lambda: stats().busy == 0, "the call to finish")
    assert stats().leased == 0
    async with ThreadSensitiveContext():
        assert (await asyncio.wait_for(sync_to_async(name)(), TIMEOUT)) == "threadgov-1"


async def test_a_serial_context_waits_for_its_home_worker_rather_than_move(governor):
    stats = governor(2)
    routing = threadgov._governor.current()
    gate = threading.Event()
    holding = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold():
        loop.call_soon_threadsafe(holding.set)
        gate.wait(TIMEOUT)
        return name()

    async def request():
        async with ThreadSensitiveContext():
            return await sync_to_async(hold)()

    async with routing.serial_context():
        home = await sync_to_async(name)()  # the first thread: the context's home
        await until(lambda: stats().busy == 0, "the home to park")
        # Another request (in a context of its own, not nested in the serial one) takes the only
        # parked worker: the home.
        held = contextvars.Context().run(asyncio.ensure_future, request())
        await holding.wait()
        later = asyncio.ensure_future(sync_to_async(name)())
        await until(lambda: stats().queued == 1, "the context's call to queue for its home")
        # There is room for a second thread, and a call without affinity gets it meanwhile.
        other = await asyncio.wait_for(sync_to_async(name, thread_sensitive=False)(), TIMEOUT)
        assert other != home and not later.done()
        gate.set()
        assert await asyncio.wait_for(held, TIMEOUT) == home
        assert await asyncio.wait_for(later, TIMEOUT) == home
        assert stats().leased == 0  # the request's lease ended with it
        assert [await sync_to_async(name)() for _ in range(5)] == [home] * 5


async def test_serial_contexts_are_spread_evenly_over_the_workers(governor):
    stats = governor(3)
    routing = threadgov._governor.current()
    more = asyncio.Event()

    async def consumer(homed: asyncio.Event):
        async with routing.serial_context():
            home = await sync_to_async(name)()
            homed.set()
            await more.wait()
            # Every later call runs on the home too, whichever worker is free.
            names = await asyncio.gather(*(sync_to_async(name)() for _ in range(4)))
            assert names == [home] * 4
            return home

    tasks = []
    for _ in range(6):  # one after another: each picks its home knowing the previous ones'
        homed = asyncio.Event()
        tasks.append(asyncio.create_task(consumer(homed)))
        await homed.wait()
    more.set()
    homes = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert sorted(collections.Counter(homes).values()) == [2, 2, 2], homes
    assert stats().threads_alive == 3 and stats().leased == 0


def test_a_homed_lane_holds_no_lease():
    pool = threadgov._pool.Pool(1)
    with pytest.raises(TypeError, match="homed lane"):
        pool.lane(sticky=True, homed=True)
    with pytest.raises(TypeError, match="homed lane"):
        pool.lane(sticky=False, lease_cleanup=True, homed=True)
    assert pool.shutdown(TIMEOUT)

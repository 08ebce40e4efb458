"""Connection cleanup keeps a request's connection and transaction for the whole request, as stock
Django does, and never lends a worker with an open transaction to another caller."""

import asyncio
import contextvars
import threading

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connection, transaction

import threadgov
from djangoapp.models import Item
from djangoapp.testing import until

TIMEOUT = 10


@pytest.fixture
def clean_items():
    yield
    Item.objects.filter(name__startswith="tx-").delete()
    connection.close()


async def transaction_across_calls(label):
    """A request that opens a transaction in one call, writes in a second, rolls back in a third."""
    async with ThreadSensitiveContext():
        await sync_to_async(transaction.set_autocommit)(False)
        await sync_to_async(lambda: Item.objects.create(name=label))()

        def rollback():
            transaction.rollback()
            transaction.set_autocommit(True)

        await sync_to_async(rollback)()
    return await sync_to_async(lambda: Item.objects.filter(name=label).count(), thread_sensitive=False)()


@pytest.mark.parametrize("governed", [False, True], ids=["stock", "governed"])
async def test_a_transaction_spanning_calls_of_one_request_is_kept(governed, clean_items):
    if governed:
        threadgov.install(max_threads=2)
    try:
        assert await transaction_across_calls(f"tx-{governed}") == 0  # rolled back, as in stock
    finally:
        threadgov.uninstall()


async def test_a_worker_inside_a_transaction_is_not_lent_to_other_callers(clean_items):
    threadgov.install(max_threads=2)
    try:
        stats = threadgov.stats
        in_transaction = asyncio.Event()
        finish = asyncio.Event()

        async def request():
            async with ThreadSensitiveContext():
                await sync_to_async(transaction.set_autocommit)(False)
                worker = await sync_to_async(lambda: threading.current_thread().name)()
                in_transaction.set()
                await finish.wait()

                def rollback():
                    transaction.rollback()
                    transaction.set_autocommit(True)

                await sync_to_async(rollback)()
                return worker

        held = asyncio.create_task(request())
        await in_transaction.wait()
        await until(lambda: stats().busy == 0, "the request's worker to park")
        # Non-sensitive calls meanwhile run on the other worker, never in the open transaction.
        names = await asyncio.gather(
            *(sync_to_async(lambda: threading.current_thread().name, thread_sensitive=False)() for _ in range(20))
        )
        finish.set()
        leased_worker = await asyncio.wait_for(held, TIMEOUT)
        assert leased_worker not in names
    finally:
        threadgov.uninstall()


def name():
    return threading.current_thread().name


def begin_and_hold(gate: threading.Event, entered):
    """Open a transaction on this thread, then block until the test lets go."""
    transaction.set_autocommit(False)
    entered()
    gate.wait(TIMEOUT)
    return name()


def rollback():
    transaction.rollback()
    transaction.set_autocommit(True)


@pytest.mark.parametrize("queued", [False, True], ids=["called-after", "queued-before"])
async def test_a_serial_context_leaves_a_home_held_by_an_open_transaction(queued):
    """A serial context (a Channels consumer) whose home worker parks inside another caller's
    transaction moves to another worker, which becomes its home: it never waits for that
    transaction to end (the caller might be waiting for it), and never runs inside it."""
    threadgov.install(max_threads=2)
    try:
        stats = threadgov.stats
        routing = threadgov._governor.current()
        loop = asyncio.get_running_loop()
        gate, entered, finish = threading.Event(), asyncio.Event(), asyncio.Event()

        async def request():
            async with ThreadSensitiveContext():
                worker = await sync_to_async(begin_and_hold)(
                    gate, lambda: loop.call_soon_threadsafe(entered.set)
                )
                await finish.wait()  # parks its worker with the transaction open
                await sync_to_async(rollback)()
                return worker

        async with routing.serial_context():
            home = await sync_to_async(name)()
            await until(lambda: stats().busy == 0, "the home to park")
            # Another request (in a context of its own, not nested in the serial one) takes the
            # only parked worker: the home.
            held = contextvars.Context().run(asyncio.ensure_future, request())
            await entered.wait()
            if queued:  # submitted while the home runs the request's call: it waits there
                later = asyncio.ensure_future(sync_to_async(name)())
                await until(lambda: stats().queued == 1, "the call to queue for its home")
                gate.set()
            else:  # submitted once the home has parked inside the transaction
                gate.set()
                await until(lambda: stats().busy == 0, "the request's worker to park")
                later = asyncio.ensure_future(sync_to_async(name)())
            moved = await asyncio.wait_for(later, TIMEOUT)
            assert moved != home and not held.done()
            # The new home keeps the context's calls, also once the old one is free again.
            finish.set()
            assert await asyncio.wait_for(held, TIMEOUT) == home
            assert [await sync_to_async(name)() for _ in range(3)] == [moved] * 3
    finally:
        threadgov.uninstall()


async def test_calls_without_affinity_run_when_every_worker_waits_in_a_transaction(caplog):
    """Both workers parked inside their requests' open transactions, one request awaiting a
    non-sensitive call: no worker may run it (it would run inside a transaction), so one extra
    thread does, and exits once it is done. Without it, this would wait forever."""
    threadgov.install(max_threads=2)
    try:
        stats = threadgov.stats
        entered = [asyncio.Event(), asyncio.Event()]
        go, served = asyncio.Event(), asyncio.Event()

        async def request(i):
            async with ThreadSensitiveContext():
                await sync_to_async(transaction.set_autocommit)(False)
                worker = await sync_to_async(name)()
                entered[i].set()
                await go.wait()
                other = None
                if i == 0:
                    other = await sync_to_async(name, thread_sensitive=False)()
                    served.set()
                else:  # keeps its transaction open until the other request is served
                    await served.wait()
                await sync_to_async(rollback)()
                return worker, other

        tasks = [asyncio.ensure_future(request(i)) for i in range(2)]
        for event in entered:
            await asyncio.wait_for(event.wait(), TIMEOUT)
        await until(lambda: stats().busy == 0, "both workers to park in their transactions")
        assert stats().threads_alive == 2
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        assert len({worker for worker, _ in results}) == 2
        assert [other for _, other in results] == ["threadgov-overflow", None]
        assert "held by open transactions" in caplog.text
        await until(
            lambda: not any(t.name == "threadgov-overflow" for t in threading.enumerate()),
            "the extra thread to exit",
        )
    finally:
        threadgov.uninstall()

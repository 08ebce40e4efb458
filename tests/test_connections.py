"""Connection cleanup keeps a request's connection and transaction for the whole request, as stock
Django does, and never lends a worker with an open transaction to another caller."""

import asyncio
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

"""The benchmark's views.

fast   sync view, 2 ORM queries on the small seeded table
slow   sync view, one 50 ms database call: SELECT pg_sleep(0.05) on PostgreSQL; on SQLite a 50 ms
       time.sleep (simulated work: reported as such in the response)
mixed  async view: await asyncio.sleep(0.02), then one query through sync_to_async
_stats threadgov.stats().as_dict() (404 if threadgov is not installed) plus the process's threads
       and the number of DB connections it has opened (Django's connection_created signal)
"""

import asyncio
import os
import threading
import time

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import JsonResponse

from .apps import connections_opened
from .models import Item


def fast(request):
    count = Item.objects.count()
    names = list(Item.objects.filter(value__lt=10).order_by("id").values_list("name", flat=True))
    return JsonResponse({"count": count, "names": names})


def slow(request):
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.05)")
        return JsonResponse({"slept": 0.05, "simulated": False})
    time.sleep(0.05)  # simulated database work: SQLite has no server-side sleep
    return JsonResponse({"slept": 0.05, "simulated": True})


def _one_query():
    return Item.objects.filter(value__lt=5).count()


async def mixed(request):
    await asyncio.sleep(0.02)
    count = await sync_to_async(_one_query)()
    return JsonResponse({"count": count})


def _num_threads() -> int:
    try:
        import psutil

        return psutil.Process().num_threads()
    except Exception:
        return threading.active_count()


async def stats(request):
    data = {"pid": os.getpid(), "num_threads": _num_threads(), "db_connections_opened": connections_opened()}
    try:
        import threadgov

        data["threadgov"] = threadgov.stats().as_dict()
    except Exception as exc:  # NotInstalledError (or threadgov not importable)
        data["threadgov"] = None
        data["error"] = f"{type(exc).__name__}: {exc}"
        return JsonResponse(data, status=404)
    return JsonResponse(data)

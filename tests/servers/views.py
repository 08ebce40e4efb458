import os
import threading
import time

from django.db import connection
from django.http import JsonResponse

import threadgov

# How long /db/ holds its thread: long enough for concurrent requests to overlap, so that stock
# asgiref needs a thread (and a connection) for each of them.
HOLD = 0.05


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def db(request):
    """Sync view: one query on this thread's connection."""
    time.sleep(HOLD)  # sleep-ok: simulated work, keeps concurrent requests in the view together
    return JsonResponse(
        {
            "n": request.GET.get("n"),
            "pid": os.getpid(),
            "backend": backend_pid(),
            "thread": threading.current_thread().name,
        }
    )


async def debug(request):
    """Async view (runs on the event loop, holds no worker): this process's pool and threads."""
    try:
        stats = threadgov.stats().as_dict()
    except threadgov.NotInstalledError:
        stats = None
    return JsonResponse(
        {
            "pid": os.getpid(),
            "stats": stats,
            "threads": sorted(t.name for t in threading.enumerate()),
        }
    )

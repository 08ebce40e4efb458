from django.db import connections
from django.http import HttpResponse, StreamingHttpResponse

from .models import Item
from .probe import probe


def orm(request):
    """Sync view: two ORM queries on the default (SQLite) database."""
    probe.record("view", request.headers.get("x-req"))
    count = Item.objects.count()
    exists = Item.objects.filter(name="alpha").exists()
    return HttpResponse(f"{count} {exists}", content_type="text/plain")


def block(request):
    """Sync view that waits on whatever the test put in ``probe.hold`` (a Gate)."""
    probe.record("view", request.headers.get("x-req"))
    probe.hold()
    return HttpResponse("held", content_type="text/plain")


def pg(request):
    """Sync view: the PostgreSQL backend PID of this thread's connection of the ``pg`` alias."""
    probe.record("view", request.headers.get("x-req"))
    with connections["pg"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    probe.hold()
    return HttpResponse(str(pid), content_type="text/plain")


async def wait(request):
    """Async view standing for slow I/O: awaits ``probe.async_hold`` (an AsyncGate) on the loop."""
    if probe.async_hold is not None:
        await probe.async_hold()
    return HttpResponse("waited", content_type="text/plain")


def pg_slow(request):
    """Sync view: 50 ms of database work (pg_sleep) on the ``pg`` alias; returns the backend PID."""
    with connections["pg"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
        (pid,) = cursor.fetchone()
    return HttpResponse(str(pid), content_type="text/plain")


def pg_write(request):
    """Sync view: one committed INSERT (autocommit) on the ``pg`` alias; returns the row's id."""
    with connections["pg"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO threadgov_test_writes (request_id) VALUES (%s) RETURNING id",
            [request.headers.get("x-req")],
        )
        (row_id,) = cursor.fetchone()
    return HttpResponse(str(row_id), content_type="text/plain")


def stream(request):
    """Sync view returning a streaming response (an async iterator: sent by the event loop)."""
    probe.record("view", request.headers.get("x-req"))

    async def parts():
        for part in (b"one ", b"two ", b"three"):
            yield part

    return StreamingHttpResponse(parts(), content_type="text/plain")

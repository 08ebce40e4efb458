"""The served application: Django for HTTP, a Channels consumer at ``/ws/``, governed with N threads."""

import atexit
import os
import sys
import threading
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "servers.settings")

import threadgov  # noqa: E402

THREADS = int(os.environ.get("THREADGOV_TEST_THREADS", "4"))
GOVERNED = os.environ.get("THREADGOV_TEST_STOCK") != "1"


def count_backends() -> int:
    """This process's PostgreSQL backends, seen from a separate connection, after waiting up to 2 s
    for closed ones to leave pg_stat_activity."""
    import psycopg
    from django.conf import settings

    name = settings.DATABASES["default"]["OPTIONS"]["application_name"]
    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True,
        application_name=f"monitor-{os.getpid()}", connect_timeout=5,
    ) as monitor:
        deadline = time.monotonic() + 2.0
        while True:
            (count,) = monitor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.02)  # sleep-ok: polls the server, which sends no event


def report_backends() -> None:
    print(f"threadgov-test: backends after uninstall: {count_backends()}", file=sys.stderr, flush=True)


def report_at_exit() -> None:
    # Registered before install(): atexit runs it after threadgov's own exit hook (uninstall).
    print(f"threadgov-test: backends at exit: {count_backends()}", file=sys.stderr, flush=True)


atexit.register(report_at_exit)

if GOVERNED:
    threadgov.install(max_threads=THREADS)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

if os.environ.get("THREADGOV_TEST_HANDLER") == "threadgov":  # one governed call per request
    from threadgov.asgi import get_asgi_application  # noqa: E402
else:
    from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from threadgov.asgi import GovernorMiddleware  # noqa: E402

from .consumers import DbConsumer  # noqa: E402


class ReportAfterShutdown:
    """Around threadgov's middleware (which uninstalls at lifespan.shutdown): reports what the
    test checks, once the middleware has shut the governor down and before the process exits."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def reporting_send(message):
            if message["type"] == "lifespan.shutdown.complete" and GOVERNED:
                workers = [t for t in threading.enumerate() if t.name.startswith("threadgov-")]
                stopped = threadgov._governor.current() is None and not workers
                print(f"threadgov-test: lifespan shutdown: uninstall() -> {stopped}", file=sys.stderr, flush=True)
                report_backends()
            await send(message)

        return await self.app(scope, receive, reporting_send)


application = ReportAfterShutdown(
    GovernorMiddleware(
        ProtocolTypeRouter(
            {
                "http": django_application,
                "websocket": URLRouter([path("ws/", DbConsumer.as_asgi())]),
            }
        )
    )
)

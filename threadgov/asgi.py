"""ASGI entry points: Django's handler with one governed call per request, and a middleware that
turns refused calls into 503/1013, serves stats and stops the governor at shutdown.

.. code-block:: python

    import threadgov
    from threadgov.asgi import GovernorMiddleware, get_asgi_application

    threadgov.install(max_queue=64, queue_timeout=5)
    application = GovernorMiddleware(get_asgi_application())
"""

import asyncio
import json
import threading
from typing import Optional

from ._errors import PoolSaturated
from ._governor import current, uninstall

__all__ = ["ASGIHandler", "GovernorMiddleware", "get_asgi_application"]


def get_asgi_application():
    """Like ``django.core.asgi.get_asgi_application()``, but each request's synchronous work
    (``request_started``, middleware, sync view, closing an in-memory response) runs in one
    thread-sensitive call instead of one call per step. See :class:`ASGIHandler`."""
    from ._handler import get_asgi_application

    return get_asgi_application()


def __getattr__(name):
    if name == "ASGIHandler":  # imported on first use: the middleware alone needs no Django
        from ._handler import ASGIHandler

        return ASGIHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# RFC 6455 close code "Try Again Later".
TRY_AGAIN_LATER = 1013


class GovernorMiddleware:
    """Wraps an ASGI application (e.g. Django's ``get_asgi_application()``).

    * HTTP: a request refused by the governor (:class:`~threadgov.PoolSaturated`, from
      ``max_queue`` or ``queue_timeout``) before its response started gets
      ``503 Service Unavailable`` with ``Retry-After: <retry_after>``.
    * HTTP: a client that disconnects while its request still waits (for a worker, before the
      application listens for the disconnect itself) cancels it: its queued call never runs.
    * WebSocket: a refused connection is closed with code 1013 (try again later).
    * ``stats_path`` (opt-in, e.g. ``"/_threadgov/stats"``): a GET there answers
      ``threadgov.stats().as_dict()`` as JSON (503 when nothing is installed).
    * Lifespan: at ``lifespan.shutdown`` the governor is uninstalled (``uninstall_on_shutdown``;
      ``shutdown_timeout`` seconds) — in a thread of its own, so the loop keeps serving the calls
      being drained. Applications without lifespan support (Django) are answered for.
    * Every loop that serves a request gets the pool as its default executor.
    """

    def __init__(
        self,
        app,
        *,
        retry_after: int = 1,
        stats_path: Optional[str] = None,
        uninstall_on_shutdown: bool = True,
        shutdown_timeout: float = 30.0,
    ):
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise TypeError(f"retry_after must be a whole number of seconds >= 0, not {retry_after!r}")
        if stats_path is not None and not (isinstance(stats_path, str) and stats_path.startswith("/")):
            raise TypeError(f"stats_path must be None or a path starting with '/', not {stats_path!r}")
        self.app = app
        self.retry_after = retry_after
        self.stats_path = stats_path
        self.uninstall_on_shutdown = uninstall_on_shutdown
        self.shutdown_timeout = shutdown_timeout

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(scope, receive, send)
        governor = current()
        if governor is not None:
            governor._routing.adopt_running_loop()
        if kind == "http":
            if self.stats_path is not None and scope["path"] == self.stats_path:
                return await self._stats(send)
            return await self._http(scope, receive, send)
        if kind == "websocket":
            return await self._websocket(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _http(self, scope, receive, send):
        started = False
        watcher = None  # after the request body: the client's next message (a disconnect)
        listening = False  # the application has asked for that message itself

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def watching_receive():
            nonlocal watcher, listening
            if watcher is not None:
                listening = True
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(on_client_message)
            return message

        def on_client_message(future):
            # A client gone while its request still waits (e.g. for a worker, in Django's
            # request_started): cancel it, so that its queued call never runs. Once the
            # application listens for the disconnect itself, it handles it.
            if not future.cancelled() and future.result()["type"] == "http.disconnect":
                if not listening and not started:
                    handler.cancel()

        handler = asyncio.ensure_future(self.app(scope, watching_receive, tracking_send))
        try:
            await asyncio.shield(handler)
        except asyncio.CancelledError:
            if not handler.cancelled():  # this middleware's own task is being cancelled
                handler.cancel()
                raise
            return  # the client left before its request was served
        except PoolSaturated as exc:
            if started:
                raise
            headers = [(b"retry-after", str(self.retry_after).encode())]
            await _respond(send, 503, b"Service Unavailable: " + str(exc).encode(), headers)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()

    async def _websocket(self, scope, receive, send):
        closed = False

        async def tracking_send(message):
            nonlocal closed
            if message["type"] == "websocket.close":
                closed = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except PoolSaturated:
            if not closed:
                # Before accept, a close is a rejection (HTTP 403 from most servers); after it,
                # the client sees 1013.
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})

    async def _stats(self, send):
        governor = current()
        if governor is None:
            body = {"error": "threadgov is not installed"}
            status = 503
        else:
            body = governor.stats().as_dict()
            status = 200
        await _respond(send, status, json.dumps(body).encode(), [], b"application/json")

    async def _lifespan(self, scope, receive, send):
        received = []

        async def watching_receive():
            message = await receive()
            received.append(message["type"])
            if message["type"] == "lifespan.shutdown":
                await self._shutdown()
            return message

        try:
            await self.app(scope, watching_receive, send)
            return
        except Exception:
            if "lifespan.shutdown" in received:
                raise
        # The application does not speak lifespan (Django's ASGIHandler raises): answer for it.
        if "lifespan.startup" not in received:
            await receive()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            await self._shutdown()
            await send({"type": "lifespan.shutdown.complete"})

    async def _shutdown(self):
        if not self.uninstall_on_shutdown or current() is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def stop():
            try:
                uninstall(timeout=self.shutdown_timeout)
            finally:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_resolve, done)

        thread = threading.Thread(target=stop, name="threadgov-shutdown", daemon=True)
        thread.start()
        await done
        thread.join()  # it has finished its work: this returns at once


def _resolve(future):
    if not future.done():
        future.set_result(None)


async def _respond(send, status, body, headers, content_type=b"text/plain; charset=utf-8"):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
            + headers,
        }
    )
    await send({"type": "http.response.body", "body": body})

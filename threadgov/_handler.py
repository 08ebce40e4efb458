"""Django's ASGI handler with each request's synchronous work in one governed call.

Django's ``ASGIHandler`` makes one thread-sensitive call per step of a request: the
``request_started`` signal, every ``process_request``/``process_response`` of each
``MiddlewareMixin`` middleware, the sync view, then ``response.close()`` (``request_finished``).
Each call is a round trip between the event loop and the request's worker. This handler runs the
steps as Django's WSGI handler does, in one call on the request's worker: ``request_started``, the
request's creation, the middleware chain loaded in sync mode and the view, and, for a response whose
content is in memory, ``response.close()``. The event loop keeps the network side: reading the body
before, sending the response after.
"""

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi as django_asgi
from django.http import FileResponse
from django.urls import set_script_prefix

__all__ = ["ASGIHandler", "get_asgi_application"]

# Django 4.2's send_response() closes the response itself (one more thread-sensitive call); from
# 5.0 on, handle() closes it after send_response().
_SEND_CLOSES = django.VERSION < (5, 0)

if django.VERSION < (5, 0):

    def _script_prefix(handler, scope):
        return handler.get_script_prefix(scope)

else:

    def _script_prefix(handler, scope):
        return django_asgi.get_script_prefix(scope)


class ASGIHandler(django_asgi.ASGIHandler):
    """A drop-in for ``django.core.handlers.asgi.ASGIHandler``: same requests, same responses, one
    thread-sensitive call per request instead of one per step.

    Differences from Django's handler, all of them Django's own WSGI behaviour:

    * the middleware chain is loaded in sync mode: async-only middleware is adapted with
      ``async_to_sync``, and an async view runs on the event loop while the request's worker waits
      for it (so it holds that worker, blocked, until it returns);
    * a response whose content is in memory is closed (``request_finished`` is sent) on the worker
      right after the view, before its body goes out; streaming and file responses are sent first
      and closed after, as Django does;
    * a client that disconnects while its view runs does not cancel the request (a sync view cannot
      be interrupted either way); its response is dropped by the server.
    """

    def __init__(self):
        # Not Django's ASGIHandler.__init__: that loads the middleware in async mode.
        self.load_middleware(is_async=False)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(_script_prefix(self, scope))
            response, closed = await sync_to_async(self._respond, thread_sensitive=True)(
                scope, body_file
            )
            await self.send_response(response, send)
            if not closed and not _SEND_CLOSES:
                await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()
        # The request's worker stays its own until its context exits, as under Django's handler.
        # Freeing it from inside the call would be faster, but then the workers go from request to
        # request without waiting for the event loop, which falls behind reading new requests and
        # sending responses (uvloop: a p99 latency of seconds at 256 clients).

    def _respond(self, scope, body_file):
        """Everything synchronous of one request, on its worker; returns (response, closed)."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if response.streaming or _SEND_CLOSES:
            return response, False
        response.close()
        return response, True


def get_asgi_application() -> ASGIHandler:
    """What ``django.core.asgi.get_asgi_application()`` does, with :class:`ASGIHandler`."""
    django.setup(set_prefix=False)
    return ASGIHandler()

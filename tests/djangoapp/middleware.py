from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from .probe import probe


class ProbeMiddleware:
    """Async-only, so that an async view runs on the loop with no thread held by the middleware.

    Its two records are separate thread-sensitive ``sync_to_async`` calls of the request.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        assert iscoroutinefunction(get_response)
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        rid = request.headers.get("x-req")
        await sync_to_async(probe.record)("middleware_in", rid)
        response = await self.get_response(request)
        await sync_to_async(probe.record)("middleware_out", rid)
        return response


class SyncProbeMiddleware:
    """Sync-only, like most projects' middleware: under Django's ASGIHandler each of its two records
    is a thread-sensitive call of its own; under threadgov's handler they run in the request's
    single call."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        rid = request.headers.get("x-req")
        probe.record("middleware_in", rid)
        response = self.get_response(request)
        probe.record("middleware_out", rid)
        return response

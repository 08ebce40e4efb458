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

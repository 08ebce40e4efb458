"""Opt-in Django views: the governor's statistics as JSON, and its Prometheus metrics.

Route them yourself, on a path only your monitoring can reach::

    from django.urls import path
    from threadgov.views import metrics_view, stats_view

    urlpatterns = [
        path("-/threadgov/stats", stats_view),
        path("-/metrics", metrics_view),
    ]

Both are async views: they run on the event loop and hold no worker thread themselves (Django still
runs its ``request_started``/``request_finished`` receivers through ``sync_to_async``, i.e. on a
governed worker, like for any request).
"""

from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse

from ._governor import current

__all__ = ["metrics_view", "stats_view"]

_METHODS = ("GET", "HEAD")


def _no_store(response):
    response["Cache-Control"] = "no-store"
    return response


async def stats_view(request):
    """``threadgov.stats().as_dict()`` as JSON; 503 with ``{"error": ...}`` when not installed."""
    if request.method not in _METHODS:
        return HttpResponseNotAllowed(_METHODS)
    governor = current()
    if governor is None:
        return _no_store(
            JsonResponse(
                {"error": "threadgov is not installed in this process", "installed": False},
                status=503,
            )
        )
    return _no_store(JsonResponse(governor.stats().as_dict()))


async def metrics_view(request):
    """The Prometheus metrics (text format, or OpenMetrics if the scraper asks for it).

    Serves prometheus_client's default registry (threadgov's collector included), or in
    multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) the aggregate of every process's files.
    503 if prometheus_client is not installed.
    """
    if request.method not in _METHODS:
        return HttpResponseNotAllowed(_METHODS)
    from . import _metrics

    if not _metrics.available():
        return _no_store(
            HttpResponse(
                "prometheus_client is not installed: pip install 'threadgov[metrics]'\n",
                status=503,
                content_type="text/plain; charset=utf-8",
            )
        )
    body, content_type = _metrics.render(request.headers.get("Accept"))
    return _no_store(HttpResponse(body, content_type=content_type))

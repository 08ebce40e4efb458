import os

from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.urls import path

import threadgov
from threadgov.views import metrics_view, stats_view


def work(request):
    """A sync view (so a governed call) with one query on a persistent connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return HttpResponse(str(os.getpid()), content_type="text/plain")


async def pid_stats(request):
    """Which process answered, and its statistics (for the multi-process test)."""
    return JsonResponse({"pid": os.getpid(), "stats": threadgov.stats().as_dict()})


urlpatterns = [
    path("work/", work),
    path("pid-stats/", pid_stats),
    path("-/threadgov/stats", stats_view),
    path("-/metrics", metrics_view),
]

"""ASGI entry point; installs threadgov only when THREADGOV_THREADS is set.

BENCH_HANDLER=threadgov serves with ``threadgov.asgi.get_asgi_application()`` (one governed call per
request) instead of Django's ``get_asgi_application()``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.e2e.djproject.settings")

if os.environ.get("BENCH_HANDLER") == "threadgov":
    from threadgov.asgi import get_asgi_application  # noqa: E402
else:
    from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()

if os.environ.get("THREADGOV_THREADS"):
    import threadgov

    threadgov.install(max_threads=int(os.environ["THREADGOV_THREADS"]))

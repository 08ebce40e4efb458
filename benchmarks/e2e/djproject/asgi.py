"""ASGI entry point; installs threadgov only when THREADGOV_THREADS is set."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.e2e.djproject.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()

if os.environ.get("THREADGOV_THREADS"):
    import threadgov

    threadgov.install(max_threads=int(os.environ["THREADGOV_THREADS"]))

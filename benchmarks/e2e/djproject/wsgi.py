"""WSGI entry point (gunicorn gthread baseline)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.e2e.djproject.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

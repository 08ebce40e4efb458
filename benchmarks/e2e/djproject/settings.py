"""Settings of the benchmark project, all from the environment.

DATABASE_URL      postgres://user[:password]@host[:port]/name (default
                  postgres://postgres@127.0.0.1:5432/test) or sqlite:///relative.sqlite3 / sqlite:////abs/path.sqlite3
CONN_MAX_AGE      seconds (default 0); "none" for unlimited persistent connections
BENCH_APP_NAME    PostgreSQL application_name of the server's connections (default threadgov-e2e);
                  the harness sets a unique one per server so it can count that server's backends
THREADGOV_THREADS read by asgi.py only: install threadgov with that many threads
"""

import os
from urllib.parse import unquote, urlsplit

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"


def database_from_url(url: str, app_name: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # As dj-database-url: sqlite:///relative/file.sqlite3, sqlite:////absolute/file.sqlite3.
        path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else ""
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path or ":memory:",
            "OPTIONS": {"timeout": 20},
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "postgres",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": {"application_name": app_name},
        }
    raise ValueError(f"DATABASE_URL={url!r}: expected postgres://... or sqlite:///path")


def conn_max_age(value: str):
    if value.strip().lower() in ("none", "inf", "unlimited"):
        return None
    return int(value)


SECRET_KEY = "threadgov-e2e-benchmark-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["benchmarks.e2e.djproject"]
MIDDLEWARE = []
ROOT_URLCONF = "benchmarks.e2e.djproject.urls"
ASGI_APPLICATION = "benchmarks.e2e.djproject.asgi.application"
WSGI_APPLICATION = "benchmarks.e2e.djproject.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASE_URL = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
_database = database_from_url(DATABASE_URL, os.environ.get("BENCH_APP_NAME", "threadgov-e2e"))
_database["CONN_MAX_AGE"] = conn_max_age(os.environ.get("CONN_MAX_AGE", "0"))
DATABASES = {"default": _database}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR"},
        "threadgov": {"handlers": ["console"], "level": "WARNING"},
    },
}

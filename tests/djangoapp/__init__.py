"""A tiny Django project for in-process ASGI tests (no pytest-django).

``configure()`` is called once per test process, by ``tests/conftest.py`` at import. The package is
imported as ``djangoapp`` (conftest puts ``tests/`` on ``sys.path``).
"""

import os

# The PostgreSQL alias's application_name: lets tests find this process's backends in
# pg_stat_activity (and only them).
PG_APPLICATION_NAME = f"threadgov-tests-{os.getpid()}"

PG_PARAMS = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}

# Rows created in the default database at setup; the ``orm`` view returns their count.
ITEM_NAMES = ("alpha", "beta", "gamma")


def settings_dict(db_dir: str) -> dict:
    return {
        "DEBUG": False,
        "SECRET_KEY": "test",
        "ALLOWED_HOSTS": ["*"],
        "USE_TZ": True,
        "INSTALLED_APPS": ["djangoapp.apps.DjangoAppConfig"],
        "MIDDLEWARE": ["djangoapp.middleware.ProbeMiddleware"],
        "ROOT_URLCONF": "djangoapp.urls",
        "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(db_dir, "default.sqlite3"),
                "CONN_MAX_AGE": 0,
            },
            # Never connected unless a test uses it (Django connects lazily).
            "pg": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": PG_PARAMS["dbname"],
                "USER": PG_PARAMS["user"],
                "HOST": PG_PARAMS["host"],
                "PORT": str(PG_PARAMS["port"]),
                "CONN_MAX_AGE": 60,
                # A persistent connection is checked before reuse at each request's start, so a
                # backend killed between requests is replaced transparently.
                "CONN_HEALTH_CHECKS": True,
                "OPTIONS": {"application_name": PG_APPLICATION_NAME, "connect_timeout": 5},
            },
        },
    }


def configure(db_dir: str) -> None:
    """Configure Django for this process, create the default database's tables and rows."""
    import django
    from django.conf import settings

    settings.configure(**settings_dict(db_dir))
    django.setup()

    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", database="default", run_syncdb=True, verbosity=0)
    from .models import Item

    Item.objects.bulk_create(Item(name=name) for name in ITEM_NAMES)
    # The main thread keeps no connection open.
    connections.close_all()

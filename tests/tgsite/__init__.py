"""A Django project with the ``threadgov`` app installed, for tests that start their own process
(``django.setup()`` in a script, ``manage.py``-style commands, uvicorn, gunicorn).

Everything is read from the environment, so each test chooses its configuration:

TGSITE_DB         ``sqlite`` (default; a file in TGSITE_DIR, CONN_MAX_AGE=60) or ``pg`` (the local
                  PostgreSQL, database ``test``)
TGSITE_PG_PORT    port of that PostgreSQL (default 5432)
TGSITE_DIR        directory of the SQLite file (default: the current directory)
TGSITE_THREADGOV  JSON of the THREADGOV setting (absent: no THREADGOV setting at all)
"""

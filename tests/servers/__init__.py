"""A governed Django + Channels project served by real ASGI servers in ``tests/test_servers.py``.

Each server runs it in a subprocess with ``tests/`` on ``PYTHONPATH`` and
``servers.asgi:application`` as the application. Environment variables set by the test:

* ``THREADGOV_TEST_THREADS``: N, passed to ``threadgov.install(max_threads=N)`` (default 4);
* ``THREADGOV_TEST_STOCK=1``: do not install threadgov (the stock control);
* ``THREADGOV_TEST_APP_NAME``: prefix of the PostgreSQL ``application_name``; each process appends
  ``-<pid>``, so the test counts each process's backends in ``pg_stat_activity``.
"""

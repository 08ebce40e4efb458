"""The system checks (``manage.py check``): each fires on a bad value and is silent on good ones.

The check functions are called directly, under ``override_settings``; the budget against a live
server is also run as ``manage.py check --database default`` in a process of its own.
"""

import json
import os
import sys
import warnings

import psycopg
import pytest
from django.test import override_settings

from djangoapp import PG_PARAMS
from tgsite.testing import environment, run
from threadgov import checks
from threadgov._config import KEYS

SERVER_DATABASES = {
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "db1", "CONN_MAX_AGE": 60},
    "replica": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "db2", "CONN_MAX_AGE": 60},
    "cache": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "CONN_MAX_AGE": 0},
}

ENV_VARS = ("ASGI_THREADS", "THREADGOV_MAX_QUEUE", "THREADGOV_QUEUE_TIMEOUT", "THREADGOV_SLOW_CALL",
            "WEB_CONCURRENCY")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def databases(value):
    """override_settings(DATABASES=...) without Django's warning (the checks only read the dicts)."""
    class _Override(override_settings):
        def enable(self):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                super().enable()

        def disable(self):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                super().disable()

    return _Override(DATABASES=value)


def all_checks(databases=None):
    return (
        checks.check_settings(None)
        + checks.check_connection_budget(None, databases=databases)
        + checks.check_persistent_connections(None)
    )


def test_silent_when_the_project_does_not_use_threadgov(monkeypatch):
    # No "threadgov" app, no THREADGOV setting, no governor in the test process.
    monkeypatch.setenv("ASGI_THREADS", "abc")
    assert all_checks() == []


def test_silent_on_a_good_configuration():
    good = {"MAX_THREADS": 8, "AFFINITY": "call", "CLOSE_CONNECTIONS": True, "MAX_QUEUE": 100,
            "QUEUE_TIMEOUT": 5, "SLOW_CALL_THRESHOLD": 2.5, "METRICS": True, "WORKER_PROCESSES": 4,
            "MAX_CONNECTIONS": 100, "RESERVED_CONNECTIONS": 10, "INSTALL": False}
    assert set(good) == set(KEYS)
    with override_settings(THREADGOV=good), databases(SERVER_DATABASES):
        # 8 threads x 4 processes x 2 server aliases = 64 <= 100 - 10
        assert all_checks() == []
    with override_settings(THREADGOV={}):
        assert all_checks() == []


@pytest.mark.parametrize(
    "variable, text", [("ASGI_THREADS", "abc"), ("THREADGOV_MAX_QUEUE", "many"),
                       ("THREADGOV_QUEUE_TIMEOUT", "-1"), ("THREADGOV_SLOW_CALL", "1s"),
                       ("WEB_CONCURRENCY", "0")],
)
def test_e001_invalid_environment_variable(monkeypatch, variable, text):
    monkeypatch.setenv(variable, text)
    with override_settings(THREADGOV={}):
        errors = checks.check_settings(None)
        assert [e.id for e in errors] == ["threadgov.E001"]
        assert errors[0].msg.startswith(f"{variable}={text!r} is not valid: expected ")
        assert errors[0].hint == f"Unset {variable} or fix its value."
        # The other checks leave it to this one.
        assert checks.check_connection_budget(None, databases=None) == []
    monkeypatch.setenv(variable, {"ASGI_THREADS": "4", "WEB_CONCURRENCY": "2", "THREADGOV_MAX_QUEUE": "10"}.get(variable, "1.5"))
    with override_settings(THREADGOV={}):
        assert checks.check_settings(None) == []


def test_e002_setting_not_a_dict():
    with override_settings(THREADGOV=["MAX_THREADS", 8]):
        errors = checks.check_settings(None)
    assert [e.id for e in errors] == ["threadgov.E002"]
    assert errors[0].msg == "THREADGOV must be a dict, not list"
    assert "Valid keys: MAX_THREADS, AFFINITY" in errors[0].hint


def test_e003_unknown_key_with_a_suggestion():
    with override_settings(THREADGOV={"MAX_THREAD": 8, "ZZZ": 2}):
        errors = checks.check_settings(None)
    assert [e.id for e in errors] == ["threadgov.E003", "threadgov.E003"]
    assert errors[0].msg == 'THREADGOV["MAX_THREAD"] is not a threadgov setting'
    assert errors[0].hint.startswith("Did you mean 'MAX_THREADS'? Valid keys: ")
    assert errors[1].hint.startswith("Valid keys: ")


@pytest.mark.parametrize(
    "key, bad, good",
    [("MAX_THREADS", 0, 4), ("AFFINITY", "thread", "request"), ("CLOSE_CONNECTIONS", "no", False),
     ("MAX_QUEUE", -5, 0), ("QUEUE_TIMEOUT", 0, 0.25), ("SLOW_CALL_THRESHOLD", "1", None),
     ("METRICS", "on", False), ("WORKER_PROCESSES", 0, 3), ("MAX_CONNECTIONS", "100", None),
     ("RESERVED_CONNECTIONS", 1.5, 5), ("INSTALL", 0, True)],
)
def test_e004_invalid_value_one_error_each(key, bad, good):
    with override_settings(THREADGOV={key: bad}):
        errors = checks.check_settings(None)
    assert [e.id for e in errors] == ["threadgov.E004"]
    assert errors[0].msg.startswith(f'THREADGOV["{key}"]={bad!r} is not valid: expected ')
    assert errors[0].hint.startswith(f'THREADGOV["{key}"] accepts ')
    with override_settings(THREADGOV={key: good}):
        assert checks.check_settings(None) == []


def test_e004_one_error_per_bad_value():
    with override_settings(THREADGOV={"MAX_THREADS": -1, "AFFINITY": None, "MAX_QUEUE": 3}):
        errors = checks.check_settings(None)
    assert [e.id for e in errors] == ["threadgov.E004", "threadgov.E004"]


def test_e005_metrics_without_prometheus_client(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with override_settings(THREADGOV={"METRICS": True}):
        assert checks.check_settings(None) == [checks.E005]
    with override_settings(THREADGOV={"METRICS": False}):
        assert checks.check_settings(None) == []


def test_w001_budget_against_max_connections(monkeypatch):
    setting = {"MAX_THREADS": 16, "WORKER_PROCESSES": 4, "MAX_CONNECTIONS": 100, "RESERVED_CONNECTIONS": 10}
    with override_settings(THREADGOV=setting), databases(SERVER_DATABASES):
        warnings_ = checks.check_connection_budget(None, databases=None)
        # 16 x 4 x 2 server aliases (the SQLite one opens no server connection) = 128 > 90
        assert [w.id for w in warnings_] == ["threadgov.W001"]
        assert warnings_[0].msg == (
            'threadgov may open 128 database connections: N=16 threads (THREADGOV["MAX_THREADS"]) x '
            '4 processes (THREADGOV["WORKER_PROCESSES"]) x 2 database aliases (default, replica), more '
            'than THREADGOV["MAX_CONNECTIONS"] - THREADGOV["RESERVED_CONNECTIONS"] = 90.'
        )
        assert warnings_[0].hint.startswith("Use at most 11 threads per process")
        # WEB_CONCURRENCY wins over WORKER_PROCESSES: 16 x 2 x 2 = 64 fits.
        monkeypatch.setenv("WEB_CONCURRENCY", "2")
        assert checks.check_connection_budget(None, databases=None) == []
        monkeypatch.setenv("WEB_CONCURRENCY", "3")
        assert "3 processes (WEB_CONCURRENCY)" in checks.check_connection_budget(None)[0].msg
        # ASGI_THREADS wins over MAX_THREADS.
        monkeypatch.setenv("ASGI_THREADS", "15")
        assert checks.check_connection_budget(None) == []  # 15 x 3 x 2 = 90
    with override_settings(THREADGOV=dict(setting, MAX_CONNECTIONS=None)), databases(SERVER_DATABASES):
        assert checks.check_connection_budget(None) == []  # nothing to compare with


def test_w003_conn_max_age_zero_on_a_server_database():
    dbs = dict(SERVER_DATABASES, replica=dict(SERVER_DATABASES["replica"], CONN_MAX_AGE=0))
    with override_settings(THREADGOV={}), databases(dbs):
        warnings_ = checks.check_persistent_connections(None)
        assert [w.id for w in warnings_] == ["threadgov.W003"]
        assert warnings_[0].msg.startswith("DATABASES['replica']['CONN_MAX_AGE'] is 0: ")
        assert "CONN_MAX_AGE" in warnings_[0].hint
    with override_settings(THREADGOV={"CLOSE_CONNECTIONS": False}), databases(dbs):
        assert checks.check_persistent_connections(None) == []  # the governor leaves them alone
    with override_settings(THREADGOV={}), databases(SERVER_DATABASES):
        assert checks.check_persistent_connections(None) == []  # SQLite's 0 is fine


# -- against the real PostgreSQL ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server_limits():
    try:
        with psycopg.connect(**PG_PARAMS, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT current_setting('max_connections')::int, "
                "current_setting('superuser_reserved_connections')::int, "
                "coalesce(current_setting('reserved_connections', true), '0')::int"
            ).fetchone()
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {PG_PARAMS['host']}:{PG_PARAMS['port']} ({' '.join(str(exc).split())})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the server must be running", pytrace=False)
        pytest.skip(reason)
    max_connections, superuser, reserved = row
    usable = max_connections - superuser - reserved
    if 32 * 4 <= usable:
        pytest.skip(f"the server's max_connections={max_connections} accepts 4 x 32 connections")
    return max_connections, superuser, reserved, usable


@pytest.mark.postgres
def test_w002_budget_against_the_live_server_in_process(server_limits):
    max_connections, superuser, reserved, usable = server_limits
    from django.db import connections

    with override_settings(THREADGOV={"MAX_THREADS": 32, "WORKER_PROCESSES": 4}):
        assert checks.check_connection_budget(None, databases=None) == []  # no --database: no query
        warnings_ = checks.check_connection_budget(None, databases=["default", "pg"])
    assert [w.id for w in warnings_] == ["threadgov.W002"]
    assert warnings_[0].msg.startswith(
        "threadgov may open 128 connections to the server of database 'pg': N=32 threads "
        '(THREADGOV["MAX_THREADS"]) x 4 processes (THREADGOV["WORKER_PROCESSES"]) x 1 alias on that '
        f"server (pg), more than its max_connections {max_connections} - {superuser} "
        "superuser_reserved_connections"
    )
    assert warnings_[0].msg.endswith(f" = {usable}.")
    assert connections["pg"].connection is None  # the check closed what it opened
    with override_settings(THREADGOV={"MAX_THREADS": 32, "WORKER_PROCESSES": 1}):
        assert checks.check_connection_budget(None, databases=["pg"]) == []


@pytest.mark.postgres
def test_w002_manage_py_check_database_default(tmp_path, server_limits):
    """4 workers x 32 threads x 1 alias, against max_connections read from the real server."""
    max_connections, superuser, reserved, usable = server_limits
    setting = {"MAX_THREADS": 32, "WORKER_PROCESSES": 4, "INSTALL": False}
    env = environment(DJANGO_SETTINGS_MODULE="tgsite.settings", TGSITE_DB="pg",
                      TGSITE_THREADGOV=json.dumps(setting))
    proc = run(["-m", "django", "check", "--database", "default"], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a warning does not fail the command
    assert "(threadgov.W002) threadgov may open 128 connections to the server of database 'default'" in proc.stderr
    assert f"max_connections {max_connections} - {superuser} superuser_reserved_connections" in proc.stderr
    assert f"= {usable}." in proc.stderr and "HINT: Use at most" in proc.stderr
    assert "System check identified 1 issue" in proc.stdout + proc.stderr

    # Without --database no server is asked; with a fitting N the check is silent.
    proc = run(["-m", "django", "check"], env, tmp_path)
    assert proc.returncode == 0 and "W002" not in proc.stderr, proc.stderr
    env["TGSITE_THREADGOV"] = json.dumps(dict(setting, WORKER_PROCESSES=1))
    proc = run(["-m", "django", "check", "--database", "default"], env, tmp_path)
    assert proc.returncode == 0 and "threadgov" not in proc.stderr, proc.stderr
    assert "System check identified no issues" in proc.stdout


def test_w004_server_unreachable(tmp_path):
    env = environment(DJANGO_SETTINGS_MODULE="tgsite.settings", TGSITE_DB="pg", TGSITE_PG_PORT="1",
                      TGSITE_THREADGOV=json.dumps({"INSTALL": False}))
    proc = run(["-m", "django", "check", "--database", "default"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(threadgov.W004) threadgov could not read max_connections from the server of database 'default'" in proc.stderr


def test_errors_stop_manage_py_check(tmp_path):
    env = environment(DJANGO_SETTINGS_MODULE="tgsite.settings", TGSITE_DIR=str(tmp_path),
                      ASGI_THREADS="abc", TGSITE_THREADGOV=json.dumps({"MAX_THREAD": 4, "AFFINITY": "x"}))
    proc = run(["-m", "django", "check"], env, tmp_path)
    assert proc.returncode == 1
    for expected in (
        "(threadgov.E001) ASGI_THREADS='abc' is not valid: expected a whole number from 1 to 1024",
        "(threadgov.E003) THREADGOV[\"MAX_THREAD\"] is not a threadgov setting",
        "HINT: Did you mean 'MAX_THREADS'?",
        "(threadgov.E004) THREADGOV[\"AFFINITY\"]='x' is not valid: expected 'request' or 'call'",
        "System check identified 3 issues",
    ):
        assert expected in proc.stderr, proc.stderr

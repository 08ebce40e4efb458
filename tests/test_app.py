"""``"threadgov"`` in INSTALLED_APPS: installed once at start-up, configured by THREADGOV and the
environment, refusing to start on a bad value. Each test is a process of its own (Django is set up
once per process)."""

import json
import sys

from tgsite.testing import environment, run

# Counts install_resolved() calls, sets Django up twice (as get_asgi_application() after an
# explicit django.setup() does) and reports the governor.
SCRIPT = r"""
import json, sys
import threadgov
from threadgov import _governor

calls = []
original = _governor.install_resolved

def counting(size, options):
    calls.append(size.size)
    return original(size, options)

_governor.install_resolved = counting
if "--install-first" in sys.argv:
    threadgov.install(max_threads=2)
    calls.clear()
try:
    import django
    django.setup()
    from django.core.asgi import get_asgi_application
    first = _governor.current()
    get_asgi_application()
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(3)
governor = _governor.current()
report = {"calls": calls, "same": governor is first}
if governor is not None:
    report.update(size=governor.size.size, source=governor.size.source,
                  options=governor.options.__dict__)
try:
    import prometheus_client
    report["collector"] = any(type(c).__name__ == "StatsCollector"
                              for c in list(prometheus_client.REGISTRY._collector_to_names))
except ImportError:
    pass
print(json.dumps(report))
"""


def start(tmp_path, *args, threadgov=None, **env):
    extra = {"DJANGO_SETTINGS_MODULE": "tgsite.settings", "TGSITE_DIR": str(tmp_path)}
    if threadgov is not None:
        extra["TGSITE_THREADGOV"] = json.dumps(threadgov)
    extra.update(env)
    proc = run(["-c", SCRIPT, *args], environment(**extra), tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return proc, json.loads(lines[-1])


def test_installed_once_at_startup_from_the_setting(tmp_path):
    proc, report = start(tmp_path, threadgov={"MAX_THREADS": 5, "AFFINITY": "call", "MAX_QUEUE": 9})
    assert proc.returncode == 0, proc.stderr
    assert report["calls"] == [5] and report["same"]
    assert report["size"] == 5 and report["source"] == 'THREADGOV["MAX_THREADS"]'
    assert report["options"] == {"affinity": "call", "close_connections": True, "max_queue": 9,
                                 "queue_timeout": None, "slow_call_threshold": None}
    assert report["collector"] is False  # METRICS is off by default


def test_installed_with_defaults_without_a_setting(tmp_path):
    proc, report = start(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert report["calls"] == [report["size"]] and report["source"].startswith("default (")


def test_environment_wins_over_the_setting(tmp_path):
    proc, report = start(
        tmp_path, threadgov={"MAX_THREADS": 5, "QUEUE_TIMEOUT": 9}, ASGI_THREADS="3",
        THREADGOV_QUEUE_TIMEOUT="0.5",
    )
    assert proc.returncode == 0, proc.stderr
    assert report["size"] == 3 and report["source"] == "ASGI_THREADS"
    assert report["options"]["queue_timeout"] == 0.5


def test_install_false_opts_out(tmp_path):
    proc, report = start(tmp_path, threadgov={"INSTALL": False, "MAX_THREADS": 5})
    assert proc.returncode == 0, proc.stderr
    assert report == {"calls": [], "same": True, "collector": False}


def test_an_explicit_install_before_setup_wins(tmp_path):
    proc, report = start(tmp_path, "--install-first", threadgov={"MAX_THREADS": 5})
    assert proc.returncode == 0, proc.stderr
    assert report["calls"] == [] and report["size"] == 2 and report["source"] == "max_threads argument"
    assert "already installed by install() (max_threads=2" in proc.stderr  # INFO, tgsite's LOGGING


def test_metrics_setting_registers_the_collector(tmp_path):
    proc, report = start(tmp_path, threadgov={"METRICS": True, "MAX_THREADS": 2})
    assert proc.returncode == 0, proc.stderr
    assert report["collector"] is True and report["size"] == 2


def test_a_bad_value_refuses_to_start_with_one_line(tmp_path):
    proc, report = start(tmp_path, threadgov={"MAX_THREADS": 5}, ASGI_THREADS="abc")
    assert proc.returncode == 3
    assert report == {
        "error": "ImproperlyConfigured",
        "message": "ASGI_THREADS='abc' is not valid: expected a whole number from 1 to 1024",
    }
    proc, report = start(tmp_path, threadgov={"MAX_THEADS": 5, "AFFINITY": "both"})
    assert report["error"] == "ImproperlyConfigured"
    assert report["message"] == (
        'THREADGOV["MAX_THEADS"] is not a threadgov setting (and 1 more problem: run `manage.py '
        "check` to see all)"
    )


def test_a_bad_value_is_left_to_the_checks_in_management_commands(tmp_path):
    env = environment(DJANGO_SETTINGS_MODULE="tgsite.settings", TGSITE_DIR=str(tmp_path),
                      TGSITE_THREADGOV=json.dumps({"AFFINITY": "both"}))
    # `migrate` runs the system checks first: they stop it, with the check's message and hint.
    proc = run(["-m", "django", "migrate", "--plan"], env, tmp_path)
    assert proc.returncode == 1
    assert "threadgov: not installed: THREADGOV[\"AFFINITY\"]='both' is not valid" in proc.stderr
    assert "(threadgov.E004) THREADGOV[\"AFFINITY\"]='both' is not valid: expected 'request' or 'call'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_management_commands_with_the_app_and_a_good_config(tmp_path):
    env = environment(DJANGO_SETTINGS_MODULE="tgsite.settings", TGSITE_DIR=str(tmp_path),
                      TGSITE_THREADGOV=json.dumps({"MAX_THREADS": 7}))
    proc = run(["-m", "django", "check"], env, tmp_path)
    assert proc.returncode == 0 and "no issues" in proc.stdout, proc.stderr
    proc = run(["-m", "django", "threadgov", "config"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["max_threads", "7"] and line.endswith('THREADGOV["MAX_THREADS"]') for line in lines)
    assert "installed             yes       max_threads=7 in this process" in proc.stdout
    assert sys.version.split()[0] in lines[0]


def test_manage_py_threadgov_bad_input_exits_2_with_one_line(tmp_path):
    env = environment(DJANGO_SETTINGS_MODULE="tgsite.settings", TGSITE_DIR=str(tmp_path),
                      TGSITE_THREADGOV=json.dumps({"INSTALL": False}))
    proc = run(["-m", "django", "threadgov", "budget", "--processes", "x"], env, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "argument --processes: invalid value 'x'" in proc.stderr
    proc = run(["-m", "django", "threadgov", "budget"], env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == 'CommandError: --max-connections is required (or set THREADGOV["MAX_CONNECTIONS"])\n'

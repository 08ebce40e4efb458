"""``python -m threadgov config|budget|stats`` (subprocesses) and ``manage.py threadgov`` (in-process
through ``call_command``)."""

import io
import json
import sys

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from tgsite.testing import environment, run
from threadgov.management.commands.threadgov import Command


def cli(tmp_path, *args, **env):
    return run(["-m", "threadgov", *args], environment(**env), tmp_path, timeout=60)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- config ---------------------------------------------------------------------------------------


def test_config_prints_size_and_source(tmp_path):
    proc = cli(tmp_path, "config", ASGI_THREADS="12", WEB_CONCURRENCY="3")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines()[1:]}
    assert rows["max_threads"] == ["12", "ASGI_THREADS"]
    assert rows["worker_processes"] == ["3", "WEB_CONCURRENCY"]
    assert rows["affinity"] == ["request", "default"]
    assert rows["cpus"][0].isdigit()
    assert proc.stdout.startswith("threadgov 0.1.0 (Python ")
    assert "asgiref " in proc.stdout.splitlines()[0] and "Django " in proc.stdout.splitlines()[0]


def test_config_default_source_names_the_cpus(tmp_path):
    proc = cli(tmp_path, "config", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    cpus = data["cpus"]
    assert data["settings"]["max_threads"] == {
        "value": min(32, cpus + 4),
        "source": f"default (python>=3.8, {cpus} {'cpu' if cpus == 1 else 'cpus'})",
    }
    assert data["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["installed_in_this_process"] is None


def test_config_reads_the_settings_module_when_set(tmp_path):
    proc = cli(tmp_path, "config", "--json", DJANGO_SETTINGS_MODULE="tgsite.settings",
               TGSITE_THREADGOV=json.dumps({"MAX_THREADS": 9, "MAX_QUEUE": 4}))
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    assert settings["max_threads"] == {"value": 9, "source": 'THREADGOV["MAX_THREADS"]'}
    assert settings["max_queue"] == {"value": 4, "source": 'THREADGOV["MAX_QUEUE"]'}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"ASGI_THREADS": "abc"}, "ASGI_THREADS='abc' is not valid: expected a whole number from 1 to 1024"),
        ({"THREADGOV_QUEUE_TIMEOUT": "later"}, "THREADGOV_QUEUE_TIMEOUT='later' is not valid"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY='0' is not valid"),
        ({"DJANGO_SETTINGS_MODULE": "no_such_settings_module"},
         "cannot load the Django settings DJANGO_SETTINGS_MODULE='no_such_settings_module'"),
        ({"DJANGO_SETTINGS_MODULE": "tgsite.settings", "TGSITE_THREADGOV": '{"MAX_THREADS": "8"}'},
         "THREADGOV[\"MAX_THREADS\"]='8' is not valid"),
    ],
)
def test_config_bad_input_exits_2_with_one_line_naming_it(tmp_path, env, expected):
    proc = cli(tmp_path, "config", **env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line(proc.stderr).startswith(f"python -m threadgov config: error: {expected}")


# -- budget ---------------------------------------------------------------------------------------


def test_budget_prints_safe_n_and_connections(tmp_path):
    proc = cli(tmp_path, "budget", "--processes", "4", "--replicas", "2", "--max-connections", "100",
               "--reserved", "10", "--server-reserved", "3", "--threads", "16")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "usable connections:   100 max_connections - 3 reserved by the server - 10 kept for other clients = 87" in out
    assert "clients per thread:   4 processes x 2 replicas x 1 alias = 8" in out
    assert "safe N per process:   10 (10 x 8 = 80 connections <= 87)" in out
    assert "with N = 16 (--threads): 16 x 8 = 128 connections: EXCEEDS the budget by 41" in out
    assert "transaction pooling" in out and "default_pool_size" in out


def test_budget_json_and_defaults_from_the_environment(tmp_path):
    proc = cli(tmp_path, "budget", "--max-connections", "100", "--json", ASGI_THREADS="8", WEB_CONCURRENCY="4")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["threads"], data["threads_source"], data["processes"]) == (8, "ASGI_THREADS", 4)
    assert (data["connections"], data["fits"], data["safe_threads"]) == (32, True, 25)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--max-connections", "abc"], "argument --max-connections: invalid value 'abc'"),
        (["--max-connections", "100", "--processes", "0"], "argument --processes: invalid value '0'"),
        ([], "--max-connections is required"),
        (["--max-connections", "100", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_budget_bad_input_exits_2_with_one_line(tmp_path, args, expected):
    proc = cli(tmp_path, "budget", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert expected in one_line(proc.stderr)


# -- stats ----------------------------------------------------------------------------------------


def test_stats_bad_url_and_unreachable_server(tmp_path):
    proc = cli(tmp_path, "stats", "--url", "localhost:8000")
    assert proc.returncode == 2 and "--url 'localhost:8000' is not valid" in one_line(proc.stderr)
    proc = cli(tmp_path, "stats")
    assert proc.returncode == 2 and "the following arguments are required: --url" in one_line(proc.stderr)
    # Port 1 on the loopback: nothing listens there.
    proc = cli(tmp_path, "stats", "--url", "http://127.0.0.1:1/stats")
    assert proc.returncode == 1
    assert one_line(proc.stderr).startswith("python -m threadgov stats: cannot read http://127.0.0.1:1/stats")


def test_demo_is_still_listed(tmp_path):
    proc = cli(tmp_path, "--help")
    assert proc.returncode == 0
    for name in ("demo", "config", "budget", "stats"):
        assert name in proc.stdout


# -- manage.py threadgov (in-process) -------------------------------------------------------------


def command(*args) -> str:
    out = io.StringIO()
    call_command(Command(), *args, stdout=out)
    return out.getvalue()


def test_manage_py_config_uses_the_settings(monkeypatch):
    monkeypatch.delenv("ASGI_THREADS", raising=False)
    with override_settings(THREADGOV={"MAX_THREADS": 11, "AFFINITY": "call"}):
        data = json.loads(command("config", "--json"))
    assert data["settings"]["max_threads"] == {"value": 11, "source": 'THREADGOV["MAX_THREADS"]'}
    assert data["settings"]["affinity"] == {"value": "call", "source": 'THREADGOV["AFFINITY"]'}
    monkeypatch.setenv("ASGI_THREADS", "4")
    with override_settings(THREADGOV={"MAX_THREADS": 11}):
        assert "max_threads           4         ASGI_THREADS" in command("config")


def test_manage_py_bad_input_is_a_command_error_with_status_2(monkeypatch):
    monkeypatch.setenv("ASGI_THREADS", "zero")
    with pytest.raises(CommandError) as info:
        command("config")
    assert info.value.returncode == 2
    assert str(info.value) == "ASGI_THREADS='zero' is not valid: expected a whole number from 1 to 1024"
    monkeypatch.delenv("ASGI_THREADS")
    with pytest.raises(CommandError) as info:
        command("budget", "--processes", "x", "--max-connections", "10")
    assert "invalid value 'x'" in str(info.value)


def test_manage_py_budget_counts_the_server_aliases(monkeypatch):
    monkeypatch.delenv("ASGI_THREADS", raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    # The test project has two aliases: SQLite (no server) and pg.
    with override_settings(THREADGOV={"MAX_THREADS": 10, "WORKER_PROCESSES": 3, "MAX_CONNECTIONS": 50,
                                      "RESERVED_CONNECTIONS": 5}):
        data = json.loads(command("budget", "--json"))
    assert (data["usable"], data["processes"], data["aliases"], data["threads"]) == (45, 3, 1, 10)
    assert (data["connections"], data["fits"], data["safe_threads"]) == (30, True, 15)

"""``python -m threadgov demo``, run in a subprocess: the demo configures Django, once per process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(tmp_path, *args, timeout=120):
    env = dict(os.environ)
    env.pop("ASGI_THREADS", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "threadgov", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_bounds_threads_and_connections(tmp_path):
    out = tmp_path / "demo.json"
    proc = run_cli(tmp_path, "demo", "--requests", "200", "--threads", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    # The side-by-side table and the governor's statistics are printed.
    assert "stock asgiref" in proc.stdout and "+ its handler" in proc.stdout
    for label in ("peak process threads", "threads that ran the view", "DB connections opened", "requests/s"):
        assert label in proc.stdout
    assert "threadgov.stats()" in proc.stdout

    data = json.loads(out.read_text())
    assert data["requests"] == 200 and data["max_threads"] == 4
    stock = data["stock"]
    assert stock["errors"] == 0
    for gov in (data["governed"], data["governed_handler"]):  # Django's handler, then threadgov's
        assert gov["errors"] == 0
        # Governed: bounded by max_threads, every view on a threadgov worker.
        assert gov["view_threads"] <= 4
        assert all(name.startswith("threadgov-") for name in gov["view_thread_names_sample"])
        assert gov["peak_threads"] <= gov["thread_bound"] == gov["threads_before"] + 4
        assert gov["threads_started"] <= 4
        assert gov["db_opened"] <= 4 and gov["db_peak_open"] <= 4
        # ...and every connection closed by uninstall(), none left to the garbage collector.
        assert gov["db_closed"] == gov["db_opened"] and gov["db_freed_by_gc"] == 0
        assert gov["db_closed_by_demo"] == 0
        assert gov["uninstalled_cleanly"]
        assert gov["stats"]["completed"] == gov["stats"]["submitted"] >= 200
    # threadgov's handler: one governed call per request (Django 4.2: two, it closes after sending).
    calls = data["governed_handler"]["stats"]["submitted"]
    assert calls in (200, 400) and calls < data["governed"]["stats"]["submitted"]

    # Stock asgiref: a thread (and so a connection) per request.
    assert stock["view_threads"] > 4
    assert stock["db_opened"] > 4
    assert stock["threads_alive_after"] == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["demo", "--threads", "0"], ("--threads", "max_threads")),
        (["demo", "--threads", "many"], ("--threads", "max_threads")),
        (["demo", "--affinity", "thread"], ("--affinity",)),
        (["demo", "--requests", "-1"], ("--requests",)),
        ([], ("COMMAND",)),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, words):
    proc = run_cli(tmp_path, *args, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert all(word in lines[0] for word in words)


def test_bad_asgi_threads_exits_2_with_one_line(tmp_path):
    env_proc = subprocess.run(
        [sys.executable, "-m", "threadgov", "demo"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ASGI_THREADS": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_proc.returncode == 2
    assert env_proc.stderr.count("\n") == 1 and "ASGI_THREADS" in env_proc.stderr


def test_main_returns_exit_status_in_process(capsys):
    from threadgov.__main__ import main

    assert main(["demo", "--threads", "0"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()

"""Smoke test of the end-to-end benchmark harness (benchmarks/e2e) in --tiny mode.

Starts uvicorn three times (stock, CONN_MAX_AGE=0; threadgov-governed, N=2, with Django's handler and
with threadgov's) on SQLite and drives each with wrk for 1 s at 4 clients. Needs wrk on PATH: skipped without it, except under CI (env CI set), where
it fails because CI installs wrk.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_benchmark_runs_and_reports(tmp_path):
    if shutil.which("wrk") is None:
        message = "wrk is not on PATH (install it with `apt-get install wrk`)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set and CI installs wrk")
        pytest.skip(message)
    for module in ("uvicorn", "django", "psutil"):
        pytest.importorskip(module)

    out = tmp_path / "tiny.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.e2e", "--tiny", "--no-plots", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the harness then stops its server (its own process group) before exiting.
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"the harness took more than 120 s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"

    data = json.loads(out.read_text())
    results = {r["kind"]: r for r in data["results"]}
    assert set(results) == {"stock-cma0", "governed", "governed-handler"}, results.keys()
    for kind, result in results.items():
        assert result["rps"] > 0, (kind, result["wrk_output"])
        assert result["non2xx"] == 0, (kind, result["wrk_output"])
    for kind in ("governed", "governed-handler"):
        governed = results[kind]
        assert governed["threads"] == 2
        assert isinstance(governed["peak_threads"], int) and governed["peak_threads"] > 0
        # The governed server reports its pool through /_stats; the stock one has none (404).
        assert governed["governor"] is not None and governed["governor"]["size"] == 2
        assert governed["governor"]["threads_alive"] <= 2
    assert results["stock-cma0"]["governor"] is None

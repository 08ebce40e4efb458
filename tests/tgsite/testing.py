"""Helpers of the tests that run tgsite in processes of their own (servers, scripts, commands)."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Pattern

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
STARTUP_TIMEOUT = 60.0  # seconds; a safety net, never a synchronisation

# Variables of the outer environment that would change what the processes resolve.
_CLEARED = (
    "ASGI_THREADS",
    "DJANGO_SETTINGS_MODULE",
    "THREADGOV_MAX_QUEUE",
    "THREADGOV_QUEUE_TIMEOUT",
    "THREADGOV_SLOW_CALL",
    "THREADGOV_METRICS_INTERVAL",
    "WEB_CONCURRENCY",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
    "TGSITE_DB",
    "TGSITE_DIR",
    "TGSITE_THREADGOV",
)


def environment(**extra: Optional[str]) -> Dict[str, str]:
    """The test process's environment without threadgov's variables, plus ``extra`` (None: unset),
    with the repository and ``tests/`` on ``PYTHONPATH`` (so ``threadgov`` and ``tgsite`` import)."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(args: List[str], env: Dict[str, str], cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


class Server:
    """A server subprocess whose log is read line by line by a thread (so its pipe never fills).

    ``start()`` returns once ``ready`` (a regex) has matched ``count`` log lines; the first group of
    ``port_pattern`` gives the port it listens on. ``stop()`` always ends it (SIGTERM, then SIGKILL).
    """

    def __init__(self, argv: List[str], env: Dict[str, str], cwd, *, port_pattern: str,
                 ready: str, count: int = 1):
        self.argv, self.env, self.cwd = argv, env, cwd
        self.port_pattern: Pattern = re.compile(port_pattern)
        self.ready: Pattern = re.compile(ready)
        self.count = count
        self.port: Optional[int] = None
        self.lines: List[str] = []
        self._events: "queue.Queue[Optional[str]]" = queue.Queue()
        self.proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def start(self) -> "Server":
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="test-server-log", daemon=True)
        self._reader.start()
        ready = 0
        while ready < self.count or self.port is None:
            try:
                line = self._events.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"server not ready in {STARTUP_TIMEOUT}s:\n{self.log}") from None
            if line is None:
                raise AssertionError(f"server exited ({self.proc.poll()}) before it was ready:\n{self.log}")
            match = self.port_pattern.search(line)
            if match and self.port is None:
                self.port = int(match.group(1))
            if self.ready.search(line):
                ready += 1
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._events.put(line)
        self._events.put(None)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, *, headers: Optional[dict] = None, timeout: float = 30.0):
        """``(status, body bytes, headers)`` of a GET; a new connection every time."""
        request = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        if self._reader is not None:
            self._reader.join(15)
        self.proc.stdout.close()


def parse_metrics(text: str) -> Dict[str, float]:
    """``{"name{labels}": value}`` of a Prometheus text exposition (no comments)."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    return samples

"""The server matrix: a governed Django + Channels app (``tests/servers/``) under real ASGI servers.

Each server runs as a subprocess on a free port of 127.0.0.1, serving ``servers.asgi:application``
with ``threadgov.install(max_threads=N)``. For each server:

* concurrent HTTP requests to a sync view doing a query: all answered, from governed threads only,
  at most N worker threads and at most N PostgreSQL backends per server process (backends are told
  apart by ``application_name``, which holds the process id);
* websocket exchanges with a sync Channels consumer doing a query (needs the ``websockets``
  package): replies in order, from governed threads, within the same bounds;
* shutdown by SIGTERM or SIGINT: the process exits and no backend of it remains. Servers that send
  lifespan events run ``threadgov.uninstall()`` at ``lifespan.shutdown`` (``threadgov.asgi``'s
  ``GovernorMiddleware``) and report that every worker exited and no backend was left *before* the process
  ended; daphne sends none, so there threadgov's ``atexit`` hook closes them, and the app checks
  that at exit, while the process is still alive.

Servers that are not installed are skipped with a reason. Without PostgreSQL the module is skipped
(a failure under CI). A stock control (uvicorn without threadgov) shows that the bounds are not
trivially met.
"""

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
N = 4  # threadgov's max_threads in every server
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
WORKER = re.compile(r"threadgov-\d+$")
# Threads of stock asgiref / asyncio executors: none may exist in a governed server.
STOCK_THREAD = re.compile(r"(ThreadPoolExecutor-|asyncio_)")


@dataclass
class ServerKind:
    name: str
    modules: Tuple[str, ...]  # needed to run it
    argv: Callable[[int], List[str]]  # the command after ``python -m``, given the port
    stop: signal.Signals
    lifespan: bool  # sends lifespan events (so the app's shutdown hook runs)
    processes: int = 1  # worker processes serving requests
    env: Dict[str, str] = field(default_factory=dict)


def _gunicorn_extra() -> List[str]:
    """Recent gunicorn (27) opens a control socket at a fixed path under $HOME by default: not here."""
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return []
    return ["--no-control-socket"] if any(
        s.name == "control_socket_disable" for s in KNOWN_SETTINGS
    ) else []


SERVERS = [
    ServerKind(
        "uvicorn",
        ("uvicorn",),
        lambda port: ["uvicorn", "servers.asgi:application", "--host", "127.0.0.1",
                      "--port", str(port), "--lifespan", "on", "--log-level", "warning"],
        signal.SIGINT,
        lifespan=True,
    ),
    ServerKind(
        "uvicorn-threadgov-handler",  # threadgov.asgi.get_asgi_application()
        ("uvicorn",),
        lambda port: ["uvicorn", "servers.asgi:application", "--host", "127.0.0.1",
                      "--port", str(port), "--lifespan", "on", "--log-level", "warning"],
        signal.SIGINT,
        lifespan=True,
        env={"THREADGOV_TEST_HANDLER": "threadgov"},
    ),
    ServerKind(
        "daphne",
        ("daphne",),
        lambda port: ["daphne", "-b", "127.0.0.1", "-p", str(port), "servers.asgi:application"],
        signal.SIGTERM,
        lifespan=False,
        # daphne sets its loop's default executor from ASGI_THREADS when it is imported: threadgov
        # must replace it.
        env={"ASGI_THREADS": str(N)},
    ),
    ServerKind(
        "hypercorn",
        ("hypercorn",),
        lambda port: ["hypercorn", "--bind", f"127.0.0.1:{port}", "servers.asgi:application"],
        signal.SIGTERM,
        lifespan=True,
    ),
    ServerKind(
        "granian",
        ("granian",),
        lambda port: ["granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1", "--log-level", "warning", "servers.asgi:application"],
        signal.SIGINT,
        lifespan=True,
    ),
    ServerKind(
        "gunicorn",
        ("gunicorn", "uvicorn"),
        lambda port: ["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
                      "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10",
                      "--log-level", "warning", *_gunicorn_extra(), "servers.asgi:application"],
        signal.SIGTERM,
        lifespan=True,
        processes=2,
    ),
]


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitor():
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(**PG, autocommit=True, connect_timeout=5,
                               application_name=f"threadgov-servers-monitor-{os.getpid()}")
    except psycopg.OperationalError as exc:
        error = " ".join(str(exc).split())
        reason = f"PostgreSQL unreachable at {PG['host']}:{PG['port']} ({error})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the server must be running", pytrace=False)
        pytest.skip(reason)
    with conn:
        yield conn


def backends(monitor, prefix: str) -> Dict[str, int]:
    """Backends per application_name (one per server process) whose name starts with prefix."""
    rows = monitor.execute(
        "SELECT application_name, count(*) FROM pg_stat_activity "
        "WHERE application_name LIKE %s GROUP BY application_name",
        (prefix.replace("_", r"\_") + "-%",),
    ).fetchall()
    return dict(rows)


def wait_no_backends(monitor, prefix: str, timeout: float = 10.0) -> Dict[str, int]:
    """Backends leave pg_stat_activity shortly after their clients close them."""
    deadline = time.monotonic() + timeout
    while (left := backends(monitor, prefix)) and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok: polls the server, which sends no event
    return left


# -- running a server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    # A process started in the background by a non-interactive shell ignores SIGINT, and children
    # inherit that: give the server the default disposition (it installs its own handler).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    def __init__(self, kind: ServerKind, log_dir: Path, *, stock: bool = False):
        self.kind = kind
        self.port = free_port()
        self.app_name = f"tg-{kind.name}{'-stock' if stock else ''}-{os.getpid()}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{kind.name}{'-stock' if stock else ''}.log"
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("THREADGOV_", "ASGI_THREADS", "DJANGO_SETTINGS_MODULE"))
        }
        env.update(
            PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")]),
            DJANGO_SETTINGS_MODULE="servers.settings",
            THREADGOV_TEST_THREADS=str(N),
            THREADGOV_TEST_APP_NAME=self.app_name,
            PYTHONUNBUFFERED="1",
        )
        if stock:
            env["THREADGOV_TEST_STOCK"] = "1"
        env.update(kind.env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *kind.argv(self.port)],
            cwd=str(TESTS),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown kills it and its workers
            preexec_fn=_default_sigint,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> dict:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # the server's log says why
            raise AssertionError(
                f"{self.kind.name}: GET {path} -> {exc.code}; end of its log:\n{self.log()[-4000:]}"
            ) from None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.kind.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/debug/", timeout=2.0)
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.kind.name} not ready in {STARTUP_TIMEOUT} s:\n{self.log()}")
                time.sleep(0.1)  # sleep-ok: polls a starting server

    def stop(self) -> Optional[int]:
        """Send the kind's stop signal to the server's main process; its exit code, or None."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.kind.stop)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def kill(self) -> None:
        """Whatever is left of the server's process group (our own children only)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self._log.close()


def debug_by_process(server: Server, pids, rounds: int = 8) -> Dict[int, dict]:
    """/debug/ of every server process in ``pids`` (asked concurrently, until each has answered)."""
    found: Dict[int, dict] = {}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(rounds):
            for data in pool.map(lambda _: server.get("/debug/"), range(8)):
                found.setdefault(data["pid"], data)
            if set(pids) <= set(found):
                break
    missing = set(pids) - set(found)
    assert not missing, f"no /debug/ answer from server processes {missing}"
    return found


def check_process_bounds(server: Server, monitor, pids) -> Dict[int, dict]:
    """Every process: at most N governed workers, no stock executor thread, at most N backends."""
    found = debug_by_process(server, pids)
    for pid, data in found.items():
        stats, threads = data["stats"], data["threads"]
        assert stats is not None and stats["size"] == N, data
        workers = [t for t in threads if WORKER.match(t)]
        assert stats["threads_alive"] <= N and len(workers) <= N, data
        assert stats["peak_busy"] <= N, data
        stock = [t for t in threads if STOCK_THREAD.match(t)]
        assert not stock, f"stock executor threads in process {pid}: {threads}"
    per_process = backends(monitor, server.app_name)
    assert per_process, "no backend seen: the app did not reach PostgreSQL?"
    assert len(per_process) <= server.kind.processes, per_process
    assert all(count <= N for count in per_process.values()), per_process
    return found


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVERS, ids=lambda kind: kind.name)
def server(request, monitor, tmp_path_factory):
    kind: ServerKind = request.param
    for module in kind.modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{kind.name}: the {module!r} package is not installed "
                        f"(pip install {module})")
    pytest.importorskip("channels")
    running = Server(kind, tmp_path_factory.mktemp(kind.name))
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()
        monitor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            (running.app_name + "-%",),
        )


def get_many(server: Server, count: int, concurrency: int) -> List[dict]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: server.get(f"/db/?n={i}"), range(count)))


# -- the matrix (tests run in this order for each server; the last one stops it) ------------------


def test_http_requests_run_on_at_most_n_threads_and_backends(server, monitor):
    responses = get_many(server, 64, 24)
    assert [r["n"] for r in responses] == [str(i) for i in range(64)]
    by_process: Dict[int, List[dict]] = {}
    for r in responses:
        by_process.setdefault(r["pid"], []).append(r)
    assert 1 <= len(by_process) <= server.kind.processes
    for pid, answered in by_process.items():
        threads = {r["thread"] for r in answered}
        assert all(WORKER.match(t) for t in threads), threads
        assert len(threads) <= N and len({r["backend"] for r in answered}) <= N, answered
    found = check_process_bounds(server, monitor, by_process)
    # 24 clients at once kept more than one worker busy: the pool was used, not one thread.
    assert max(d["stats"]["peak_busy"] for d in found.values()) > 1


def test_websocket_consumers_run_on_at_most_n_threads_and_backends(server, monitor):
    try:
        from websockets.sync.client import connect
    except ImportError:
        pytest.skip("the websockets package (>= 11, with its sync client) is not installed")

    def client(i: int) -> List[dict]:
        replies = []
        with connect(f"ws://127.0.0.1:{server.port}/ws/", open_timeout=10) as ws:
            for seq in range(3):
                ws.send(json.dumps({"seq": seq}))
                replies.append(json.loads(ws.recv(timeout=10)))
        return replies

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    pids = set()
    for replies in results:
        assert [r["seq"] for r in replies] == [0, 1, 2]
        assert all(WORKER.match(r["thread"]) for r in replies), replies
        pids.update(r["pid"] for r in replies)
    threads = {(r["pid"], r["thread"]) for replies in results for r in replies}
    for pid in pids:
        assert len({t for p, t in threads if p == pid}) <= N
    check_process_bounds(server, monitor, pids)


def test_shutdown_closes_every_connection(server, monitor):
    assert backends(monitor, server.app_name), "the earlier tests left no backend to close"
    code = server.stop()
    log = server.log()
    assert code is not None, (
        f"{server.kind.name} still running {STOP_TIMEOUT} s after {server.kind.stop.name}:\n{log}"
    )
    assert wait_no_backends(monitor, server.app_name) == {}, log
    if server.kind.lifespan:
        # Each process ran threadgov.uninstall() at lifespan.shutdown, every worker exited in
        # time, and its backends were gone while the process was still alive.
        done = log.count("threadgov-test: lifespan shutdown: uninstall() -> True")
        clean = log.count("threadgov-test: backends after uninstall: 0")
        assert done == clean == server.kind.processes, log
    else:
        # No lifespan (daphne): threadgov's atexit hook uninstalled it; the app's own atexit hook,
        # which runs after it, found no backend left while the process was still alive.
        assert log.count("threadgov-test: backends at exit: 0") == server.kind.processes, log
    assert "Traceback" not in log, log


# -- stock control ---------------------------------------------------------------------------------


def test_control_stock_uvicorn_exceeds_the_bounds(monitor, tmp_path):
    """The same app and load without threadgov: more than N threads and backends."""
    if importlib.util.find_spec("uvicorn") is None:
        pytest.skip("uvicorn is not installed")
    kind = SERVERS[0]
    server = Server(kind, tmp_path, stock=True)
    try:
        server.wait_ready()
        responses = get_many(server, 64, 24)
        threads = {r["thread"] for r in responses}
        opened = {r["backend"] for r in responses}
        assert not any(WORKER.match(t) for t in threads)
        assert len(threads) > N and len(opened) > N, (len(threads), len(opened))
    finally:
        server.kill()
        monitor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            (server.app_name + "-%",),
        )

"""Prometheus metrics and the stats endpoint: the collector and the multiprocess mirror on fake
statistics, the Django views in-process, and real servers: uvicorn (one process) under load, and
gunicorn with two uvicorn workers (multiprocess mode)."""

import json
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from django.test import RequestFactory

pytest.importorskip("prometheus_client")

from tgsite.testing import TESTS, Server, environment, parse_metrics, run  # noqa: E402
from threadgov import _metrics  # noqa: E402
from threadgov._stats import Stats, Timings  # noqa: E402
from threadgov.views import metrics_view, stats_view  # noqa: E402

STATS = Stats(
    size=8, source="ASGI_THREADS", affinity="request", threads_alive=5, busy=2, idle=3, leased=4,
    queued=6, waiting_contexts=1, peak_busy=7, peak_queued=9, submitted=100, completed=90, failed=3,
    cancelled=2, dropped=6, rejected=1, slow_calls=4, wait_time=Timings(90, 0.001, 0.01, 0.02, 0.5),
    run_time=Timings(90, 0.002, 0.02, 0.04, 1.5), db_connections=(("default", 5), ("replica", 2)),
    process_threads=12,
)

EXPECTED = {
    "threadgov_installed": 1.0, "threadgov_size": 8.0, "threadgov_threads_alive": 5.0,
    "threadgov_busy": 2.0, "threadgov_idle": 3.0, "threadgov_leased": 4.0, "threadgov_queued": 6.0,
    "threadgov_waiting_contexts": 1.0, "threadgov_peak_busy": 7.0, "threadgov_peak_queued": 9.0,
    "threadgov_process_threads": 12.0, 'threadgov_db_connections{alias="default"}': 5.0,
    'threadgov_db_connections{alias="replica"}': 2.0, "threadgov_calls_submitted_total": 100.0,
    "threadgov_calls_completed_total": 90.0, "threadgov_calls_failed_total": 3.0,
    "threadgov_calls_cancelled_total": 2.0, "threadgov_calls_dropped_total": 6.0,
    "threadgov_calls_rejected_total": 1.0,
    "threadgov_calls_slow_total": 4.0, 'threadgov_wait_time_seconds{quantile="0.5"}': 0.001,
    'threadgov_wait_time_seconds{quantile="0.95"}': 0.01, 'threadgov_wait_time_seconds{quantile="0.99"}': 0.02,
    "threadgov_wait_time_max_seconds": 0.5, 'threadgov_run_time_seconds{quantile="0.5"}': 0.002,
    'threadgov_run_time_seconds{quantile="0.95"}': 0.02, 'threadgov_run_time_seconds{quantile="0.99"}': 0.04,
    "threadgov_run_time_max_seconds": 1.5,
}


def exposition(*collectors) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)
    return parse_metrics(generate_latest(registry).decode())


class FakeGovernor:
    pass


# -- the collector and the mirror, on fake statistics --------------------------------------------


def test_collector_exposes_every_field_of_one_snapshot():
    calls = []

    def snapshot():
        calls.append(1)
        return object(), STATS

    samples = exposition(_metrics.StatsCollector(snapshot))
    assert {k: v for k, v in samples.items() if not k.endswith("_created")} == EXPECTED
    assert len(calls) == 1  # describe() (at registration) reads no stats; one snapshot per scrape


def test_collector_when_not_installed():
    samples = exposition(_metrics.StatsCollector(lambda: (None, None)))
    assert samples == {"threadgov_installed": 0.0}


def test_mirror_copies_gauges_and_advances_counters_by_the_difference():
    from prometheus_client import CollectorRegistry, generate_latest

    governor = FakeGovernor()
    state = {"snapshot": (governor, STATS)}
    mirror = _metrics.Mirror(lambda: state["snapshot"])

    def samples():
        registry = CollectorRegistry()
        for metric in [mirror._installed, *mirror._gauges.values(), mirror._db, *mirror._counters.values()] + [
            m for pair in mirror._timings.values() for m in pair
        ]:
            registry.register(metric)
        return {k: v for k, v in parse_metrics(generate_latest(registry).decode()).items()
                if not k.endswith("_created")}

    mirror.update()
    assert samples() == EXPECTED
    mirror.update()  # nothing changed: counters stay
    assert samples() == EXPECTED
    state["snapshot"] = (governor, replace(STATS, submitted=130, busy=0, db_connections=(("default", 1),)))
    mirror.update()
    after = samples()
    assert after["threadgov_calls_submitted_total"] == 130.0 and after["threadgov_busy"] == 0.0
    assert after['threadgov_db_connections{alias="replica"}'] == 0.0  # gone from the stats: 0
    # A new governor counts from 0 again: its calls are added on top (a counter never decreases).
    state["snapshot"] = (FakeGovernor(), replace(STATS, submitted=10))
    mirror.update()
    assert samples()["threadgov_calls_submitted_total"] == 140.0
    state["snapshot"] = (None, None)
    mirror.update()
    after = samples()
    assert after["threadgov_installed"] == 0.0 and after["threadgov_size"] == 0.0
    assert after["threadgov_calls_submitted_total"] == 140.0


# -- the views, in-process ------------------------------------------------------------------------


@pytest.fixture
def metrics_enabled():
    yield
    _metrics.disable()


async def test_stats_view_when_not_installed():
    response = await stats_view(RequestFactory().get("/stats"))
    assert response.status_code == 503
    assert json.loads(response.content) == {"error": "threadgov is not installed in this process", "installed": False}
    assert response["Cache-Control"] == "no-store"
    response = await stats_view(RequestFactory().post("/stats"))
    assert response.status_code == 405


async def test_views_when_installed(governor, metrics_enabled):
    governor(3)
    from asgiref.sync import sync_to_async

    await sync_to_async(lambda: None)()
    response = await stats_view(RequestFactory().get("/stats"))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    data = json.loads(response.content)
    assert data["size"] == 3 and data["source"] == "max_threads argument" and data["submitted"] >= 1

    response = await metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    samples = parse_metrics(response.content.decode())
    assert samples["threadgov_size"] == 3.0 and samples["threadgov_installed"] == 1.0
    assert samples["threadgov_calls_submitted_total"] >= data["submitted"]
    response = await metrics_view(RequestFactory().get("/metrics", HTTP_ACCEPT="application/openmetrics-text"))
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


async def test_metrics_view_without_prometheus_client(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    response = await metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 503 and b"pip install 'threadgov[metrics]'" in response.content


# -- real servers ---------------------------------------------------------------------------------


def uvicorn_server(tmp_path, threadgov_setting, **env) -> Server:
    pytest.importorskip("uvicorn")
    return Server(
        [sys.executable, "-m", "uvicorn", "tgsite.asgi:application", "--host", "127.0.0.1", "--port", "0",
         "--no-access-log", "--lifespan", "off"],
        environment(TGSITE_DIR=str(tmp_path), TGSITE_THREADGOV=json.dumps(threadgov_setting), **env),
        tmp_path,
        port_pattern=r"Uvicorn running on http://127\.0\.0\.1:(\d+)",
        ready=r"Uvicorn running on",
    )


@pytest.fixture
def servers():
    started = []

    def start(server: Server) -> Server:
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def get_json(server: Server, path: str) -> dict:
    status, body, _ = server.get(path)
    assert status == 200, body
    return json.loads(body)


def get_metrics(server: Server) -> dict:
    status, body, headers = server.get("/-/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), body
    return parse_metrics(body.decode())


REQUESTS = 240
CLIENTS = 16


def test_uvicorn_metrics_match_stats_under_load(tmp_path, servers):
    server = servers(uvicorn_server(tmp_path, {"MAX_THREADS": 4, "METRICS": True}))

    def one(i: int) -> int:
        status, body, _ = server.get("/work/")
        return status

    scrapes = []
    with ThreadPoolExecutor(CLIENTS) as clients:
        futures = [clients.submit(one, i) for i in range(REQUESTS)]
        # Scrape while the load runs: every snapshot is self-consistent.
        while not all(f.done() for f in futures):
            scrapes.append(get_metrics(server))
            if len(scrapes) >= 20:
                break
        statuses = [f.result() for f in futures]
    assert statuses == [200] * REQUESTS
    for samples in scrapes:
        assert samples["threadgov_size"] == 4.0
        assert samples["threadgov_busy"] + samples["threadgov_idle"] <= samples["threadgov_threads_alive"] <= 4.0
        assert samples["threadgov_leased"] <= 4.0
        assert samples["threadgov_calls_completed_total"] <= samples["threadgov_calls_submitted_total"]

    # Quiet now: the metrics, then the stats endpoint of the same server, agree.
    metrics = get_metrics(server)
    stats = get_json(server, "/-/threadgov/stats")
    assert metrics["threadgov_installed"] == 1.0
    assert metrics["threadgov_size"] == stats["size"] == 4
    assert metrics["threadgov_threads_alive"] == stats["threads_alive"] <= 4
    assert metrics['threadgov_db_connections{alias="default"}'] == stats["db_connections"]["default"]
    assert 1 <= stats["db_connections"]["default"] <= 4  # CONN_MAX_AGE=60: one per worker that ran /work/
    assert metrics["threadgov_peak_busy"] <= stats["peak_busy"] <= 4
    for name, field in (("submitted", "submitted"), ("completed", "completed"), ("failed", "failed"),
                        ("cancelled", "cancelled"), ("dropped", "dropped"), ("rejected", "rejected"),
                        ("slow", "slow_calls")):
        value = metrics[f"threadgov_calls_{name}_total"]
        # Counters only grow; between the two reads only the scrape's own calls ran (a handful).
        assert value <= stats[field] <= value + 10, (name, value, stats[field])
    assert metrics["threadgov_calls_submitted_total"] >= 2 * REQUESTS  # >= the view and a signal each
    assert stats["failed"] == stats["rejected"] == 0
    for timing in ("wait_time", "run_time"):
        assert (metrics[f'threadgov_{timing}_seconds{{quantile="0.5"}}']
                <= metrics[f'threadgov_{timing}_seconds{{quantile="0.99"}}']
                <= metrics[f"threadgov_{timing}_max_seconds"])
        assert metrics[f"threadgov_{timing}_max_seconds"] <= stats[timing]["max"]

    # `python -m threadgov stats --url` reads the same endpoint.
    proc = run(["-m", "threadgov", "stats", "--url", server.url("/-/threadgov/stats")], environment(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert rows["size"] == "4" and rows["source"] == 'THREADGOV["MAX_THREADS"]'
    assert rows["db_connections"].startswith("default=")
    assert "wait_time.p99" in rows


def test_uvicorn_stats_endpoint_when_not_installed(tmp_path, servers):
    server = servers(uvicorn_server(tmp_path, {"INSTALL": False}))
    status, body, _ = server.get("/-/threadgov/stats")
    assert status == 503 and json.loads(body)["installed"] is False
    proc = run(["-m", "threadgov", "stats", "--url", server.url("/-/threadgov/stats")], environment(), tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("answered HTTP 503: threadgov is not installed in this process")
    samples = get_metrics(server)
    assert samples["threadgov_installed"] == 0.0 and "threadgov_size" not in samples


def test_gunicorn_two_workers_metrics_include_both(tmp_path, servers):
    """Multiprocess mode: a scrape reaches one worker, and still shows both workers' values."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("uvicorn")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    threads = 3
    server = servers(Server(
        [sys.executable, "-m", "gunicorn", "tgsite.asgi:application", "-k", "uvicorn.workers.UvicornWorker",
         "-w", "2", "-b", "127.0.0.1:0", "-c", str(TESTS / "tgsite" / "gunicorn_conf.py")],
        environment(TGSITE_DIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(multiproc),
                    THREADGOV_METRICS_INTERVAL="0.05",
                    TGSITE_THREADGOV=json.dumps({"MAX_THREADS": threads, "METRICS": True})),
        tmp_path,
        port_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
        ready=r"Application startup complete",
        count=2,
    ))

    # Requests on new connections until both workers have answered (the kernel picks the worker);
    # each worker's last answer is a lower bound of its counters.
    last = {}
    with ThreadPoolExecutor(8) as clients:
        for _ in range(100):
            for answer in clients.map(lambda _: get_json(server, "/pid-stats/"), range(8)):
                pid = answer["pid"]
                if answer["stats"]["submitted"] >= last.get(pid, {"submitted": -1})["submitted"]:
                    last[pid] = answer["stats"]
            if len(last) == 2:
                break
    assert len(last) == 2, f"only worker(s) {sorted(last)} answered"
    assert all(stats["size"] == threads for stats in last.values())
    floor = sum(stats["submitted"] for stats in last.values())

    def per_worker() -> dict:
        """Each worker's submitted counter, read from its own file alone."""
        values = {}
        for pid in last:
            alone = tmp_path / f"alone-{pid}"
            shutil.rmtree(alone, ignore_errors=True)
            alone.mkdir()
            source = multiproc / f"counter_{pid}.db"
            if not source.exists():
                values[pid] = -1.0
                continue
            shutil.copy(source, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(alone))
            values[pid] = parse_metrics(generate_latest(registry).decode()).get(
                "threadgov_calls_submitted_total", -1.0)
        return values

    # Each worker copies its stats into its own files every 0.05 s: wait until both copies have
    # caught up with what the workers reported (a bounded wait for a condition, not a sleep).
    for _ in range(400):
        files = per_worker()
        if all(files[pid] >= stats["submitted"] for pid, stats in last.items()):
            break
        threading.Event().wait(0.05)
    else:
        raise AssertionError(f"the workers' files never caught up: {files}, reported {last}")
    assert all(value > 0 for value in files.values())

    # One scrape, served by one of the workers, covers both: its total is the sum of the files at
    # that moment, and files only grow, so it lies between the sums read before and after it (a
    # total of one worker alone would be below the sum before, since both are > 0).
    metrics = get_metrics(server)
    after = per_worker()
    assert metrics["threadgov_installed"] == 2.0  # livesum over the live workers
    assert metrics["threadgov_size"] == 2.0 * threads
    assert metrics["threadgov_threads_alive"] <= 2.0 * threads
    total = metrics["threadgov_calls_submitted_total"]
    assert floor <= sum(files.values()) <= total <= sum(after.values()), (total, files, after, last)
    assert sorted(p.name for p in multiproc.glob("counter_*.db")) == sorted(f"counter_{pid}.db" for pid in last)

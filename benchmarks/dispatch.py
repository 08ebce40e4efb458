"""Dispatch overhead and throughput: threadgov against stock asgiref and other ways to reach a thread.

    python benchmarks/dispatch.py [--calls N] [--concurrency 64] [--threads 8] [--repeats 3]
                                  [--json out.json] [--plot out.png]

Every path runs a trivial sync function (``return None``) from asyncio, measured two ways:

* sequential: one caller awaiting ``--calls`` calls one after the other (calls/s and µs per call:
  the round trip loop -> thread -> loop);
* concurrent: ``--concurrency`` callers, each awaiting its share of ``--calls`` calls (calls/s).

Paths ("kinds"), each measured with stock asgiref and with ``threadgov.install(max_threads=N)``
(default affinity "request", default close_connections=True: Django is configured here, so
threadgov runs ``close_old_connections()`` around every call, as it does in a Django project):

* ``ts=True in context``: ``sync_to_async(f)`` inside a ``ThreadSensitiveContext`` entered once
  per caller (a long request making many calls). Concurrent: one context per caller.
* ``ts=True no context``: ``sync_to_async(f)`` outside any context (asgiref's single thread).
* ``ts=False``: ``sync_to_async(f, thread_sensitive=False)`` (the loop's default executor).
* ``context per call``: enter a ``ThreadSensitiveContext``, make one call, exit -- what Django's
  ``ASGIHandler`` does for every request. Stock asgiref starts a thread for the context and
  another to join it at exit.
* ``channels db_s2a``: ``channels.db.database_sync_to_async(f)`` outside any context (Django set
  up with an in-memory SQLite database; no query is made).

References, measured without the governor (N as ``--threads``): ``asyncio.to_thread``,
``loop.run_in_executor(ThreadPoolExecutor(N))``, ``anyio.to_thread.run_sync``.

Each (path, mode) is measured ``--repeats`` times in a fresh event loop after a warm-up, repeats
interleaved (stock phase, governed phase, stock phase, ...); the median is reported. Ratios are
governed / stock of the same kind in the same run, for calls/s (> 1: threadgov is faster).

Every loop first makes one thread-sensitive call: threadgov becomes a loop's default executor at
the loop's first thread-sensitive call (in a Django app: its first request), so without it the
governed ``ts=False`` path would silently run on asyncio's stock executor. After each timed run an
untimed pass records which threads ran the calls ("threads" column; JSON ``conc_threads``); a
governed path that ran anywhere but on ``threadgov-*`` threads is flagged under its row.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import threadgov  # noqa: E402
from asgiref.sync import ThreadSensitiveContext, sync_to_async  # noqa: E402


def trivial():
    return None


# -- the paths: each is ``async def caller(n)`` making n calls ------------------------------------


async def ts_in_context(n, fn=trivial):
    call = sync_to_async(fn)
    async with ThreadSensitiveContext():
        for _ in range(n):
            await call()


async def ts_no_context(n, fn=trivial):
    call = sync_to_async(fn)
    for _ in range(n):
        await call()


async def ts_false(n, fn=trivial):
    call = sync_to_async(fn, thread_sensitive=False)
    for _ in range(n):
        await call()


async def context_per_call(n, fn=trivial):
    call = sync_to_async(fn)
    for _ in range(n):
        async with ThreadSensitiveContext():
            await call()


async def channels_db(n, fn=trivial):
    from channels.db import database_sync_to_async

    call = database_sync_to_async(fn)
    for _ in range(n):
        await call()


async def asyncio_to_thread(n, fn=trivial):
    for _ in range(n):
        await asyncio.to_thread(fn)


_EXECUTOR = None  # a ThreadPoolExecutor(N) for run_in_executor, one per measurement


async def run_in_executor(n, fn=trivial):
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await loop.run_in_executor(_EXECUTOR, fn)


async def anyio_run_sync(n, fn=trivial):
    import anyio.to_thread

    for _ in range(n):
        await anyio.to_thread.run_sync(fn)


KINDS = [
    ("ts=True in context", ts_in_context),
    ("ts=True no context", ts_no_context),
    ("ts=False", ts_false),
    ("context per call", context_per_call),
    ("channels db_s2a", channels_db),
]
REFERENCES = [
    ("asyncio.to_thread", asyncio_to_thread),
    ("run_in_executor(TPE(N))", run_in_executor),
    ("anyio to_thread.run_sync", anyio_run_sync),
]


# -- measuring ------------------------------------------------------------------------------------


def measure(caller, calls, concurrency, threads, uses_executor):
    """(seconds, calls made, names of the threads that ran calls) in a fresh event loop.

    The timed calls are preceded by a warm-up and followed by a short untimed pass that records
    which threads ran the calls (with the same number of callers).
    """
    global _EXECUTOR

    async def main():
        # One thread-sensitive call first, on every path: threadgov makes itself the default
        # executor of a loop at its first thread-sensitive call (a Django app's first request),
        # not at a first non-sensitive one.
        await sync_to_async(trivial)()
        per = max(1, calls // concurrency)
        warm = max(concurrency, min(200, calls // 10))
        await asyncio.gather(*(caller(max(1, warm // concurrency)) for _ in range(concurrency)))
        started = time.perf_counter()
        if concurrency == 1:
            await caller(calls)
        else:
            await asyncio.gather(*(caller(per) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        names = set()

        def record():
            names.add(threading.current_thread().name)

        await asyncio.gather(*(caller(4, record) for _ in range(concurrency)))
        return seconds, per * concurrency, names

    if uses_executor:
        _EXECUTOR = ThreadPoolExecutor(max_workers=threads)
    try:
        return asyncio.run(main())
    finally:
        if uses_executor:
            _EXECUTOR.shutdown()
            _EXECUTOR = None


def setup_django():
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()


def run(args):
    setup_django()
    modes = [("seq", 1), ("conc", args.concurrency)]
    samples = {}  # (label, mode) -> [calls/s]
    thread_counts = {}  # (label, mode) -> [distinct threads in each check pass]
    thread_names = {}  # (label, mode) -> names of the threads that ran calls, over all repeats

    def record(label, caller, mode, concurrency):
        seconds, made, names = measure(caller, args.calls, concurrency, args.threads, caller is run_in_executor)
        samples.setdefault((label, mode), []).append(made / seconds)
        thread_counts.setdefault((label, mode), []).append(len(names))
        thread_names.setdefault((label, mode), set()).update(names)

    begun = time.perf_counter()
    for rep in range(args.repeats):
        for kind, caller in KINDS:
            for mode, concurrency in modes:
                record("stock " + kind, caller, mode, concurrency)
        for name, caller in REFERENCES:
            for mode, concurrency in modes:
                record(name, caller, mode, concurrency)
        threadgov.install(max_threads=args.threads)
        try:
            for kind, caller in KINDS:
                for mode, concurrency in modes:
                    record("threadgov " + kind, caller, mode, concurrency)
        finally:
            if not threadgov.uninstall(timeout=10):
                print("warning: threadgov.uninstall() timed out", file=sys.stderr)
        if not args.quiet:
            print(f"  repeat {rep + 1}/{args.repeats} done ({time.perf_counter() - begun:.1f} s)", file=sys.stderr)

    rows = []
    labels = [f"stock {k}" for k, _ in KINDS] + [f"threadgov {k}" for k, _ in KINDS] + [n for n, _ in REFERENCES]
    median = {key: statistics.median(values) for key, values in samples.items()}
    for label in labels:
        row = {"path": label, "samples": {m: samples[(label, m)] for m, _ in modes}}
        row["seq_calls_per_s"] = median[(label, "seq")]
        row["seq_us_per_call"] = 1e6 / median[(label, "seq")]
        row["conc_calls_per_s"] = median[(label, "conc")]
        # Distinct threads that ran calls in the untimed check pass with concurrent callers.
        row["conc_threads"] = max(thread_counts[(label, "conc")])
        row["conc_thread_names_sample"] = sorted(thread_names[(label, "conc")])[:10]
        if label.startswith("threadgov "):
            names = thread_names[(label, "seq")] | thread_names[(label, "conc")]
            row["ran_outside_pool"] = sorted(n for n in names if not n.startswith("threadgov-"))[:10]
        if label.startswith("threadgov "):
            stock = "stock " + label[len("threadgov ") :]
            row["seq_ratio"] = median[(label, "seq")] / median[(stock, "seq")]
            row["conc_ratio"] = median[(label, "conc")] / median[(stock, "conc")]
        rows.append(row)
    return {
        "config": {
            "calls": args.calls,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "repeats": args.repeats,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "threadgov": threadgov.__version__,
            "asgiref": _version("asgiref"),
            "django": _version("django"),
            "channels": _version("channels"),
            "anyio": _version("anyio"),
            "seconds": time.perf_counter() - begun,
        },
        "rows": rows,
    }


def _version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


# -- output ---------------------------------------------------------------------------------------


def table(result):
    cfg = result["config"]
    out = [
        f"dispatch of a trivial sync function: {cfg['calls']} calls, sequential and {cfg['concurrency']} "
        f"concurrent callers; N={cfg['threads']} threads (governor, TPE); median of {cfg['repeats']}",
        f"python {cfg['python']}, {cfg['usable_cpus']} usable cpus, asgiref {cfg['asgiref']}, "
        f"django {cfg['django']}, channels {cfg['channels']}, anyio {cfg['anyio']}",
        "ratio = threadgov / stock calls/s of the same kind (> 1: threadgov faster); "
        "threads = distinct threads that ran calls with concurrent callers",
        "",
    ]
    header = (
        f"{'path':<32}{'seq calls/s':>12}{'µs/call':>9}{'ratio':>7}{'conc calls/s':>14}{'ratio':>7}"
        f"{'threads':>9}"
    )
    out.append(header)
    out.append("-" * len(header))
    by_path = {row["path"]: row for row in result["rows"]}
    groups = [[f"stock {k}", f"threadgov {k}"] for k, _ in KINDS] + [[n for n, _ in REFERENCES]]
    for group in groups:
        for label in group:
            row = by_path[label]
            seq_ratio = f"{row['seq_ratio']:.2f}" if "seq_ratio" in row else ""
            conc_ratio = f"{row['conc_ratio']:.2f}" if "conc_ratio" in row else ""
            out.append(
                f"{label:<32}{row['seq_calls_per_s']:>12,.0f}{row['seq_us_per_call']:>9.1f}{seq_ratio:>7}"
                f"{row['conc_calls_per_s']:>14,.0f}{conc_ratio:>7}{row['conc_threads']:>9}"
            )
            if row.get("ran_outside_pool"):
                out.append(f"  ! ran outside threadgov's pool: {', '.join(row['ran_outside_pool'])}")
        out.append("")
    out.append(f"total benchmark time: {cfg['seconds']:.1f} s")
    return "\n".join(out)


def plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    kinds = [k for k, _ in KINDS]
    by_path = {row["path"]: row for row in result["rows"]}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, (key, title) in zip(
        axes,
        [("seq_calls_per_s", "sequential (1 caller)"), ("conc_calls_per_s", f"{result['config']['concurrency']} concurrent callers")],
    ):
        names = kinds + [n for n, _ in REFERENCES]
        xs = range(len(names))
        width = 0.4
        stock = [by_path[f"stock {k}"][key] for k in kinds]
        gov = [by_path[f"threadgov {k}"][key] for k in kinds]
        refs = [by_path[n][key] for n, _ in REFERENCES]
        ax.bar([x - width / 2 for x in range(len(kinds))], stock, width, label="stock asgiref")
        ax.bar([x + width / 2 for x in range(len(kinds))], gov, width, label="threadgov")
        ax.bar(list(range(len(kinds), len(names))), refs, width, label="reference", color="grey")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("calls/s (higher is better)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"threadgov dispatch benchmark (N={result['config']['threads']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="N for threadgov and the TPE (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    for name in ("calls", "concurrency", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.calls < args.concurrency:
        parser.error("--calls must be at least --concurrency")
    result = run(args)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if args.plot:
        plot(result, args.plot)
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("threadgov-")]
    if leftover:
        print(f"warning: threadgov workers still alive: {leftover}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

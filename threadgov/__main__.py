"""The ``python -m threadgov`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets a
``handler(args, parser) -> int``. Bad input exits with status 2 and one line on stderr.
"""

import argparse
import os
import sys
from typing import List, Optional

__all__ = ["main"]


class CommandFailed(Exception):
    """A tool could not do its job (not bad input): reported in one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Reports bad input in one line (no usage dump) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded_int(setting: str, low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: {setting} must be a whole number from {low} to {high}"
            )
        return value

    parse.__name__ = setting  # argparse names the type in some messages
    return parse


# -- demo -----------------------------------------------------------------------------------------


def _add_demo(subparsers) -> None:
    from ._options import AFFINITIES
    from ._sizing import MAX_THREADS

    parser = subparsers.add_parser(
        "demo",
        help="stock asgiref against threadgov, on an in-process Django app (no server needed)",
        description=(
            "Configure Django in this process (SQLite in a temporary directory, CONN_MAX_AGE=60), "
            "fire a burst of concurrent requests at a sync view through Django's ASGIHandler, "
            "first with stock asgiref, then with threadgov installed, then with threadgov installed "
            "and threadgov.asgi.ASGIHandler, and compare threads and database connections."
        ),
    )
    parser.add_argument(
        "--requests",
        type=_bounded_int("the number of requests", 1, 100_000),
        default=500,
        help="requests in the burst, all concurrent (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=_bounded_int("max_threads", 1, MAX_THREADS),
        default=None,
        help="threadgov's max_threads (default: threadgov's own default: ASGI_THREADS, else "
        "Python's ThreadPoolExecutor default for the usable CPUs)",
    )
    parser.add_argument(
        "--affinity",
        choices=AFFINITIES,
        default="request",
        help="threadgov's affinity (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the measurements as JSON to PATH ('-': to stdout, after the table)",
    )
    parser.set_defaults(handler=_run_demo, parser=parser)


def _run_demo(args, parser) -> int:
    from ._errors import ConfigurationError
    from ._sizing import resolve_size

    try:
        size = resolve_size(args.threads)
    except ConfigurationError as exc:  # a bad ASGI_THREADS
        parser.error(str(exc))
    source = "--threads" if args.threads is not None else size.source
    from ._demo import run

    return run(args.requests, size.size, args.affinity, json_path=args.json, source=source)


# -- shared by config, budget and stats ----------------------------------------------------------


def _write(args, text: str = "") -> None:
    """Print to the command's output (``manage.py`` passes its own stream as ``args.stdout``)."""
    out = getattr(args, "stdout", None) or sys.stdout
    out.write(text + "\n")


def _resolve(args, parser):
    """The resolved configuration, or exit 2 with the first problem's line."""
    from ._config import resolve_config, summary

    setting = _django_setting(parser)
    config, problems = resolve_config() if setting is None else resolve_config(setting=setting[1])
    if problems:
        parser.error(summary(problems))
    return config


def _django_setting(parser):
    """``(present, THREADGOV)`` from the project's settings when run outside ``manage.py`` with
    ``DJANGO_SETTINGS_MODULE`` set; None when Django is already configured or not asked for."""
    from django.conf import settings

    if settings.configured:
        return None
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        return False, None
    try:
        present = hasattr(settings, "THREADGOV")
    except Exception as exc:  # ImportError, ImproperlyConfigured, a syntax error...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        parser.error(f"cannot load the Django settings DJANGO_SETTINGS_MODULE={module!r}: {detail}")
    return present, (settings.THREADGOV if present else None)


# -- config ---------------------------------------------------------------------------------------


def _add_config(subparsers) -> None:
    parser = subparsers.add_parser(
        "config",
        help="the resolved pool size and options, and where each came from",
        description=(
            "Resolve the configuration as the governor would at start-up (install() arguments > "
            "environment variables > the THREADGOV setting > defaults) and print each value with "
            "its source, the CPUs this process may use and the versions in use. Outside manage.py "
            "the THREADGOV setting is read from DJANGO_SETTINGS_MODULE, if set."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run_config, parser=parser)


def config_report(config) -> dict:
    import platform

    import asgiref
    import django

    from . import __version__
    from ._governor import current
    from ._sizing import available_cpus

    options = config.options
    sources = config.sources
    rows = {
        "max_threads": (config.size.size, config.size.source),
        "affinity": (options.affinity, sources["affinity"]),
        "close_connections": (options.close_connections, sources["close_connections"]),
        "max_queue": (options.max_queue, sources["max_queue"]),
        "queue_timeout": (options.queue_timeout, sources["queue_timeout"]),
        "slow_call_threshold": (options.slow_call_threshold, sources["slow_call_threshold"]),
        "metrics": (config.metrics, sources["metrics"]),
        "install": (config.install, sources["install"]),
        "worker_processes": (config.worker_processes, sources["worker_processes"]),
        "max_connections": (config.max_connections, sources["max_connections"]),
        "reserved_connections": (config.reserved_connections, sources["reserved_connections"]),
    }
    governor = current()
    return {
        "threadgov": __version__,
        "python": platform.python_version(),
        "asgiref": asgiref.__version__,
        "django": django.get_version(),
        "cpus": available_cpus(),
        "settings": {name: {"value": value, "source": source} for name, (value, source) in rows.items()},
        "installed_in_this_process": None if governor is None else governor.size.size,
    }


def _run_config(args, parser) -> int:
    import json

    report = config_report(_resolve(args, parser))
    if args.json:
        _write(args, json.dumps(report, indent=2))
        return 0
    _write(
        args,
        f"threadgov {report['threadgov']} (Python {report['python']}, asgiref {report['asgiref']}, "
        f"Django {report['django']})",
    )
    _write(args, f"{'cpus':<22}{report['cpus']:<10}usable by this process (affinity, cgroup quota)")
    for name, row in report["settings"].items():
        value = "off" if row["value"] is None else row["value"]
        _write(args, f"{name:<22}{str(value):<10}{row['source']}")
    installed = report["installed_in_this_process"]
    if installed is not None:
        _write(args, f"{'installed':<22}{'yes':<10}max_threads={installed} in this process")
    return 0


# -- budget ---------------------------------------------------------------------------------------


def _add_budget(subparsers, *, django: bool = False) -> None:
    parser = subparsers.add_parser(
        "budget",
        help="the largest N per process that the database's connections allow",
        description=(
            "With the governor each process holds at most N connections per database alias, so a "
            "fleet holds N x processes x replicas x aliases. Print the safe N per process for "
            "--max-connections, and the connections the fleet holds with --threads (default: the "
            "resolved N). Defaults come from WEB_CONCURRENCY and the THREADGOV setting."
        ),
    )
    count = lambda name: _bounded_int(name, 1, 10_000_000)  # noqa: E731
    parser.add_argument("--processes", type=count("--processes"), default=None,
                        help="worker processes per replica (default: WEB_CONCURRENCY, "
                        'THREADGOV["WORKER_PROCESSES"], else 1)')
    parser.add_argument("--replicas", type=count("--replicas"), default=1,
                        help="machines or containers running that many processes (default: 1)")
    parser.add_argument("--max-connections", type=count("--max-connections"), default=None,
                        help="the server's max_connections, or PgBouncer's max_client_conn "
                        '(default: THREADGOV["MAX_CONNECTIONS"])')
    parser.add_argument("--reserved", type=_bounded_int("--reserved", 0, 10_000_000), default=None,
                        help="connections to keep for everything else: migrations, cron, shells, "
                        'monitoring (default: THREADGOV["RESERVED_CONNECTIONS"], else 0)')
    parser.add_argument("--server-reserved", type=_bounded_int("--server-reserved", 0, 10_000_000),
                        default=0,
                        help="connections the server keeps for superusers: PostgreSQL's "
                        "superuser_reserved_connections (+ reserved_connections on 16+), "
                        "3 by default there (default here: 0)")
    parser.add_argument("--aliases", type=count("--aliases"), default=None,
                        help="database aliases of that server the application uses (default: 1"
                        + (", or the DATABASES aliases on a database server" if django else "") + ")")
    parser.add_argument("--threads", type=_bounded_int("--threads", 1, 1024), default=None,
                        help="N per process to evaluate (default: the resolved N: ASGI_THREADS, "
                        'THREADGOV["MAX_THREADS"], else the default)')
    if django:
        parser.add_argument("--database", default=None, metavar="ALIAS",
                            help="read max_connections and the reserved connections from this "
                            "alias's PostgreSQL server (and count the aliases on that server)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=_run_budget, parser=parser)


def _run_budget(args, parser) -> int:
    import json

    from . import _budget

    config = _resolve(args, parser)
    threads = args.threads if args.threads is not None else config.size.size
    threads_source = "--threads" if args.threads is not None else config.size.source
    processes = args.processes if args.processes is not None else config.worker_processes
    reserved = args.reserved if args.reserved is not None else config.reserved_connections
    max_connections = args.max_connections if args.max_connections is not None else config.max_connections
    server_reserved = args.server_reserved
    aliases = args.aliases
    database = getattr(args, "database", None)
    if database is not None:
        from .checks import _server_aliases, _server_key

        server = _server_aliases().get(database)
        from django.db import connections

        if server is None or connections[database].vendor != "postgresql":
            parser.error(f"--database {database!r} is not a PostgreSQL alias of DATABASES")
        try:
            limits = _budget.server_limits(connections[database])
        except Exception as exc:
            parser.error(f"cannot read the limits of the server of {database!r}: {' '.join(str(exc).split())}")
        finally:
            connections[database].close()
        if args.max_connections is None:
            max_connections = limits.max_connections
            server_reserved = limits.server_reserved
        if aliases is None:
            aliases = sum(1 for c in _server_aliases().values() if _server_key(c) == _server_key(server))
    if max_connections is None:
        parser.error('--max-connections is required (or set THREADGOV["MAX_CONNECTIONS"])')
    if aliases is None:
        aliases = 1
    budget = _budget.plan(
        max_connections,
        reserved=reserved,
        server_reserved=server_reserved,
        processes=processes,
        replicas=args.replicas,
        aliases=aliases,
        threads=threads,
    )
    if args.json:
        data = {
            "max_connections": budget.max_connections,
            "server_reserved": budget.server_reserved,
            "reserved": budget.reserved,
            "usable": budget.usable,
            "processes": budget.processes,
            "replicas": budget.replicas,
            "aliases": budget.aliases,
            "safe_threads": budget.safe_threads,
            "threads": budget.threads,
            "threads_source": threads_source,
            "connections": budget.demand,
            "fits": budget.fits,
        }
        _write(args, json.dumps(data, indent=2))
        return 0
    for line in _budget.report_lines(budget, threads_source=threads_source):
        _write(args, line)
    return 0


# -- stats ----------------------------------------------------------------------------------------


def _add_stats(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="read a running server's statistics from its stats endpoint",
        description="GET the JSON of a stats endpoint (threadgov.views.stats_view) and print it.",
    )
    parser.add_argument("--url", required=True, help="the endpoint, e.g. http://127.0.0.1:8000/-/threadgov/stats")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the JSON as received (indented)")
    parser.set_defaults(handler=_run_stats, parser=parser)


def _flatten(data: dict, prefix: str = "") -> list:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "db_connections":
            rows.extend(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, dict):
            rows.append((f"{prefix}{key}", ", ".join(f"{k}={v}" for k, v in value.items()) or "-"))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def fetch_stats(url: str, timeout: float) -> tuple:
    """``(HTTP status, decoded JSON)`` of a stats endpoint; raises OSError or ValueError."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503 when not installed: still JSON
        status, body = exc.code, exc.read()
    return status, json.loads(body.decode("utf-8"))


def _run_stats(args, parser) -> int:
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        parser.error(f"--url {args.url!r} is not valid: expected an http:// or https:// URL")
    if not 0 < args.timeout <= 3600:
        parser.error(f"--timeout {args.timeout!r} is not valid: expected seconds, more than 0")
    try:
        status, data = fetch_stats(args.url, args.timeout)
    except ValueError as exc:
        raise CommandFailed(f"{args.url} did not answer JSON: {exc}") from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CommandFailed(f"cannot read {args.url}: {reason}") from None
    if status != 200 or not isinstance(data, dict):
        detail = data.get("error") if isinstance(data, dict) else None
        raise CommandFailed(f"{args.url} answered HTTP {status}: {detail or data}")
    if args.json:
        _write(args, json.dumps(data, indent=2))
        return 0
    for key, value in _flatten(data):
        _write(args, f"{key:<22}{value}")
    return 0


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m threadgov", description="threadgov command line tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_subcommands(subparsers)
    return parser


def add_subcommands(subparsers, *, django: bool = False) -> None:
    """The subcommands of ``python -m threadgov``; ``manage.py threadgov`` has all but ``demo``."""
    if not django:
        _add_demo(subparsers)
    _add_config(subparsers)
    _add_budget(subparsers, django=django)
    _add_stats(subparsers)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        # A handler reports bad input (found late, e.g. in the environment) with its parser.
        return args.handler(args, args.parser)
    except CommandFailed as exc:
        sys.stderr.write(f"{args.parser.prog}: {exc}\n")
        return exc.code
    except SystemExit as exc:  # --help, or bad input (status 2)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

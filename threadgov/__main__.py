"""The ``python -m threadgov`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets a
``handler(args, parser) -> int``. Bad input exits with status 2 and one line on stderr.
"""

import argparse
import os
import sys
from typing import List, Optional

__all__ = ["main"]


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
            "first with stock asgiref and then with threadgov installed, and compare threads and "
            "database connections."
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


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m threadgov", description="threadgov command line tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        # A handler reports bad input (found late, e.g. in the environment) with its parser.
        return args.handler(args, args.parser)
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

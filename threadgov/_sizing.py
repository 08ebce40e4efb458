"""How many threads: ``max_threads`` argument > ``ASGI_THREADS`` > the Python default.

Everything here is a pure function of its inputs (environment, Python version, CPU count) so that
tests can inject each of them.
"""

import math
import os
import re
import sys
from typing import Mapping, NamedTuple, Optional, Tuple

from ._errors import ConfigurationError

__all__ = ["ENV_VAR", "MAX_THREADS", "Size", "available_cpus", "default_size", "resolve_size"]

ENV_VAR = "ASGI_THREADS"

# A ceiling well above any sane pool (each thread may hold one database connection per alias).
MAX_THREADS = 1024

_DIGITS = re.compile(r"[0-9]+")


class Size(NamedTuple):
    """The resolved pool size and a human-readable account of where it came from."""

    size: int
    source: str


def _accepted(low: int = 1, high: int = MAX_THREADS) -> str:
    return f"expected a whole number from {low} to {high}"


def parse_whole(value: str, *, setting: str, low: int, high: int) -> int:
    """Parse a whole number given as text (e.g. an environment variable), from ``low`` to ``high``.

    Surrounding whitespace is ignored; anything but plain ASCII digits in range is rejected.
    """
    text = value.strip()
    # Leading zeros dropped and the length checked first: int() refuses strings of more than
    # 4300 digits with a plain ValueError that would not name the setting.
    digits = text.lstrip("0") or "0"
    if not _DIGITS.fullmatch(text) or len(digits) > len(str(high)) or not low <= int(digits) <= high:
        raise ConfigurationError(f"{setting}={value!r} is not valid: {_accepted(low, high)}")
    return int(digits)


def parse_threads(value: str, *, setting: str = ENV_VAR) -> int:
    """Parse a thread count given as text (e.g. ``ASGI_THREADS``)."""
    return parse_whole(value, setting=setting, low=1, high=MAX_THREADS)


def check_threads(value: object, *, setting: str = "max_threads") -> int:
    """Validate a thread count given as a Python value (e.g. an ``install()`` argument)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{setting} must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_THREADS:
        raise ConfigurationError(f"{setting}={value!r} is not valid: {_accepted()}")
    return value


def _cgroup_v2_cpus(
    root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
) -> Optional[int]:
    """The CPU quota of this process's cgroup v2 (``cpu.max``), rounded up; None if unlimited."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    limit = None
    # A quota anywhere up the hierarchy applies; the tightest one wins.
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        directory = os.path.join(root, *parts[:depth])
        try:
            with open(os.path.join(directory, "cpu.max")) as f:
                quota, period = f.read().split()[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            continue
        try:
            cpus = max(1, math.ceil(int(quota) / int(period)))
        except (ValueError, ZeroDivisionError):
            continue
        limit = cpus if limit is None else min(limit, cpus)
    return limit


def _affinity_cpus() -> Optional[int]:
    """CPUs this process may be scheduled on."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0)) or None
        except OSError:
            pass
    try:
        import psutil

        return len(psutil.Process().cpu_affinity() or ()) or None
    except Exception:  # psutil missing, or no affinity support on this platform
        return None


def available_cpus() -> int:
    """The number of CPUs this process may really use.

    The smaller of the scheduler affinity and the cgroup v2 quota (rounded up); else
    ``os.cpu_count()``; else 1.
    """
    counts = [n for n in (_affinity_cpus(), _cgroup_v2_cpus()) if n]
    if counts:
        return min(counts)
    return os.cpu_count() or 1


def default_size(cpus: int, python_version: Tuple[int, ...]) -> int:
    """The default of ``concurrent.futures.ThreadPoolExecutor`` for that Python and CPU count."""
    if tuple(python_version[:2]) <= (3, 7):
        return cpus * 5
    return min(32, cpus + 4)


def resolve_size(
    max_threads: Optional[int] = None,
    *,
    environ: Mapping[str, str] = os.environ,
    python_version: Tuple[int, ...] = tuple(sys.version_info),
    cpus: Optional[int] = None,
    setting: Optional[Tuple[object, str]] = None,
) -> Size:
    """Resolve the pool size: explicit argument > ``ASGI_THREADS`` > ``setting`` > Python's default.

    ``setting`` is a ``(value, name)`` pair from a configuration file (e.g. Django's
    ``THREADGOV["MAX_THREADS"]``), used when the environment variable is not set.
    """
    if max_threads is not None:
        return Size(check_threads(max_threads), "max_threads argument")
    if ENV_VAR in environ:
        return Size(parse_threads(environ[ENV_VAR]), ENV_VAR)
    if setting is not None and setting[0] is not None:
        value, name = setting
        return Size(check_threads(value, setting=name), name)
    if cpus is None:
        cpus = available_cpus()
    rule = "python<=3.7" if tuple(python_version[:2]) <= (3, 7) else "python>=3.8"
    plural = "cpu" if cpus == 1 else "cpus"
    return Size(default_size(cpus, python_version), f"default ({rule}, {cpus} {plural})")

"""threadgov: one bounded pool of threads, and so of database connections, for Django under ASGI."""

from ._errors import ConfigurationError, NotInstalledError, PoolSaturated, ThreadgovError
from ._governor import install, stats, uninstall
from ._sizing import MAX_THREADS
from ._stats import Stats, Timings

__all__ = [
    "MAX_THREADS",
    "ConfigurationError",
    "NotInstalledError",
    "PoolSaturated",
    "Stats",
    "ThreadgovError",
    "Timings",
    "install",
    "stats",
    "uninstall",
]

__version__ = "0.1.0"

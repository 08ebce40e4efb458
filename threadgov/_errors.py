"""The exception tree: one base class, one subclass per kind of failure."""

__all__ = ["ThreadgovError", "ConfigurationError", "NotInstalledError", "PoolSaturated"]


class ThreadgovError(Exception):
    """Base class of every error threadgov raises."""


class ConfigurationError(ThreadgovError, ValueError):
    """A setting (argument or environment variable) has an invalid value.

    The message names the setting, the bad value and what is accepted.
    """


class NotInstalledError(ThreadgovError, RuntimeError):
    """The governor is not installed (``threadgov.install()`` has not run)."""


class PoolSaturated(ThreadgovError, RuntimeError):
    """A call was refused: the queue was full (``max_queue``) or the call waited longer than
    ``queue_timeout`` for a thread. The call never ran."""

"""Django database connection cleanup around governed calls (as Channels' ``database_sync_to_async``)."""

import threading
import time

from ._pool import _Hooks

__all__ = ["ConnectionCleanup"]


class ConnectionCleanup(_Hooks):
    """``close_old_connections()`` before and after every call on a worker thread — or, for a
    request that keeps its worker (affinity "request"), before its first call and after its last.

    Django keeps one connection per alias per thread, so with at most N workers, persistent
    connections (``CONN_MAX_AGE > 0``) are reused by at most N threads, and obsolete or broken ones
    are dropped. Nothing happens until Django's settings are configured; connections are never
    opened here, only closed.

    Between two calls, nothing but time touches a worker's connections (only governed calls run
    there), so the cleanup before a call can only find a connection past its ``CONN_MAX_AGE``: it
    runs when the earliest such deadline, noted after the previous call, has passed.
    """

    def __init__(self) -> None:
        self._ready = False
        self._connections = None
        self._thread = threading.local()  # due: monotonic time of the earliest close_at, or None

    def _handler(self):
        if not self._ready:
            from django.conf import settings

            if not settings.configured:
                return None
            from django.db import connections

            self._connections = connections
            self._ready = True
        return self._connections

    def before_call(self) -> None:
        due = getattr(self._thread, "due", None)
        if due is not None and time.monotonic() >= due:
            self.after_call()

    def after_call(self) -> tuple:
        connections = self._handler()
        if connections is None:
            return ()
        aliases = []
        due = None
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()  # what close_old_connections() does, per alias
            if conn.connection is not None:
                aliases.append(conn.alias)
                if conn.close_at is not None and (due is None or conn.close_at < due):
                    due = conn.close_at
        self._thread.due = due
        return tuple(aliases)

    def lease_is_clean(self) -> bool:
        connections = self._handler()
        if connections is None:
            return True
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and (conn.in_atomic_block or not conn.get_autocommit()):
                return False
        return True

    def thread_exit(self) -> None:
        connections = self._handler()
        if connections is not None:
            connections.close_all()

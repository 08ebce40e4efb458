"""Django database connection cleanup around governed work (as Channels' ``database_sync_to_async``)."""

import threading
import time

from ._pool import _Hooks

__all__ = ["ConnectionCleanup"]

_RECEIVER_UID = "threadgov-connection-created"


class ConnectionCleanup(_Hooks):
    """What ``close_old_connections()`` does, around governed work on a worker thread.

    Django keeps one connection per alias per thread, so with at most N workers, persistent
    connections (``CONN_MAX_AGE > 0``) are reused by at most N threads, and obsolete or broken ones
    are dropped. Nothing happens until Django's settings are configured; connections are never
    opened here, only closed.

    Two shortcuts keep this cheap for calls that do not touch the database:

    * a thread known to hold no open connection is skipped: Django's ``connection_created``
      signal, sent on the thread that connects, marks the thread again;
    * between two calls nothing but time touches a worker's connections (only governed calls run
      there), so the cleanup before a call only runs once the earliest ``CONN_MAX_AGE`` deadline
      noted after the previous call has passed.
    """

    def __init__(self) -> None:
        self._connections = None
        # Per thread: ``opened`` (False: no open connection; absent: unknown) and ``due`` (the
        # monotonic time of the earliest close_at among its open connections, or None).
        self._thread = threading.local()

    def _handler(self):
        if self._connections is None:
            from django.conf import settings

            if not settings.configured:
                return None
            from django.db import connections
            from django.db.backends.signals import connection_created

            connection_created.connect(self._opened, weak=False, dispatch_uid=_RECEIVER_UID)
            self._connections = connections
        return self._connections

    def _opened(self, sender, connection=None, **kwargs) -> None:
        self._thread.opened = True

    def before_call(self) -> None:
        due = getattr(self._thread, "due", None)
        if due is not None and time.monotonic() >= due:
            self.after_call()

    def after_call(self) -> tuple:
        if getattr(self._thread, "opened", True) is False:
            return ()
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
        self._thread.opened = bool(aliases)
        return tuple(aliases)

    def lease_is_clean(self) -> bool:
        if getattr(self._thread, "opened", True) is False:
            return True
        connections = self._handler()
        if connections is None:
            return True
        opened = False
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None:
                if conn.in_atomic_block or not conn.get_autocommit():
                    return False
                opened = True
        if not opened:  # nothing to check until connection_created marks the thread again
            self._thread.opened = False
        return True

    def thread_exit(self) -> None:
        connections = self._handler()
        if connections is not None:
            connections.close_all()

    def close(self) -> None:
        if self._connections is not None:
            from django.db.backends.signals import connection_created

            connection_created.disconnect(dispatch_uid=_RECEIVER_UID)

"""Django database connection cleanup around governed calls (as Channels' ``database_sync_to_async``)."""

from ._pool import _Hooks

__all__ = ["ConnectionCleanup"]


class ConnectionCleanup(_Hooks):
    """Runs ``close_old_connections()`` before and after every call on a worker thread.

    Django keeps one connection per alias per thread, so with at most N workers, persistent
    connections (``CONN_MAX_AGE > 0``) are reused by at most N threads, and obsolete or broken ones
    are dropped. Nothing happens until Django's settings are configured; connections are never
    opened here, only closed.
    """

    def __init__(self) -> None:
        self._ready = False

    def _configured(self) -> bool:
        if not self._ready:
            from django.conf import settings

            self._ready = settings.configured
        return self._ready

    def before_call(self) -> None:
        if self._configured():
            from django.db import close_old_connections

            close_old_connections()

    def after_call(self) -> tuple:
        if not self._configured():
            return ()
        from django.db import close_old_connections, connections

        close_old_connections()
        return tuple(
            conn.alias for conn in connections.all(initialized_only=True) if conn.connection is not None
        )

    def thread_exit(self) -> None:
        if self._configured():
            from django.db import connections

            connections.close_all()

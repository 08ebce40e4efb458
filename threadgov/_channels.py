"""Channels consumers under the governor: one serial lane per consumer instance.

Channels runs a consumer (one per connection) as a long-lived task outside any
``ThreadSensitiveContext``, so asgiref sends every thread-sensitive call of every consumer (each
``SyncConsumer`` handler, each ``database_sync_to_async`` call, ``aclose_old_connections()``) to one
process-wide thread: consumers are served one call at a time.

:func:`install_channels` wraps ``channels.consumer.AsyncConsumer.__call__`` so that the whole
lifetime of each consumer instance runs inside the governor's ``serial_context()``: the consumer's
thread-sensitive calls run one at a time, in submission order, on its home worker (chosen at its
first call, the worker home to the fewest consumers), which is not held between calls (an idle
websocket holds no thread); different consumers run in parallel on up to N workers. A home held by a
request inside an open transaction passes the consumer on to another worker (see
``threadgov._pool``). Under ``affinity="call"`` consumers have no home: each call runs on whichever
worker is free.

Every subclass is covered (``SyncConsumer``, ``WebsocketConsumer``, ``JsonWebsocketConsumer``,
``AsyncWebsocketConsumer``, ``AsyncHttpConsumer``, ...) unless it overrides ``__call__`` without
calling ``super().__call__``. A consumer that already runs inside a ``ThreadSensitiveContext``
(an outer one set by middleware, or a consumer nested in another) keeps using that context.

Without Channels, both functions do nothing.
"""

import functools
import threading
from typing import Any, Callable, Optional

__all__ = ["install_channels", "uninstall_channels", "channels_governor"]

_lock = threading.Lock()
# All guarded by _lock (read without it by the wrapper: one attribute load).
_governor: Any = None  # the governor whose serial contexts consumers enter; None: pass through
_target: Optional[type] = None  # channels.consumer.AsyncConsumer, once patched
_original: Optional[Callable] = None  # its own __call__ as found when patched
_wrapper: Optional[Callable] = None  # what we put in its place


def _wrap(original: Callable) -> Callable:
    @functools.wraps(original)
    async def __call__(self, scope, receive, send):
        governor = _governor
        if governor is None:  # uninstalled, but our wrapper could not be removed
            return await original(self, scope, receive, send)
        # The consumer's whole lifetime, channel layer set-up and teardown included.
        async with governor.serial_context():
            return await original(self, scope, receive, send)

    return __call__


def install_channels(governor) -> bool:
    """Run each Channels consumer inside ``governor.serial_context()``.

    Returns False (and does nothing) if Channels is not installed. Installing again (for the same
    or another governor) only changes the governor that consumers use.
    """
    global _governor, _target, _original, _wrapper
    try:
        from channels.consumer import AsyncConsumer
    except ImportError:
        return False
    with _lock:
        if _wrapper is None:
            original = AsyncConsumer.__dict__["__call__"]
            _target, _original, _wrapper = AsyncConsumer, original, _wrap(original)
            AsyncConsumer.__call__ = _wrapper
        _governor = governor
    return True


def uninstall_channels() -> None:
    """Put ``AsyncConsumer.__call__`` back exactly as it was; consumers started later run stock.

    Consumers already running stay in their serial context until they end. If something else has
    replaced ``AsyncConsumer.__call__`` on top of the wrapper since, that replacement is left in
    place and the wrapper inside it passes calls straight through.
    """
    global _governor, _target, _original, _wrapper
    with _lock:
        _governor = None
        if _wrapper is None:
            return
        if _target.__dict__.get("__call__") is _wrapper:
            _target.__call__ = _original
            _target = _original = _wrapper = None


def channels_governor():
    """The governor consumers currently run under (None when not installed)."""
    return _governor

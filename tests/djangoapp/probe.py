"""What the views, the middleware and the request signals saw, and the gates tests hold them with.

Every record is keyed by the request id. The driver (``client.py``) sends it as the ``x-req``
header and also sets :data:`REQUEST_ID` in the request's own task, as a server does per connection:
it is copied into every ``sync_to_async`` call of that request, so receivers of ``request_finished``
(which get no request) still know theirs. Where both are known they must agree.
"""

import asyncio
import contextvars
import threading
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Tuple

REQUEST_ID: "contextvars.ContextVar[Optional[str]]" = contextvars.ContextVar(
    "threadgov_test_request_id", default=None
)

# The thread-sensitive steps of one request, in order. request_started and request_finished are
# sent by Django's ASGIHandler (the second from response.close()); the middleware steps are
# separate sync_to_async calls; the (sync) view is a fourth one.
STAGES = ("request_started", "middleware_in", "view", "middleware_out", "request_finished")

TIMEOUT = 10.0  # seconds; a safety net for a broken build, never a synchronisation


class Probe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Dict[str, List[Tuple[str, int, str]]] = defaultdict(list)
        self.errors: List[str] = []
        # Called by the sync views after their work (in their thread); tests put a Gate here.
        self.hold: Callable[[], None] = lambda: None
        # Awaited by the async view; tests put an AsyncGate here.
        self.async_hold = None

    def reset(self) -> None:
        with self._lock:
            self.calls = defaultdict(list)
            self.errors = []
        self.hold = lambda: None
        self.async_hold = None

    def record(self, stage: str, request_id: Optional[str] = None) -> None:
        from_context = REQUEST_ID.get()
        thread = threading.current_thread()
        with self._lock:
            if request_id is not None and from_context is not None and request_id != from_context:
                self.errors.append(f"{stage}: header says {request_id}, context says {from_context}")
            rid = request_id if request_id is not None else from_context
            if rid is None:
                self.errors.append(f"{stage} on {thread.name}: no request id")
                return
            self.calls[rid].append((stage, thread.ident, thread.name))

    # -- views of the records -------------------------------------------------------------------

    def threads_of(self, rid: str) -> set:
        return {ident for _, ident, _ in self.calls[rid]}

    def all_threads(self) -> Dict[int, str]:
        with self._lock:
            return {ident: name for calls in self.calls.values() for _, ident, name in calls}

    def stages_of(self, rid: str) -> List[str]:
        return [stage for stage, _, _ in self.calls[rid]]


probe = Probe()


def header(scope: dict, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin1")
    return None


def on_request_started(sender, scope=None, **kwargs) -> None:
    probe.record("request_started", header(scope or {}, b"x-req"))


def on_request_finished(sender, **kwargs) -> None:
    probe.record("request_finished")


class Gate:
    """Views call it from their threads: it counts arrivals, sets ``all_arrived`` (an asyncio
    event of ``loop``) when ``expected`` have arrived, then blocks each caller until ``open()``."""

    def __init__(self, expected: int, loop: asyncio.AbstractEventLoop) -> None:
        self.expected = expected
        self._loop = loop
        self._lock = threading.Lock()
        self._open = threading.Event()
        self.arrived = 0
        self.all_arrived = asyncio.Event()

    def __call__(self) -> None:
        with self._lock:
            self.arrived += 1
            arrived = self.arrived
        if arrived == self.expected:
            self._loop.call_soon_threadsafe(self.all_arrived.set)
        if not self._open.wait(TIMEOUT):
            raise RuntimeError(f"gate not opened within {TIMEOUT}s ({arrived} arrived)")

    def open(self) -> None:
        self._open.set()

    async def wait_all(self) -> None:
        try:
            await asyncio.wait_for(self.all_arrived.wait(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"only {self.arrived} of {self.expected} reached the view") from None


class AsyncGate:
    """The async view awaits it: ``entered`` is set on arrival, then it waits for ``open()``."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._open = asyncio.Event()

    async def __call__(self) -> None:
        self.entered.set()
        await asyncio.wait_for(self._open.wait(), TIMEOUT)

    def open(self) -> None:
        self._open.set()

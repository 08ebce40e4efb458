"""Routing asgiref's thread choices to the pool: every asgiref version difference lives here.

asgiref's ``SyncToAsync`` picks a thread for a thread-sensitive call, first match wins:

1. an outer ``async_to_sync``'s ``CurrentThreadExecutor`` (nesting): left alone, it runs on the
   waiting thread and needs none of ours;
2. the current ``ThreadSensitiveContext``: ``SyncToAsync.context_to_thread_executor[context]``
   (3.8 to 3.13 alike). That map is replaced by :class:`ContextLanes`, which hands each context a
   governed lane; its ``pop()`` at context exit releases the lane and returns no executor, so
   asgiref starts no join thread (3.13) and shuts nothing down on the loop (3.8). An executor given
   with ``ThreadSensitiveContext(executor=...)`` (3.13) is stored and honoured as is;
3. ``SyncToAsync.single_thread_executor`` (outside any context): replaced by one serial lane, so
   such calls still run one at a time, in order, on one of the pool's threads (under request
   affinity always the same one, the lane's home), without holding it between calls.

Non-sensitive calls go to the loop's default executor, which becomes the pool's
:class:`~threadgov._pool.SharedExecutor` on every loop that makes a governed call (and on the loop
running when ``install()`` is called).
"""

import asyncio
import contextlib
import threading
import weakref
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

from asgiref.sync import AsyncToSync, SyncToAsync, ThreadSensitiveContext

from ._pool import Lane, Pool, SharedExecutor

__all__ = ["Routing", "WaitingThreads"]


class WaitingThreads:
    """Finds the executor of a thread blocked in ``async_to_sync`` above the caller, if any.

    asgiref keeps it in ``AsyncToSync.executors``, a ``Local`` whose lookup is costly. Its value in
    a task is fixed when the task starts (``async_to_sync`` runs its coroutine in a task of its own
    whose context carries the executor, and async code cannot change it: ``async_to_sync`` refuses
    to run in an event loop's thread), so it is looked up once per task.
    """

    def __init__(self) -> None:
        # Used from event loop threads; each operation is one dict operation (atomic): two loops
        # racing on one task cannot happen (a task belongs to one loop).
        self._by_task: "weakref.WeakKeyDictionary[asyncio.Task, Optional[Executor]]" = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self) -> Optional[Executor]:
        task = asyncio.current_task() if asyncio._get_running_loop() is not None else None
        if task is None:  # outside any task: nothing to remember it by
            return getattr(AsyncToSync.executors, "current", None)
        try:
            return self._by_task[task]
        except KeyError:
            executor = self._by_task[task] = getattr(AsyncToSync.executors, "current", None)
            return executor


class ContextLanes(weakref.WeakKeyDictionary):
    """Stands in for ``SyncToAsync.context_to_thread_executor``: every context has a lane."""

    def __init__(self, new_lane: Callable[[], Lane], on_call: Callable[[], None]):
        super().__init__()  # holds executors given with ThreadSensitiveContext(executor=...)
        self._new_lane = new_lane
        self._on_call = on_call
        self._lock = threading.Lock()
        self._lanes: Dict[weakref.ref, Lane] = {}  # inserts and removals under _lock
        # Contexts collected without exiting. The weakref callback only appends here (it may run
        # during garbage collection inside any locked section); their lanes are released later.
        self._collected: List[weakref.ref] = []

    def __contains__(self, context) -> bool:
        return True

    def __getitem__(self, context) -> Executor:
        self._on_call()
        if self._collected:
            self._release_collected()
        if self.data:
            executor = self.get(context)
            if executor is not None:
                return executor
        lane = self._lanes.get(weakref.ref(context))
        if lane is None:
            with self._lock:
                key = weakref.ref(context, self._collected.append)
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = self._new_lane()
        return lane

    def assign(self, context, lane: Lane) -> None:
        """Give a context a lane of the caller's choosing (before its first call)."""
        with self._lock:
            self._lanes[weakref.ref(context, self._collected.append)] = lane

    def pop(self, context, *default):
        with self._lock:
            lane = self._lanes.pop(weakref.ref(context), None)
        if lane is not None:
            lane.release()
        return super().pop(context, *default)

    def _release_collected(self) -> None:
        lanes = []
        with self._lock:
            while self._collected:
                lane = self._lanes.pop(self._collected.pop(), None)
                if lane is not None:
                    lanes.append(lane)
        for lane in lanes:
            lane.release()

    def release_all(self) -> None:
        with self._lock:
            lanes = list(self._lanes.values())
            self._lanes.clear()
            self._collected.clear()
        for lane in lanes:
            lane.release()


class _SharedLane(Lane):
    """The lane that stands in for asgiref's process-wide single thread.

    Its calls run one at a time, in order. Under request affinity the lane is homed: every call
    runs on one worker, as on asgiref's single thread, but the lane holds no worker between calls (a
    sticky lane would keep one of the N workers for good after the first such call, a Channels
    middleware's user lookup, say, and with N=1 every request would then wait forever). Under call
    affinity it is a plain serial lane: each call on whichever worker is free.
    """

    def __init__(self, pool: Pool, on_call: Callable[[], None], *, homed: bool):
        super().__init__(pool, sticky=False, homed=homed)
        self._on_call = on_call

    def submit(self, fn, /, *args, **kwargs):
        self._on_call()
        return super().submit(fn, *args, **kwargs)


class Routing:
    """Installs and removes the pool in asgiref and on event loops."""

    def __init__(self, pool: Pool, *, sticky: bool):
        self._pool = pool
        self._shared = SharedExecutor(pool)
        self._contexts = ContextLanes(
            lambda: pool.lane(sticky=sticky, lease_cleanup=sticky), self.adopt_running_loop
        )
        self._single = _SharedLane(pool, self.adopt_running_loop, homed=sticky)
        self._serial_homed = sticky
        self._saved: Optional[tuple] = None
        self._loops_lock = threading.Lock()
        # Loops whose default executor is ours -> the one they had before (None: asyncio's lazy one).
        self._loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Optional[Executor]]" = (
            weakref.WeakKeyDictionary()
        )
        self._last_loop: Optional[weakref.ref] = None

    def install(self) -> None:
        self._saved = (SyncToAsync.context_to_thread_executor, SyncToAsync.single_thread_executor)
        SyncToAsync.context_to_thread_executor = self._contexts
        SyncToAsync.single_thread_executor = self._single
        self.adopt_running_loop()

    def uninstall(self) -> None:
        if self._saved is None:
            return
        SyncToAsync.context_to_thread_executor, SyncToAsync.single_thread_executor = self._saved
        self._saved = None
        self._contexts.release_all()
        self._single.release()
        with self._loops_lock:
            loops, self._loops = list(self._loops.items()), weakref.WeakKeyDictionary()
        for loop, previous in loops:
            if loop.is_closed() or getattr(loop, "_default_executor", self._shared) is not self._shared:
                continue
            if previous is None:
                # What asyncio itself would create on first use.
                previous = ThreadPoolExecutor(thread_name_prefix="asyncio")
            loop.set_default_executor(previous)

    @contextlib.asynccontextmanager
    async def serial_context(self):
        """A ``ThreadSensitiveContext`` whose calls run one at a time, in order, each holding a
        worker only while it runs: for long-lived callers such as a websocket consumer, which must
        not hold a thread while idle. Under request affinity its lane is homed (every call on one
        worker); under call affinity each call runs on whichever worker is free."""
        context = ThreadSensitiveContext()
        self._contexts.assign(context, self._pool.lane(sticky=False, homed=self._serial_homed))
        try:
            async with context:
                yield context
        finally:
            self._contexts.pop(context, None)  # also when an outer context made this one inert

    def adopt_running_loop(self) -> None:
        """Make the pool the default executor of the running loop (once per loop)."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return
        last = self._last_loop
        if last is not None and last() is loop:
            return
        with self._loops_lock:
            if loop not in self._loops and self._saved is not None:
                self._loops[loop] = getattr(loop, "_default_executor", None)
                loop.set_default_executor(self._shared)
        try:
            self._last_loop = weakref.ref(loop)
        except TypeError:  # a loop type without weak references: compare on every call
            self._last_loop = None

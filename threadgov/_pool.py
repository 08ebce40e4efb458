"""The bounded worker pool, and the lanes that give a caller affinity to one of its threads.

Two kinds of work reach the pool:

* **lane items**: thread-sensitive calls. A :class:`Lane` is a serial executor (one call at a time, in
  submission order). The first call of an idle lane leases a worker; a *sticky* lane keeps that worker
  until the lane is released, a non-sticky one gives it back as soon as its queue is empty. A *homed*
  lane leases nothing: it is given a home worker at its first call (the one with the fewest homed
  lanes, a new thread while there is room) and every one of its calls runs there, between the
  worker's other work.
* **shared items**: calls with no affinity (``thread_sensitive=False``, the loop's default executor).

Scheduling, all under one lock:

* a lane item goes to the lane's worker if it has one; else a free idle worker is leased, or a new
  thread is started while fewer than ``size`` exist, or the lane waits in FIFO order;
* a homed lane's item runs at once if its home is parked and free to take it, else the lane waits in
  its home's own FIFO queue of lanes; a home that parks holding a transaction open for its lease
  (see ``stealable``) hands its waiting homed lanes to other workers, which become their homes;
* a shared item goes to a free idle worker, else a new thread, else an idle *leased* worker (whose
  lane has nothing to run: so contexts that hold every worker cannot starve non-sensitive work), else
  it waits in FIFO order;
* a worker that finishes a call runs its lane's next item, else the next call of a lane homed on it
  (one call per lane in turn), else (if free) the oldest waiting lane or shared item, else (if
  leased) the oldest shared item, else it parks.

A queued item whose future was cancelled never runs.
"""

import asyncio
import itertools
import logging
import queue
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Callable, Deque, Dict, List, Optional

from ._errors import PoolSaturated
from ._stats import SampleWindow

__all__ = ["Pool", "Lane", "SharedExecutor"]

logger = logging.getLogger("threadgov")


class _Future(Future):
    """A future that notices when its caller gives up on it while the call runs.

    asyncio cancels the concurrent future of a cancelled ``run_in_executor`` await; once the call
    runs, that cancel fails and the result will be dropped: the pool counts it.
    """

    def __init__(self, pool: "Pool"):
        super().__init__()
        self._pool = pool

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self.running():
            self._pool._note_dropped()
        return False


class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs", "enqueued", "lane", "_token")

    def __init__(
        self,
        future: Future,
        fn: Callable,
        args: tuple,
        kwargs: dict,
        enqueued: float,
        lane: Optional["Lane"] = None,
    ):
        self.future = future
        self.lane = lane
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.enqueued = enqueued
        # Popped by whichever thread runs the item first (list.pop is atomic).
        self._token = [True]

    def claim(self) -> bool:
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    def run(self) -> Optional[tuple]:
        """Run the call without publishing its outcome.

        Returns None if the future was cancelled (the call did not run), else ``(raised, value)``.
        The pool counts the call before :meth:`publish`, so a caller that has its result also sees
        it in ``stats()``.
        """
        if not self.future.set_running_or_notify_cancel():
            return None
        return self.call()

    def call(self) -> tuple:
        """Run the call of an item whose future is already running: ``(raised, value)``."""
        try:
            return False, self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            return True, exc

    def publish(self, outcome: tuple) -> None:
        raised, value = outcome
        if raised:
            self.future.set_exception(value)
        else:
            self.future.set_result(value)


# Put in a parked worker's inbox: look for work again (or exit, when the pool is closing).
_WAKE = object()
# Returned by Pool._next: nothing to run, the worker is now parked.
_PARK = object()
# Not looked up yet.
_UNKNOWN = object()


class _Worker:
    # Guarded by the pool's lock, except ``inbox`` and the fields the worker thread writes itself.
    __slots__ = (
        "index", "thread", "inbox", "lane", "parked", "stealable", "db_aliases", "calls", "started",
        "homed", "homes",
    )

    def __init__(self, index: int):
        self.index = index
        self.thread: Optional[threading.Thread] = None
        # A parked worker blocks on its inbox (outside the lock) for its next item or _WAKE.
        self.inbox: "queue.SimpleQueue" = queue.SimpleQueue()
        self.lane: Optional["Lane"] = None
        self.parked = True  # a new worker waits for its first item
        # False while its lease has a transaction open: then it runs no other caller's calls.
        # Written by the worker thread itself (read by it in _next, and under the lock).
        self.stealable = True
        self.db_aliases: tuple = ()
        # Written by the worker thread only, read by the watchdog: the number of calls started
        # and when the current one started (None between calls).
        self.calls = 0
        self.started: Optional[float] = None
        # Homed lanes with calls waiting for this worker, in turn; how many live lanes call it home.
        self.homed: Deque["Lane"] = deque()
        self.homes = 0


class Lane(Executor):
    """A serial executor whose calls all run on one pool worker while it holds a lease.

    ``sticky`` lanes keep their worker between calls until :meth:`release`; others give it back
    whenever their queue is empty. ``homed`` lanes run every call on one home worker without
    holding it between calls.
    """

    def __init__(
        self, pool: "Pool", *, sticky: bool, lease_cleanup: bool = False, homed: bool = False
    ):
        if homed and (sticky or lease_cleanup):
            raise TypeError("a homed lane holds no lease: it cannot be sticky or have lease_cleanup")
        self._pool = pool
        self.sticky = sticky
        self.homed = homed
        # Connection cleanup once around the whole lease (a request) instead of around each call,
        # so that a connection and its transaction live as long as the lease, as in stock Django.
        self.lease_cleanup = lease_cleanup
        # Guarded by the pool's lock:
        self.items: Deque[_WorkItem] = deque()
        self.worker: Optional[_Worker] = None
        self.waiting = False
        self.released = False
        self.admitted = False  # has had a worker: its later calls are never refused
        self.last: Optional[_Worker] = None  # its previous worker, preferred when free
        self.seq = 0
        self.home: Optional[_Worker] = None  # homed lanes: where every call runs
        self.queued = False  # homed lanes: in its home's ``homed`` queue
        # Used only once the pool has shut down (stock behaviour: one thread per lane).
        self._fallback: Optional[ThreadPoolExecutor] = None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = self._pool._submit_lane(self, fn, args, kwargs)
        if future is None:
            if self._fallback is None:
                self._fallback = ThreadPoolExecutor(max_workers=1)
            future = self._fallback.submit(fn, *args, **kwargs)
        return future

    def release(self) -> None:
        """End the lease: calls already submitted still run, in order, then the worker is freed."""
        self._pool._release_lane(self)
        if self._fallback is not None:
            self._fallback.shutdown(wait=False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # asgiref never shuts a governed lane down; a lane ends with release().
        pass


class SharedExecutor(ThreadPoolExecutor):
    """The pool seen as a ``ThreadPoolExecutor``, for ``loop.set_default_executor()``.

    It starts no threads of its own; ``shutdown()`` (called when a loop closes) leaves the pool alone.
    """

    def __init__(self, pool: "Pool"):  # no super().__init__(): this facade owns no threads
        self._pool = pool
        self._max_workers = pool.size
        self._fallback: Optional[ThreadPoolExecutor] = None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = self._pool._submit_shared(fn, args, kwargs)
        if future is None:
            if self._fallback is None:
                self._fallback = ThreadPoolExecutor(thread_name_prefix="asyncio")
            future = self._fallback.submit(fn, *args, **kwargs)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._fallback is not None:
            self._fallback.shutdown(wait=wait, cancel_futures=cancel_futures)


class _Hooks:
    """What a worker does around each call and when it exits; the default does nothing."""

    def before_call(self) -> None:
        pass

    def after_call(self) -> tuple:
        """Return the database aliases with an open connection on this thread."""
        return ()

    def lease_is_clean(self) -> bool:
        """True unless this thread's connections are inside a transaction."""
        return True

    def thread_exit(self) -> None:
        pass

    def close(self) -> None:
        """The pool has shut down."""


class Pool:
    """At most ``size`` worker threads, started lazily, named ``<name>-<i>``."""

    def __init__(
        self,
        size: int,
        *,
        name: str = "threadgov",
        hooks: Optional[_Hooks] = None,
        clock: Callable[[], float] = time.perf_counter,
        nested_executor: Callable[[], Optional[Executor]] = lambda: None,
        max_queue: Optional[int] = None,
        queue_timeout: Optional[float] = None,
    ):
        self.size = size
        # Admission limits: a new context, or a call without affinity, that would have to wait is
        # refused when max_queue calls are already queued, and expires after queue_timeout s.
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._name = name
        self._hooks = hooks or _Hooks()
        self._clock = clock
        # Finds an executor of a thread that is blocked waiting for the caller (asgiref's
        # CurrentThreadExecutor); a queued shared item may run there rather than wait.
        self._nested_executor = nested_executor
        self._lock = threading.Lock()
        self._indexes = itertools.count(1)
        self._seqs = itertools.count()
        # Everything below is guarded by _lock.
        self._workers: List[_Worker] = []
        self._idle_free: Dict[_Worker, None] = {}  # parked, no lane; popitem() reuses the last parked
        self._idle_leased: Dict[_Worker, None] = {}  # parked, lane has nothing to run
        self._idle_pinned: Dict[_Worker, None] = {}  # same, but not stealable (open transaction)
        self._shared: Deque[tuple] = deque()  # (seq, item)
        self._waiting_lanes: Deque[Lane] = deque()
        self._closing = False
        self._overflow: Optional[threading.Thread] = None  # see _overflow_if_stuck
        self._queued = 0
        self._busy = 0
        self._leased = 0
        self.peak_busy = 0
        self.peak_queued = 0
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.dropped = 0
        self.rejected = 0
        self._last_start = clock()
        self.wait_times = SampleWindow()
        self.run_times = SampleWindow()

    # -- submission (any thread; usually an event loop) ------------------------------------------

    def lane(self, *, sticky: bool, lease_cleanup: bool = False, homed: bool = False) -> Lane:
        return Lane(self, sticky=sticky, lease_cleanup=lease_cleanup, homed=homed)

    def _submit_lane(self, lane: Lane, fn, args, kwargs) -> Optional[Future]:
        future: Future = _Future(self)
        with self._lock:
            if self._closing:
                return None
            item = _WorkItem(future, fn, args, kwargs, self._clock(), lane)
            self.submitted += 1
            if lane.homed:
                admission = self._place_homed(lane, item)
            else:
                admission = self._place_leased(lane, item)
        if admission:
            self._arm_timeout(item)
        return future

    def _place_leased(self, lane: Lane, item: _WorkItem) -> bool:
        """Run or queue a call of a leasing lane; True if it waits for admission (lock held)."""
        admission = False
        worker = lane.worker
        if worker is None and not lane.waiting:
            worker = self._free_worker(lane.last)
            if worker is not None:
                self._bind(worker, lane)
            else:
                admission = not lane.admitted
                if admission and self._full():
                    self._reject(item, "the queue is full")
                    return False
                lane.waiting = True
                lane.seq = next(self._seqs)
                self._waiting_lanes.append(lane)
        if worker is not None and worker.parked and not lane.items:
            self._hand(worker, item)
        else:  # its worker is busy, or the lane waits for one
            self._enqueue(lane.items, item)
        return admission

    def _place_homed(self, lane: Lane, item: _WorkItem) -> bool:
        """Run or queue a call of a homed lane; True if it waits for admission (lock held)."""
        home = lane.home
        if home is None or home in self._idle_pinned:  # pinned: held by another caller's transaction
            home = self._move_home(lane, self._home_for(lane, avoid=home))
        if not lane.items and home.parked and home not in self._idle_pinned:
            lane.admitted = True
            self._hand(home, item)
            return False
        admission = not lane.admitted
        if admission and self._full():
            self._reject(item, "the queue is full")
            return False
        self._enqueue(lane.items, item)
        if not lane.queued:
            lane.queued = True
            home.homed.append(lane)
        self._kick(home)  # a home just chosen may be parked with the lane's older calls
        return admission

    def _home_for(self, lane: Lane, avoid: Optional[_Worker] = None) -> _Worker:
        """The worker with the fewest homed lanes (parked ones first), or a new thread while there
        is room and every worker already has some; never ``avoid`` if another exists (lock held)."""
        best = None
        for worker in self._workers:
            if worker is avoid or worker in self._idle_pinned:
                continue
            if best is None or (worker.homes, not worker.parked) < (best.homes, not best.parked):
                best = worker
        if (best is None or best.homes > 0) and len(self._workers) < self.size:
            return self._new_worker()
        return best if best is not None else (avoid or lane.home or self._workers[0])

    def _move_home(self, lane: Lane, home: _Worker) -> _Worker:
        """Make ``home`` the lane's home; the lane keeps its queued calls, in order (lock held)."""
        old = lane.home
        if old is home:
            return home
        if not lane.released:
            if old is not None:
                old.homes -= 1
            home.homes += 1
        lane.home = home
        if lane.queued:
            old.homed.remove(lane)
            home.homed.append(lane)
        return home

    def _submit_shared(self, fn, args, kwargs) -> Optional[Future]:
        future: Future = _Future(self)
        item = _WorkItem(future, fn, args, kwargs, self._clock())
        helper = _UNKNOWN
        while True:
            with self._lock:
                if self._closing:
                    return None
                worker = self._free_worker()
                if worker is None and self._idle_leased:
                    worker = next(reversed(self._idle_leased))
                if worker is not None or helper is not _UNKNOWN:
                    self.submitted += 1
                    if worker is not None:
                        self._hand(worker, item)
                        return future
                    if helper is None and self._full():
                        return self._reject(item, "the queue is full")
                    self._enqueue(self._shared, (next(self._seqs), item))
                    self._overflow_if_stuck()
                    break
            # Every thread is taken. If the caller sits (via async_to_sync) under a thread that is
            # blocked waiting for it, that thread may run the call: otherwise N such threads
            # waiting for N queued calls would deadlock. Whoever claims the item first runs it.
            # Looked up outside the lock, then the pool is looked at again.
            helper = self._nested_executor()
        self._arm_timeout(item)
        if helper is not None:
            try:
                helper.submit(self._help, item)
            except RuntimeError:  # that executor has already finished
                pass
        return future

    def _help(self, item: _WorkItem) -> None:
        if not item.claim():
            return
        with self._lock:
            self._queued -= 1
        # Runs nested inside another governed call: no connection cleanup here.
        self._run_aside(item, cleanup=False, busy=False)

    def _run_aside(self, item: _WorkItem, *, cleanup: bool, busy: bool) -> None:
        """Run a claimed item on a thread outside the workers' loop (a thread waiting for it, or
        the overflow thread), count it and publish its outcome. ``cleanup``: connection cleanup
        around it; ``busy``: it was counted as running (``_start``)."""
        started = self._clock()
        if cleanup:
            outcome, _ = _call(self._hooks, item, cleanup=True, keep=False)
        else:
            outcome = item.run()
        finished = self._clock()
        with self._lock:
            if busy:
                self._busy -= 1
            self._account(item, outcome, started, finished)
        if outcome is not None:
            item.publish(outcome)

    def _note_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def _full(self) -> bool:
        return self.max_queue is not None and self._queued >= self.max_queue

    def _reject(self, item: _WorkItem, why: str) -> Future:
        """Refuse an item that was never queued (lock held)."""
        item.claim()
        self.rejected += 1
        item.future.set_running_or_notify_cancel()
        item.future.set_exception(self._saturated(why))
        return item.future

    def _saturated(self, why: str) -> PoolSaturated:
        return PoolSaturated(
            f"threadgov refused a call: {why} (max_threads={self.size}, max_queue={self.max_queue}, "
            f"queue_timeout={self.queue_timeout}); the call did not run"
        )

    def _arm_timeout(self, item: _WorkItem) -> None:
        """Expire a queued admission after queue_timeout, on the caller's event loop."""
        if self.queue_timeout is None:
            return
        loop = asyncio._get_running_loop()
        if loop is not None:
            loop.call_later(self.queue_timeout, self._expire, item)

    def _expire(self, item: _WorkItem) -> None:
        if not item.claim():
            return  # it started (or was helped) in time
        future = item.future
        with self._lock:
            self._queued -= 1
            if future.set_running_or_notify_cancel():
                self.rejected += 1
            else:
                self.cancelled += 1
                return
        future.set_exception(self._saturated(f"no thread within queue_timeout={self.queue_timeout} s"))

    def _enqueue(self, queue: deque, entry) -> None:
        queue.append(entry)
        self._queued += 1
        if self._queued > self.peak_queued:
            self.peak_queued = self._queued

    def _free_worker(self, prefer: Optional[_Worker] = None) -> Optional[_Worker]:
        """A parked worker without a lane (``prefer`` if it is one), or a new (parked) thread if
        there is room (lock held)."""
        if self._idle_free:
            if prefer is not None and prefer in self._idle_free:
                return prefer
            return next(reversed(self._idle_free))
        if len(self._workers) < self.size:
            return self._new_worker()
        return None

    def _new_worker(self) -> _Worker:
        """Start a thread (parked until it is handed an item; lock held, room checked)."""
        worker = _Worker(next(self._indexes))
        worker.thread = threading.Thread(
            target=_work,
            args=(weakref.ref(self), worker),
            name=f"{self._name}-{worker.index}",
            daemon=True,
        )
        self._workers.append(worker)
        worker.thread.start()
        return worker

    def _bind(self, worker: _Worker, lane: Lane) -> None:
        if worker.parked:
            self._idle_free.pop(worker, None)
            self._idle_leased[worker] = None
        lane.admitted = True
        lane.last = worker
        worker.lane = lane
        lane.worker = worker
        self._leased += 1

    def _unbind(self, worker: _Worker) -> None:
        worker.lane.worker = None
        worker.lane = None
        self._leased -= 1

    def _hand(self, worker: _Worker, item: _WorkItem) -> None:
        """Give a parked worker an item to run now (lock held)."""
        item.claim()
        self._dispatch(worker, item)

    def _dispatch(self, worker: _Worker, item: _WorkItem) -> None:
        """Wake a parked worker with an item already claimed (lock held)."""
        self._unpark(worker)
        self._start(item)
        worker.inbox.put(item)

    def _unpark(self, worker: _Worker) -> None:
        worker.parked = False
        self._idle_free.pop(worker, None)
        self._idle_leased.pop(worker, None)
        self._idle_pinned.pop(worker, None)

    def _start(self, item: _WorkItem) -> _WorkItem:
        """Count an item as running (lock held)."""
        self._busy += 1
        if self._busy > self.peak_busy:
            self.peak_busy = self._busy
        self._last_start = self._clock()
        return item

    def _release_lane(self, lane: Lane) -> None:
        with self._lock:
            if lane.released:
                return
            lane.released = True
            if lane.home is not None:
                lane.home.homes -= 1  # its queued calls still run there
            worker = lane.worker
            if worker is not None and worker.parked and not lane.items:
                self._unbind(worker)
                self._unpark(worker)
                worker.inbox.put(_WAKE)  # it looks for waiting work, then parks as a free worker

    # -- the worker side --------------------------------------------------------------------------

    def _next(self, worker: _Worker):
        """The worker's next item (counted as running), else _PARK (now parked), else None when
        the worker must exit (lock held)."""
        lane = worker.lane
        if lane is not None:
            item = self._pop_lane(lane)
            if item is not None:
                return self._start(item)
            if lane.released or not lane.sticky or self._closing:
                self._unbind(worker)
                lane = None
        if worker.homed and (lane is None or worker.stealable):
            item = self._next_homed(worker)
            if item is not None:
                return self._start(item)
        item = self._next_waiting(worker) if lane is None else self._next_shared()
        if item is not None:
            return self._start(item)
        if self._closing:
            return None
        worker.parked = True
        if worker.lane is None:
            self._idle_free[worker] = None
        elif worker.stealable:
            self._idle_leased[worker] = None
        else:
            self._idle_pinned[worker] = None
            if worker.homed:  # they would wait for the end of another caller's transaction
                self._rehome_waiting(worker)
            self._overflow_if_stuck()
        return _PARK

    def _overflow_if_stuck(self) -> None:
        """Every worker is parked inside its own caller's open transaction, and calls without
        affinity wait. No worker may run them (they would run inside that transaction), and those
        callers may well be waiting for them: start one thread beyond ``size`` that runs them until
        a worker is free to (lock held)."""
        if (
            self._overflow is not None
            or not self._shared
            or self._closing
            or len(self._workers) < self.size
            or len(self._idle_pinned) < len(self._workers)
        ):
            return
        logger.warning(
            "threadgov: all %d workers are held by open transactions while calls without affinity "
            "wait; running those on an extra thread",
            self.size,
        )
        self._overflow = threading.Thread(
            target=_overflow, args=(self,), name=f"{self._name}-overflow", daemon=True
        )
        self._overflow.start()

    def _next_homed(self, worker: _Worker) -> Optional[_WorkItem]:
        """The next call of the lanes homed on the worker, one lane after another (lock held)."""
        homed = worker.homed
        while homed:
            lane = homed.popleft()
            item = self._pop_lane(lane)
            if lane.items:
                homed.append(lane)
            else:
                lane.queued = False
            if item is not None:
                lane.admitted = True
                return item
        return None

    def _rehome_waiting(self, pinned: _Worker) -> None:
        """Move the homed lanes waiting for a worker that parked pinned to other workers, which
        become their homes (lock held)."""
        for lane in list(pinned.homed):
            home = self._home_for(lane, avoid=pinned)
            if home is pinned:  # no other worker: they wait for this one
                return
            self._move_home(lane, home)
            self._kick(home)

    def _kick(self, worker: _Worker) -> None:
        """Start a parked, unpinned worker on its homed lanes' next call, if any (lock held)."""
        if worker.parked and worker not in self._idle_pinned:
            item = self._next_homed(worker)
            if item is not None:
                self._dispatch(worker, item)

    def _next_waiting(self, worker: _Worker) -> Optional[_WorkItem]:
        """For a free worker: the oldest of the waiting lanes and shared items (lock held)."""
        lanes, shared = self._waiting_lanes, self._shared
        while lanes or shared:
            if lanes and (not shared or lanes[0].seq < shared[0][0]):
                lane = lanes.popleft()
                lane.waiting = False
                item = self._pop_lane(lane)
                if item is None:  # its calls were refused or cancelled meanwhile
                    continue
                self._bind(worker, lane)
                return item
            item = self._next_shared()
            if item is not None:
                return item
        return None

    def _pop_lane(self, lane: Lane) -> Optional[_WorkItem]:
        items = lane.items
        while items:
            item = items.popleft()
            if item.claim():
                self._queued -= 1
                return item
        return None

    def _next_shared(self) -> Optional[_WorkItem]:
        shared = self._shared
        while shared:
            _, item = shared.popleft()
            if item.claim():
                self._queued -= 1
                return item
        return None

    def _account(self, item: _WorkItem, outcome: Optional[tuple], started: float, finished: float):
        """Count a finished item (lock held)."""
        if outcome is None:
            self.cancelled += 1
            return
        self.completed += 1
        if outcome[0]:
            self.failed += 1
        self.wait_times.add(started - item.enqueued)
        self.run_times.add(finished - started)

    # -- shutdown ---------------------------------------------------------------------------------

    def shutdown(self, timeout: Optional[float] = None, *, cancel_queued: bool = False) -> bool:
        """Stop accepting work, let queued work run (or cancel it), and join the workers.

        Returns True if every worker exited within ``timeout`` seconds.
        """
        cancelled = []
        with self._lock:
            self._closing = True
            workers = list(self._workers)
            if cancel_queued:
                queues = [lane.items for lane in self._waiting_lanes]
                queues += [w.lane.items for w in workers if w.lane is not None]
                queues += [lane.items for w in workers for lane in w.homed]
                queues.append([item for _, item in self._shared])
                for items in queues:
                    for item in items:
                        if item.claim():
                            self._queued -= 1
                            self.cancelled += 1
                            cancelled.append(item.future)
            for worker in workers:
                if worker.parked:
                    self._unpark(worker)
                    worker.inbox.put(_WAKE)
        for future in cancelled:
            future.cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        for worker in workers:
            if worker.thread is current:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.thread.join(remaining)
        alive = [w.thread.name for w in workers if w.thread.is_alive() and w.thread is not current]
        self._hooks.close()
        if alive:
            logger.warning("threadgov: %d worker(s) still running at shutdown: %s", len(alive), alive)
        return not alive

    # -- statistics -------------------------------------------------------------------------------

    def watch(self) -> dict:
        """What the watchdog needs, copied under the lock."""
        with self._lock:
            running, workers = [], []
            for worker in self._workers:
                started = worker.started
                if started is not None:
                    running.append((worker, worker.calls, started))
                    what = f"running a call for {self._clock() - started:.3f} s"
                elif worker.lane is not None:
                    what = "leased by a context, idle"
                else:
                    what = "idle"
                workers.append((worker, what))
            return dict(
                size=self.size,
                running=running,
                workers=workers,
                full=len(self._workers) >= self.size and not self._idle_free,
                queued=self._queued,
                last_start=self._last_start,
            )

    def snapshot(self) -> dict:
        """Copy the live counters (under the lock; cheap)."""
        with self._lock:
            aliases: Dict[str, int] = {}
            for worker in self._workers:
                for alias in worker.db_aliases:
                    aliases[alias] = aliases.get(alias, 0) + 1
            return dict(
                threads_alive=sum(1 for w in self._workers if w.thread.is_alive()),
                busy=self._busy,
                idle=len(self._idle_free) + len(self._idle_leased) + len(self._idle_pinned),
                leased=self._leased,
                queued=self._queued,
                waiting_contexts=sum(1 for lane in self._waiting_lanes if lane.items)
                + sum(1 for w in self._workers for lane in w.homed if lane.items),
                peak_busy=self.peak_busy,
                peak_queued=self.peak_queued,
                submitted=self.submitted,
                completed=self.completed,
                failed=self.failed,
                cancelled=self.cancelled,
                dropped=self.dropped,
                rejected=self.rejected,
                wait_values=self.wait_times.values(),
                wait_max=self.wait_times.max,
                run_values=self.run_times.values(),
                run_max=self.run_times.max,
                db_connections=tuple(sorted(aliases.items())),
            )


def _work(pool_ref: "weakref.ref[Pool]", worker: _Worker) -> None:
    """A worker thread's loop: wait for an item, run it between the pool's hooks, count it, then
    take the next one in the same locked section (or park), and only then publish the result.

    Connection cleanup runs around each call, except for lanes with ``lease_cleanup``: there it
    runs before the lease's first call and after its last (when the worker leaves the lane), and
    calls of other callers that borrow the leased worker meanwhile share the lease's cleanup.
    """
    pool = pool_ref()
    if pool is None:
        return
    hooks, clock, lock, inbox = pool._hooks, pool._clock, pool._lock, worker.inbox
    del pool
    lease: Optional[Lane] = None  # the lane whose lease-wide cleanup is open on this thread
    try:
        item = inbox.get()
        while True:
            if item is _WAKE:
                pool = pool_ref()
                if pool is None:
                    return
                with lock:
                    item = pool._next(worker)
                    bound = worker.lane
                del pool
                if lease is not None and bound is not lease:
                    lease = _end_lease(hooks, worker, lock)
                if item is None:
                    return
                if item is _PARK:
                    item = inbox.get()
                    continue
            lane = item.lane
            scoped = lane is not None and lane.lease_cleanup
            worker.calls += 1
            worker.started = started = clock()
            outcome, aliases = _call(hooks, item, cleanup=lease is None, keep=scoped)
            finished = clock()
            worker.started = None
            if scoped:
                lease = lane
                worker.stealable = _safely(hooks.lease_is_clean, True)
            pool = pool_ref()
            if pool is None:
                return
            with lock:
                if aliases is not None:
                    worker.db_aliases = aliases
                pool._busy -= 1
                pool._account(item, outcome, started, finished)
                following = pool._next(worker)
                bound = worker.lane
            del pool
            if outcome is not None:
                item.publish(outcome)
            del item, outcome
            if lease is not None and bound is not lease:
                lease = _end_lease(hooks, worker, lock)
            if following is None:
                return
            item = inbox.get() if following is _PARK else following
    finally:
        try:
            hooks.thread_exit()
        except Exception:
            logger.exception("threadgov: closing connections of an exiting worker failed")
        with lock:
            worker.db_aliases = ()


def _overflow(pool: Pool) -> None:
    """The extra thread of ``Pool._overflow_if_stuck``: run waiting calls without affinity, each
    with its own connection cleanup, while every worker stays parked in a transaction."""
    hooks, lock = pool._hooks, pool._lock
    try:
        while True:
            with lock:
                item = None
                if not pool._closing and len(pool._idle_pinned) == len(pool._workers):
                    item = pool._next_shared()
                if item is None:  # a worker can take them again (or nothing waits)
                    return
                pool._start(item)
            pool._run_aside(item, cleanup=True, busy=True)
            del item
    finally:
        _safely(hooks.thread_exit, None)
        with lock:
            pool._overflow = None
            # A call queued after the check above, with every worker still held, needs another.
            pool._overflow_if_stuck()


def _safely(hook: Callable, default):
    try:
        return hook()
    except Exception:
        logger.exception("threadgov: connection hook %s failed", getattr(hook, "__name__", hook))
        return default


def _end_lease(hooks: _Hooks, worker: _Worker, lock: threading.Lock) -> None:
    """The worker left its lease's lane: the cleanup after the lease's last call."""
    aliases = _safely(hooks.after_call, ())
    with lock:
        worker.db_aliases = aliases
        worker.stealable = True
    return None


def _call(hooks: _Hooks, item: _WorkItem, *, cleanup: bool, keep: bool) -> tuple:
    """Run one item, with connection cleanup before it (if ``cleanup``) and after it (if
    ``cleanup`` and not ``keep``: a lease-wide cleanup runs when the lease ends).

    Returns (outcome of ``item.run()``, the database aliases now open on this thread or None if
    unknown).
    """
    if not item.future.set_running_or_notify_cancel():  # dropped while queued: no cleanup, no call
        return None, None
    if cleanup:
        _safely(hooks.before_call, None)
    outcome = item.call()
    if cleanup and not keep:
        return outcome, _safely(hooks.after_call, ())
    return outcome, None

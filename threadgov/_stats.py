"""Immutable statistics snapshots and the bounded sample windows behind their percentiles."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Tuple

__all__ = ["Stats", "Timings", "SampleWindow"]

# Percentiles are computed over the most recent SAMPLE_WINDOW calls (bounded memory).
SAMPLE_WINDOW = 4096


class SampleWindow:
    """The last ``capacity`` samples in a ring, plus the all-time maximum.

    Not thread-safe: the pool calls ``add`` and ``summary`` under its lock.
    """

    __slots__ = ("_ring", "_next", "_full", "_max")

    def __init__(self, capacity: int = SAMPLE_WINDOW) -> None:
        self._ring = [0.0] * capacity
        self._next = 0
        self._full = False
        self._max = 0.0

    def add(self, value: float) -> None:
        self._ring[self._next] = value
        self._next += 1
        if self._next == len(self._ring):
            self._next = 0
            self._full = True
        if value > self._max:
            self._max = value

    def values(self) -> list:
        """A copy of the samples currently in the window (cheap: a list slice)."""
        return self._ring[:] if self._full else self._ring[: self._next]

    @property
    def max(self) -> float:
        return self._max


@dataclass(frozen=True)
class Timings:
    """Percentiles of a duration, in seconds, over the last ``samples`` calls; ``max`` is all-time."""

    samples: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_values(cls, values: list, maximum: float) -> "Timings":
        if not values:
            return cls(0, 0.0, 0.0, 0.0, maximum)
        values.sort()
        n = len(values)

        def rank(permille: int) -> float:
            # Nearest rank, in integers to avoid float rounding: the ceil(p * n)-th smallest sample.
            return values[-(-permille * n // 1000) - 1]

        return cls(n, rank(500), rank(950), rank(990), maximum)


@dataclass(frozen=True)
class Stats:
    """A snapshot of the governor; see README.rst ("Statistics") for every field."""

    size: int
    source: str
    affinity: str
    threads_alive: int
    busy: int
    idle: int
    leased: int
    queued: int
    waiting_contexts: int
    peak_busy: int
    peak_queued: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    dropped: int
    rejected: int
    slow_calls: int
    wait_time: Timings
    run_time: Timings
    db_connections: Tuple[Tuple[str, int], ...]
    process_threads: int

    def as_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (nested timings as dicts, DB connections as ``{alias: count}``)."""
        data = dataclasses.asdict(self)
        data["db_connections"] = dict(self.db_connections)
        return data

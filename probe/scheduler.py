"""When each series runs: absolute times, stable spread, bounded concurrency, honest lag.

* A series with interval ``I`` runs at wall-clock instants ``offset + k*I``, where
  ``offset`` comes from a hash of the probe id and the series key: stable across restarts,
  spread over the interval, different between probes (no thundering herd).
* Due times are computed as ``base + k*I`` from a counter, never by adding up sleeps, so
  late wake-ups do not accumulate into drift.
* When the probe cannot keep up, runs more than one interval late are skipped and counted,
  and the lag is reported (metric and log line), instead of silently stretching intervals.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Job(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def interval(self) -> float: ...


J = TypeVar("J", bound=Job)


def start_offset(probe_id: str, key: str, interval: float) -> float:
    """Phase in ``[0, interval)`` of a series, from the probe id and the series key."""
    digest = hashlib.blake2b(f"{probe_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


@dataclass(slots=True)
class _Entry(Generic[J]):
    base: float  # monotonic time of run k=0
    k: int
    job: J
    alive: bool = True

    @property
    def due(self) -> float:
        return self.base + self.k * self.job.interval


@dataclass(slots=True)
class Due(Generic[J]):
    job: J
    due: float  # monotonic instant the run was due
    lag: float  # how late it is handed out (seconds)
    skipped: int  # whole runs skipped before this one because the probe was too late


class Schedule(Generic[J]):
    """The pure, clock-free core of the scheduler (tested with simulated time)."""

    def __init__(self, probe_id: str) -> None:
        self.probe_id = probe_id
        # (due, seq, entry) tuples: compared in C, and seq breaks ties without touching entry
        self._heap: list[tuple[float, int, _Entry[J]]] = []
        self._by_key: dict[str, _Entry[J]] = {}
        self._seq = itertools.count()

    def jobs(self) -> list[J]:
        """The jobs scheduled now."""
        return [entry.job for entry in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)

    def set_jobs(self, jobs: Iterable[J], mono_now: float, wall_now: float) -> None:
        """Replace the job set; a job whose key stays keeps its place in time."""
        wanted = {j.key: j for j in jobs}
        for key, entry in list(self._by_key.items()):
            if key not in wanted or wanted[key].interval != entry.job.interval:
                entry.alive = False
                del self._by_key[key]
            else:
                entry.job = wanted[key]
        for key, job in wanted.items():
            if key in self._by_key:
                continue
            interval = job.interval
            offset = start_offset(self.probe_id, key, interval)
            # next wall instant of the form offset + k*interval, mapped to monotonic time
            wall_due = offset + math.ceil((wall_now - offset) / interval) * interval
            base = mono_now + (wall_due - wall_now)
            entry = _Entry(base, 0, job)
            self._by_key[key] = entry
            self._heap.append((base, next(self._seq), entry))
        self._heap = [h for h in self._heap if h[2].alive]
        heapq.heapify(self._heap)

    def next_due(self) -> float | None:
        while self._heap and not self._heap[0][2].alive:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Due[J]]:
        """Every run due at or before ``now``; each series is re-queued for its next run."""
        out: list[Due[J]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, entry = heapq.heappop(heap)
            if not entry.alive:
                continue
            interval = entry.job.interval
            skipped = int((now - due) // interval)
            if skipped:
                entry.k += skipped
                due = entry.base + entry.k * interval
            out.append(Due(entry.job, due, now - due, skipped))
            entry.k += 1
            heapq.heappush(heap, (entry.base + entry.k * interval, next(self._seq), entry))
        return out

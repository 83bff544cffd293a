"""The scheduler: spread starts, absolute times (no drift), honest about being late.

These run the clock-free core with simulated time; the async loop around it is covered by
the end-to-end tests of ``run``.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from probe.scheduler import Schedule, start_offset


@dataclass(frozen=True)
class J:
    key: str
    interval: float


WALL0 = 1_795_630_000.0  # a wall-clock instant; monotonic time starts at 1000 below
MONO0 = 1000.0


def simulate(
    jobs: list[J], seconds: float, jitter: float = 0.0, seed: int = 1, probe: str = "probe-a"
) -> dict[str, list[float]]:
    """Run the schedule for ``seconds`` of simulated time, waking up late by up to ``jitter``.

    Returns each job's run instants as wall-clock times.
    """
    rng = random.Random(seed)
    s: Schedule[J] = Schedule(probe)
    s.set_jobs(jobs, MONO0, WALL0)
    runs: dict[str, list[float]] = {j.key: [] for j in jobs}
    now = MONO0
    while True:
        nd = s.next_due()
        assert nd is not None
        now = max(now, nd + rng.uniform(0, jitter))  # the event loop wakes up a bit late
        if now > MONO0 + seconds:
            break
        for d in s.pop_due(now):
            assert d.skipped == 0
            runs[d.job.key].append(d.due - MONO0 + WALL0)
    return runs


def test_no_drift_over_ten_minutes_with_late_wakeups() -> None:
    """Over 10 simulated minutes with wake-ups up to 40 ms late, run k is due at offset+k*I."""
    jobs = [J(f"series-{i}", iv) for i, iv in enumerate([1, 5, 10, 30, 60, 7.5] * 5)]
    runs = simulate(jobs, 600, jitter=0.04)
    for j in jobs:
        times = runs[j.key]
        assert len(times) in (int(600 / j.interval), int(600 / j.interval) + 1)
        offset = start_offset("probe-a", j.key, j.interval)
        for t in times:
            k = round((t - offset) / j.interval)
            assert abs(t - (offset + k * j.interval)) < 1e-6  # exact, not accumulated
        assert abs(times[-1] - times[0] - (len(times) - 1) * j.interval) < 1e-6


def test_starts_are_spread_over_the_interval() -> None:
    """1,000 series with one interval start spread evenly, not all at once."""
    jobs = [J(f"t{i}|192.0.2.{i % 250}|udp|example.com.|SOA", 60) for i in range(1000)]
    offsets = [start_offset("probe-a", j.key, 60) for j in jobs]
    buckets = [0] * 10
    for o in offsets:
        assert 0 <= o < 60
        buckets[int(o // 6)] += 1
    assert min(buckets) > 60 and max(buckets) < 140  # ~100 per 6-second slice
    assert statistics.pstdev(offsets) > 15


def test_offsets_stable_across_restarts_and_differ_between_probes() -> None:
    """The same probe id keeps its phase after a restart; another probe gets another phase."""
    jobs = [J(f"s{i}", 30) for i in range(50)]
    first = simulate(jobs, 120, seed=1)
    later: Schedule[J] = Schedule("probe-a")
    # a restart 1,000,017 s later, with a different monotonic clock
    later.set_jobs(jobs, 5.0, WALL0 + 1_000_017)
    d = later.next_due()
    assert d is not None
    popped = later.pop_due(d)
    for p in popped:
        wall = p.due - 5.0 + WALL0 + 1_000_017
        phase_then = first[p.job.key][0] % 30
        assert abs(wall % 30 - phase_then) < 1e-3
    other = [start_offset("probe-b", j.key, 30) for j in jobs]
    mine = [start_offset("probe-a", j.key, 30) for j in jobs]
    assert sum(abs(a - b) > 0.5 for a, b in zip(mine, other, strict=True)) > 40


def test_overload_skips_and_reports_instead_of_stretching() -> None:
    """A probe 3.5 intervals late skips the missed runs, says how many, keeps the grid."""
    s: Schedule[J] = Schedule("p")
    s.set_jobs([J("a", 10)], MONO0, WALL0)
    first = s.next_due()
    assert first is not None
    (d0,) = s.pop_due(first)
    assert d0.skipped == 0 and d0.lag == 0
    late = first + 10 + 35  # next run was due at first+10; we look 35 s after that
    (d1,) = s.pop_due(late)
    assert d1.skipped == 3
    assert d1.due == first + 40 and abs(d1.lag - 5) < 1e-9
    assert s.next_due() == first + 50  # still on the grid


def test_set_jobs_keeps_running_series_in_place() -> None:
    """Re-resolving (same keys) leaves due times alone; new keys join, gone keys leave."""
    s: Schedule[J] = Schedule("p")
    s.set_jobs([J("a", 10), J("b", 10)], MONO0, WALL0)
    due_a = {d.job.key: d.due for d in s.pop_due(MONO0 + 10)}
    s.set_jobs([J("a", 10), J("c", 10)], MONO0 + 10, WALL0 + 10)
    assert len(s) == 2
    runs = s.pop_due(MONO0 + 20)
    keys = {d.job.key for d in runs}
    assert "b" not in keys and keys == {"a", "c"}
    a = next(d for d in runs if d.job.key == "a")
    assert a.due == due_a["a"] + 10

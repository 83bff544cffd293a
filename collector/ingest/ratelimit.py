"""Per-probe rate limits: token buckets of records and of requests, behind the ingest
API's ``429``."""

from __future__ import annotations

from collections.abc import Callable


class TokenBuckets:
    """A token bucket per probe (of records, or of requests).

    Each probe's bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
    second of ``clock``. A take larger than the burst takes the whole burst, so a batch
    larger than the burst still gets through once the bucket is full.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: dict[str, tuple[float, float]] = {}  # probe -> (level, at clock())

    def take(self, probe: str, n: int) -> float:
        """Take ``n`` tokens from ``probe``'s bucket: 0 when taken, else the seconds to
        wait until they would be (nothing is taken then)."""
        n = min(n, int(self.burst))
        now = self.clock()
        level, at = self._state.get(probe, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if level < n:
            self._state[probe] = (level, now)
            return (n - level) / self.rate
        self._state[probe] = (level - n, now)
        return 0.0


RecordBuckets = TokenBuckets  # the name it had when it held records only

__all__ = ["RecordBuckets", "TokenBuckets"]

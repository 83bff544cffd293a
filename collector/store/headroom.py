"""How near InfluxDB is to its own limits, for ``/readyz``'s warnings.

InfluxDB 1.x refuses a point that would add a tag value past ``max-values-per-tag``
(100,000 by default) or a series past ``max-series-per-database`` (1,000,000), for every
writer, until the shard rolls over; 2.x and 3.x have limits of their own. Every 15 s
this asks InfluxDB for its estimates (``SHOW TAG VALUES CARDINALITY`` of the tags probes
choose, ``SHOW SERIES CARDINALITY``) and says when one passes ``WARN_AT`` of the limit
the collector is told of (``influxdb_max_values_per_tag``,
``influxdb_max_series_per_database``), before writes are refused. An InfluxDB that does
not answer these statements (a 3.x, say) is left unwatched, with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from collector.kinds.base import SERIES_TAGS
from collector.store.influxql import InfluxQL, QueryError
from collector.store.query import Cardinality

log = logging.getLogger("popwatch.collector")

#: the share of a limit past which a warning is given
WARN_AT: Final = 0.8
EVERY_S: Final = 15.0
TAGS: Final = SERIES_TAGS


class Headroom:
    """The last estimates, and the warnings they give."""

    def __init__(self, influx: InfluxQL, max_values_per_tag: int, max_series: int) -> None:
        self.influx = influx
        self.max_values_per_tag = max_values_per_tag
        self.max_series = max_series
        self._warnings: list[str] = []
        self._unwatched = False

    def warnings(self) -> list[str]:
        return list(self._warnings)

    async def check(self) -> list[str]:
        """Ask InfluxDB once; the warnings (also kept for ``warnings``)."""
        statements = [Cardinality(t) for t in TAGS] + [Cardinality()]
        try:
            results = await self.influx.query(statements)
        except QueryError as exc:
            if not self._unwatched:
                log.info("InfluxDB's cardinality is not watched (%s)", exc)
                self._unwatched = True
            return self.warnings()
        out = []
        for tag, result in zip(TAGS, results, strict=False):
            for s in result:
                for row in s.values:
                    n = int(row[-1] or 0)
                    if n >= WARN_AT * self.max_values_per_tag:
                        out.append(
                            f"InfluxDB holds about {n} values of tag {tag} in {s.name}, "
                            f"{n / self.max_values_per_tag:.0%} of its max-values-per-tag "
                            f"({self.max_values_per_tag}, influxdb_max_values_per_tag): past "
                            f"it, InfluxDB refuses every new {tag} of {s.name}"
                        )
        for s in results[-1] if results else []:
            for row in s.values:
                n = int(row[-1] or 0)
                if n >= WARN_AT * self.max_series:
                    out.append(
                        f"InfluxDB holds about {n} series, {n / self.max_series:.0%} of its "
                        f"max-series-per-database ({self.max_series}, "
                        "influxdb_max_series_per_database): past it, it refuses new series"
                    )
        self._warnings = out
        return out

    @contextlib.asynccontextmanager
    async def watching(self, every_s: float = EVERY_S) -> AsyncIterator[Headroom]:
        """Check every ``every_s`` until the block ends."""

        async def loop() -> None:
            while True:
                await self.check()
                await asyncio.sleep(every_s)

        task = asyncio.get_running_loop().create_task(loop(), name="influxdb-headroom")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["TAGS", "WARN_AT", "Headroom"]

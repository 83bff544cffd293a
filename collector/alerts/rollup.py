"""Baselines: the ``rollup_5m`` measurement, and the medians over it the rules compare with.

Every 5-minute bucket, once it has been closed for ``DELAY_S``, is rolled up by one
InfluxQL query per judged kind: the median of the kind's value field (``rtt_ms`` for dns,
``ttfb_ms`` for http: ``collector.kinds``) and the count of answers, per probe, target
and site. Those rows are written to ``rollup_5m`` (tags
``kind``, probe, region, target, site, topology, provider; fields ``p50``, ``n``), with
one marker row per bucket (``kind=done``), so a restarted engine knows which buckets
exist and computes only the missing ones (a first start computes the last day's).

A series' baseline is the median of its bucket medians over the 24 hours before the
window: 288 rows, not 24 h of raw points. The engine keeps those rows in memory (about
5 kB per series), loaded from ``rollup_5m`` when it starts and extended by each new
bucket, so a cycle asks InfluxDB only for the window. Points that reach InfluxDB more
than ``DELAY_S`` after their bucket closed are not in its row.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import logging
import statistics
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from collector.kinds import Kind, alerted
from collector.store.influxql import InfluxQL, Series
from collector.store.lineproto import Unrepresentable, line
from collector.store.query import AnyOf, Col, Fn, Select, Span, Tag
from probe.wire import NS

log = logging.getLogger("popwatch.collector.alerts")

BUCKET_S = 300
DELAY_S = 60  # a bucket is rolled up once it has been closed this long
BASELINE_S = 86400  # the baseline: the 24 h before the window
MIN_BUCKETS = 6  # a baseline needs at least 30 minutes of history
CHUNK_BUCKETS = 12  # buckets per query when catching up (an hour)
MEASUREMENT = "rollup_5m"

#: a series of the rollup: (kind, probe, target, site)
Key = tuple[str, str, str, str]


def _tags(kind: Kind[Any]) -> tuple[str, ...]:
    """The tags a kind's rollup rows are kept by."""
    a = kind.alerting
    site = ("site",) if a is not None and a.site else ()
    return ("probe", "region", "target", *site, "topology", "provider")


def _value(kind: Kind[Any]) -> str:
    assert kind.alerting is not None
    return kind.alerting.value


class _Ring:
    """One series' bucket medians, oldest first: bucket index (start // 300) and p50."""

    __slots__ = ("buckets", "p50")

    def __init__(self) -> None:
        self.buckets = array.array("l")
        self.p50 = array.array("d")

    def put(self, bucket: int, p50: float) -> None:
        if not self.buckets or bucket > self.buckets[-1]:
            self.buckets.append(bucket)
            self.p50.append(p50)
            return
        lo = bisect.bisect_left(self.buckets, bucket)  # a bucket redone, or out of order
        if lo < len(self.buckets) and self.buckets[lo] == bucket:
            self.p50[lo] = p50
        else:
            self.buckets.insert(lo, bucket)
            self.p50.insert(lo, p50)

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Indexes of the buckets in [lo, hi)."""
        return bisect.bisect_left(self.buckets, lo), bisect.bisect_left(self.buckets, hi)

    def drop_before(self, bucket: int) -> None:
        i, _ = self.span(bucket, 1 << 62)
        if i:
            del self.buckets[:i]
            del self.p50[:i]


class Rollups:
    """The rollup rows of the last day, in memory; ``advance`` adds the buckets that
    have closed. With ``write`` false (``alerts check``) new rows stay in memory."""

    def __init__(self, influx: InfluxQL, write: bool = True) -> None:
        self.influx = influx
        self.write = write
        self.rings: dict[Key, _Ring] = {}
        self.sites: dict[tuple[str, str], set[str]] = defaultdict(set)  # (probe, target)
        self.done: set[int] = set()  # bucket indexes rolled up
        self._medians: dict[Key, tuple[int, int, float, int]] = {}
        self._usual: dict[tuple[str, str], tuple[int, int, str | None]] = {}
        self.loaded_from: int | None = None  # the oldest bucket index held

    def _put(self, key: Key, bucket: int, p50: float) -> None:
        ring = self.rings.get(key)
        if ring is None:
            ring = self.rings[key] = _Ring()
            self.sites[(key[1], key[2])].add(key[3])
        ring.put(bucket, p50)

    async def load(self, first: int, last: int) -> None:
        """The rows and markers already in ``rollup_5m`` for buckets [first, last): two
        hours per query, two queries on their way while the previous answer is read."""
        sem = asyncio.Semaphore(2)

        async def fetch(lo: int, hi: int) -> list[list[Series]]:
            span = Span(lo * BUCKET_S * NS, hi * BUCKET_S * NS)
            kinds = AnyOf(tuple(Tag("kind", k.name) for k in alerted()))
            async with sem:
                return await self.influx.query(
                    [
                        Select(
                            MEASUREMENT,
                            (Col("p50"),),
                            (kinds, span),
                            group_by=("kind", "probe", "target", "site"),
                        ),
                        Select(MEASUREMENT, (Col("buckets"),), (Tag("kind", "done"), span)),
                    ]
                )

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(fetch(lo, min(last, lo + 24))) for lo in range(first, last, 24)]
        try:
            for task in tasks:  # in time order: rows are appended, not inserted
                rows, marks = await task
                self._add_rows(rows, marks)
        finally:
            for task in tasks:
                task.cancel()
        self.loaded_from = first

    def _add_rows(self, rows: list[Series], marks: list[Series]) -> None:
        for s in rows:
            t = s.tags
            key = (t.get("kind", ""), t.get("probe", ""), t.get("target", ""), t.get("site", ""))
            for ts, p50 in s.values:
                if p50 is not None:
                    self._put(key, ts // NS // BUCKET_S, float(p50))
        for s in marks:
            self.done.update(ts // NS // BUCKET_S for ts, *_ in s.values)

    async def advance(
        self, at_ns: int, oldest: int, flush: Callable[[list[str]], Awaitable[None]]
    ) -> None:
        """Roll up every closed bucket from ``oldest`` on that is not done, handing each
        query's rows to ``flush`` (unless ``write`` is false), so a first start that
        rolls up a whole day holds one hour of rows at a time."""
        newest = (at_ns // NS - DELAY_S) // BUCKET_S  # buckets < newest have closed
        todo = [b for b in range(oldest, newest) if b not in self.done]
        for run in _runs(todo):
            for lo in range(run[0], run[1], CHUNK_BUCKETS):
                hi = min(run[1], lo + CHUNK_BUCKETS)
                rows = await self._compute(lo, hi)
                if self.write:
                    await flush(rows)
        self._forget(oldest)

    async def _compute(self, lo: int, hi: int) -> list[str]:
        """Roll up buckets [lo, hi) from the raw points."""
        span = Span(lo * BUCKET_S * NS, hi * BUCKET_S * NS)
        kinds = alerted()
        statements = [
            Select(
                k.measurement,
                (Fn("median", _value(k)), Fn("count", _value(k))),
                (span,),
                group_by=_tags(k),
                every=f"{BUCKET_S}s",
                fill="none",
            )
            for k in kinds
        ]
        results = await self.influx.query(statements)
        lines: list[str] = []
        rows = dict.fromkeys(range(lo, hi), 0)
        for k, result in zip(kinds, results, strict=True):
            kind = k.name
            for s in result:
                t = s.tags
                key = (kind, t.get("probe", ""), t.get("target", ""), t.get("site", ""))
                for ts, p50, n in s.values:
                    if p50 is None:
                        continue
                    bucket = ts // NS // BUCKET_S
                    self._put(key, bucket, float(p50))
                    rows[bucket] = rows.get(bucket, 0) + 1
                    tags = {"kind": kind, **{k: v for k, v in t.items() if v}}
                    try:
                        lines.append(line(MEASUREMENT, tags, {"p50": float(p50), "n": int(n)}, ts))
                    except Unrepresentable as exc:  # tags InfluxDB already holds: unlikely
                        log.warning("rollup row for %s not written: %s", key, exc)
        for bucket, count in rows.items():
            self.done.add(bucket)
            lines.append(
                line(MEASUREMENT, {"kind": "done"}, {"buckets": count}, bucket * BUCKET_S * NS)
            )
        return lines

    def _forget(self, oldest: int) -> None:
        """Drop what is older than ``oldest`` (checked once an hour of buckets)."""
        if self.loaded_from is not None and oldest - self.loaded_from < CHUNK_BUCKETS:
            return
        for ring in self.rings.values():
            ring.drop_before(oldest)
        # a series with no bucket left in the day is forgotten: what is kept is bounded by
        # the series of the last day, however many one probe invented before
        gone = [key for key, ring in self.rings.items() if not ring.buckets]
        for key in gone:
            del self.rings[key]
            sites = self.sites.get((key[1], key[2]))
            if sites is not None:
                sites.discard(key[3])
                if not sites:
                    del self.sites[(key[1], key[2])]
        self._medians.clear()
        self._usual.clear()
        self.done = {b for b in self.done if b >= oldest}
        self.loaded_from = oldest

    def baseline(self, key: Key, lo: int, hi: int) -> tuple[float, int] | None:
        """The median of ``key``'s bucket medians in buckets [lo, hi), and how many there
        are; None below ``MIN_BUCKETS``."""
        cached = self._medians.get(key)
        if cached is not None and cached[0] == lo and cached[1] == hi:
            return (cached[2], cached[3]) if cached[3] >= MIN_BUCKETS else None
        ring = self.rings.get(key)
        if ring is None:
            return None
        i, j = ring.span(lo, hi)
        n = j - i
        median = statistics.median(ring.p50[i:j]) if n else float("nan")
        self._medians[key] = (lo, hi, median, n)
        return (median, n) if n >= MIN_BUCKETS else None

    def usual_site(self, kind: str, probe: str, target: str, lo: int, hi: int) -> str | None:
        """The anycast site with the most buckets of ``probe``'s answers on ``target`` (of
        ``kind``) in [lo, hi) (at least ``MIN_BUCKETS``), or None."""
        cached = self._usual.get((probe, target))
        if cached is not None and cached[0] == lo and cached[1] == hi:
            return cached[2]
        best, most = None, MIN_BUCKETS - 1
        for site in sorted(self.sites.get((probe, target), ())):
            ring = self.rings.get((kind, probe, target, site))
            if site and ring is not None:
                i, j = ring.span(lo, hi)
                if j - i > most:
                    best, most = site, j - i
        self._usual[(probe, target)] = (lo, hi, best)
        return best


def _runs(buckets: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive buckets as [first, last + 1) ranges."""
    out: list[tuple[int, int]] = []
    for b in buckets:
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


def bucket_of(ns: int) -> int:
    return ns // NS // BUCKET_S


__all__ = [
    "BASELINE_S",
    "BUCKET_S",
    "DELAY_S",
    "MEASUREMENT",
    "MIN_BUCKETS",
    "Key",
    "Rollups",
    "bucket_of",
]

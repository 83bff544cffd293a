"""Baselines: the ``rollup_5m`` measurement, and what the rules compare with over it.

Every 5-minute bucket, once it has been closed for ``DELAY_S``, is rolled up by one
InfluxQL query per judged kind: the median and the 95th percentile of the kind's value
field (``rtt_ms`` for dns, ``ttfb_ms`` for http: ``collector.kinds``) and the count of
answers, per probe, target and site, over the scheduled measurements (not the asked
ones). Those rows are written to ``rollup_5m`` (tags ``kind``, probe, region, target,
site, topology, provider; fields ``p50``, ``p95``, ``n``), with one marker row per
bucket (``kind=done``: the rows it made, ``buckets``, and the raw points it saw,
``points``), so a restarted engine knows which buckets exist and computes only the
missing ones (a first start computes the last day's).

A series' :class:`Baseline` comes from its bucket rows over the 24 hours before the
window: the median of the bucket medians (the usual value), their 90th percentile (how
far a 5-minute median usually wanders: the spread the latency rule's line keeps clear
of) and the median of the bucket p95s (how far one answer usually goes: the line a fast
onset must pass). That is 288 rows, not 24 h of raw points. The engine keeps those rows
in memory (about 8 kB per series), loaded from ``rollup_5m`` when it starts and
extended by each new bucket, so a cycle asks InfluxDB only for the window.

Points that reach InfluxDB after their bucket was rolled up (a probe's spool replaying
after an outage, history imported after the engine started) are found by ``recheck``:
once per bucket it counts the raw points of each bucket of the day (one query per kind,
grouped by time only) and rolls up again each bucket whose count is not its marker's.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import logging
import statistics
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from collector.alerts.window import JUDGED
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


@dataclass(frozen=True, slots=True)
class Baseline:
    """A series' day before the window, from its bucket rows: ``p50`` the median of the
    bucket medians, ``p90`` their 90th percentile, ``tail`` the median of the bucket
    p95s (None when the rows predate the field), ``buckets`` how many rows."""

    p50: float
    p90: float
    tail: float | None
    buckets: int


def _tags(kind: Kind[Any]) -> tuple[str, ...]:
    """The tags a kind's rollup rows are kept by."""
    a = kind.alerting
    site = ("site",) if a is not None and a.site else ()
    return ("probe", "region", "target", *site, "topology", "provider")


def _value(kind: Kind[Any]) -> str:
    assert kind.alerting is not None
    return kind.alerting.value


class _Ring:
    """One series' bucket rows, oldest first: bucket index (start // 300), p50 and p95
    (NaN when the row has none)."""

    __slots__ = ("buckets", "p50", "p95")

    def __init__(self) -> None:
        self.buckets = array.array("l")
        self.p50 = array.array("d")
        self.p95 = array.array("d")

    def put(self, bucket: int, p50: float, p95: float) -> None:
        if not self.buckets or bucket > self.buckets[-1]:
            self.buckets.append(bucket)
            self.p50.append(p50)
            self.p95.append(p95)
            return
        lo = bisect.bisect_left(self.buckets, bucket)  # a bucket redone, or out of order
        if lo < len(self.buckets) and self.buckets[lo] == bucket:
            self.p50[lo] = p50
            self.p95[lo] = p95
        else:
            self.buckets.insert(lo, bucket)
            self.p50.insert(lo, p50)
            self.p95.insert(lo, p95)

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Indexes of the buckets in [lo, hi)."""
        return bisect.bisect_left(self.buckets, lo), bisect.bisect_left(self.buckets, hi)

    def drop_before(self, bucket: int) -> None:
        i, _ = self.span(bucket, 1 << 62)
        if i:
            del self.buckets[:i]
            del self.p50[:i]
            del self.p95[:i]


class Rollups:
    """The rollup rows of the last day, in memory; ``advance`` adds the buckets that
    have closed. With ``write`` false (``alerts check``) new rows stay in memory."""

    def __init__(self, influx: InfluxQL, write: bool = True) -> None:
        self.influx = influx
        self.write = write
        self.rings: dict[Key, _Ring] = {}
        self.sites: dict[tuple[str, str], set[str]] = defaultdict(set)  # (probe, target)
        self.done: dict[int, int | None] = {}  # bucket indexes rolled up: raw points seen
        self._medians: dict[Key, tuple[int, int, Baseline | None]] = {}
        self._usual: dict[tuple[str, str], tuple[int, int, str | None]] = {}
        self.loaded_from: int | None = None  # the oldest bucket index held
        self._rechecked = -1  # the newest bucket when recheck last ran
        self.redone = 0  # buckets rolled up again (late points)

    def _put(self, key: Key, bucket: int, p50: float, p95: float) -> None:
        ring = self.rings.get(key)
        if ring is None:
            ring = self.rings[key] = _Ring()
            self.sites[(key[1], key[2])].add(key[3])
        ring.put(bucket, p50, p95)

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
                            (Col("p50"), Col("p95")),
                            (kinds, span),
                            group_by=("kind", "probe", "target", "site"),
                        ),
                        Select(
                            MEASUREMENT,
                            (Col("buckets"), Col("points")),
                            (Tag("kind", "done"), span),
                        ),
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
            for ts, p50, p95 in s.values:
                if p50 is not None:
                    self._put(key, ts // NS // BUCKET_S, float(p50), _nan(p95))
        for s in marks:
            for ts, rows_made, points in s.values:
                # a marker from before ``points``: an empty bucket saw none; of another
                # the count is not known, and it is not checked
                seen = None if points is None and rows_made else int(points or 0)
                self.done[ts // NS // BUCKET_S] = seen

    async def advance(
        self, at_ns: int, oldest: int, flush: Callable[[list[str]], Awaitable[None]]
    ) -> None:
        """Roll up every closed bucket from ``oldest`` on that is not done, handing each
        query's rows to ``flush`` (unless ``write`` is false), so a first start that
        rolls up a whole day holds one hour of rows at a time."""
        newest = (at_ns // NS - DELAY_S) // BUCKET_S  # buckets < newest have closed
        todo = [b for b in range(oldest, newest) if b not in self.done]
        if newest != self._rechecked and self.done:
            late = await self.recheck(max(oldest, min(self.done)), newest)
            todo = sorted(set(todo) | late)
            self._rechecked = newest
        for run in _runs(todo):
            for lo in range(run[0], run[1], CHUNK_BUCKETS):
                hi = min(run[1], lo + CHUNK_BUCKETS)
                rows = await self._compute(lo, hi)
                if self.write:
                    await flush(rows)
        self._forget(oldest)

    async def recheck(self, lo: int, hi: int) -> set[int]:
        """The buckets in [lo, hi) already rolled up whose raw points are not those
        their marker saw (late points): one count per bucket and kind, every tag
        pooled, so its cost is one pass over the day's points of each kind, once per
        bucket (every 5 minutes), not one per series."""
        if hi <= lo:
            return set()
        span = Span(lo * BUCKET_S * NS, hi * BUCKET_S * NS)
        kinds = alerted()
        results = await self.influx.query(
            [
                Select(
                    k.measurement,
                    (Fn("count", _value(k)),),
                    (span, *JUDGED),
                    every=f"{BUCKET_S}s",
                    fill="none",
                )
                for k in kinds
            ]
        )
        counts: dict[int, int] = defaultdict(int)
        for result in results:
            for s in result:
                for ts, n in s.values:
                    counts[ts // NS // BUCKET_S] += int(n or 0)
        late = set()
        for bucket, seen in self.done.items():
            if lo <= bucket < hi:
                now = counts.get(bucket, 0)
                if seen is not None and now != seen:
                    late.add(bucket)
        if late:
            self.redone += len(late)
            self._medians.clear()
            self._usual.clear()
            log.info(
                "rollup: %d buckets gained points after they were rolled up (late or "
                "imported points); rolling them up again",
                len(late),
            )
        return late

    async def _compute(self, lo: int, hi: int) -> list[str]:
        """Roll up buckets [lo, hi) from the raw points."""
        span = Span(lo * BUCKET_S * NS, hi * BUCKET_S * NS)
        kinds = alerted()
        statements = [
            Select(
                k.measurement,
                (
                    Fn("median", _value(k)),
                    Fn("percentile", _value(k), None, 95),
                    Fn("count", _value(k)),
                ),
                (span, *JUDGED),
                group_by=_tags(k),
                every=f"{BUCKET_S}s",
                fill="none",
            )
            for k in kinds
        ]
        results = await self.influx.query(statements)
        lines: list[str] = []
        rows = dict.fromkeys(range(lo, hi), 0)
        points = dict.fromkeys(range(lo, hi), 0)
        for k, result in zip(kinds, results, strict=True):
            kind = k.name
            for s in result:
                t = s.tags
                key = (kind, t.get("probe", ""), t.get("target", ""), t.get("site", ""))
                for ts, p50, p95, n in s.values:
                    bucket = ts // NS // BUCKET_S
                    points[bucket] = points.get(bucket, 0) + int(n or 0)
                    if p50 is None:
                        continue
                    self._put(key, bucket, float(p50), _nan(p95))
                    rows[bucket] = rows.get(bucket, 0) + 1
                    tags = {"kind": kind, **{k: v for k, v in t.items() if v}}
                    fields: dict[str, float | int] = {"p50": float(p50), "n": int(n)}
                    if p95 is not None:
                        fields["p95"] = float(p95)
                    try:
                        lines.append(line(MEASUREMENT, tags, fields, ts))
                    except Unrepresentable as exc:  # tags InfluxDB already holds: unlikely
                        log.warning("rollup row for %s not written: %s", key, exc)
        for bucket, count in rows.items():
            self.done[bucket] = points.get(bucket, 0)
            lines.append(
                line(
                    MEASUREMENT,
                    {"kind": "done"},
                    {"buckets": count, "points": points.get(bucket, 0)},
                    bucket * BUCKET_S * NS,
                )
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
        self.done = {b: n for b, n in self.done.items() if b >= oldest}
        self.loaded_from = oldest

    def baseline(self, key: Key, lo: int, hi: int) -> Baseline | None:
        """``key``'s :class:`Baseline` over buckets [lo, hi); None below
        ``MIN_BUCKETS``."""
        cached = self._medians.get(key)
        if cached is not None and cached[0] == lo and cached[1] == hi:
            return cached[2]
        ring = self.rings.get(key)
        if ring is None:
            return None
        i, j = ring.span(lo, hi)
        found = None
        if j - i >= MIN_BUCKETS:
            p50s = sorted(ring.p50[i:j])
            tails = [t for t in ring.p95[i:j] if t == t]
            found = Baseline(
                p50=statistics.median(p50s),
                p90=p50s[min(len(p50s) - 1, int(0.9 * len(p50s)))],
                tail=statistics.median(tails) if len(tails) >= MIN_BUCKETS else None,
                buckets=j - i,
            )
        self._medians[key] = (lo, hi, found)
        return found

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


def _nan(value: Any) -> float:
    """A row's optional float, NaN when it has none."""
    return float("nan") if value is None else float(value)


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
    "Baseline",
    "Key",
    "Rollups",
    "bucket_of",
]

"""What the rules look at: the raw samples of the last window, and each probe's last
heartbeat, read from InfluxDB in concurrent queries (one per kind the rules judge, and
one for the heartbeats).

Which fields and tags a kind's samples are read with comes from the kind's
``alerting`` (``collector.kinds``): its value field, whether it carries the anycast
site, the rcode and the SOA serial.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collector.kinds import Kind, alerted
from collector.store.influxql import InfluxQL
from collector.store.influxql import Series as Result
from collector.store.query import Between, Col, Fn, Select, Tag
from probe.wire import NS

#: rcodes that mean no answer came (the probe's vocabulary, probe/errors.py)
NO_ANSWER = frozenset({"TIMEOUT", "NETERR"})
#: a probe silent longer than this falls out of the heartbeat query
HEARTBEAT_LOOKBACK_S = 86400
#: the tags every judged series is split by
SERIES_TAGS = ("probe", "region", "target", "topology", "provider")


class Sample(NamedTuple):
    """One measurement: ``value`` is the kind's value field (``rtt_ms``, ``ttfb_ms``),
    None when there is none; ``rcode`` the DNS rcode ("" for kinds without one);
    ``site`` the anycast site that answered ("" when none said)."""

    ts: int  # epoch ns of the send
    ok: bool
    value: float | None
    rcode: str
    site: str
    serial: int | None


@dataclass(slots=True)
class Series:
    """One probe's samples of one target, oldest first."""

    kind: str  # a key of collector.kinds.BY_NAME
    probe: str
    region: str
    target: str
    topology: str
    provider: str
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    """The window ending at ``at`` (epoch ns): series by (kind, probe, target), and each
    probe's region and last heartbeat (epoch ns)."""

    at: int
    start: int  # samples are in (start, at]
    series: dict[tuple[str, str, str], Series]
    heartbeats: dict[str, tuple[str, int]]


#: the scheduled measurements only: asked ones (``ask`` tag, collector.asks) are an
#: operator's question, measured at their own pace, and judge nothing
SCHEDULED = Tag("ask", "")
#: what the rules judge: the scheduled records of the targets' own servers, not those
#: of their sites' unicast addresses (``topology`` ``site``, which only the inflation
#: figures read: they share their target's name, and would mix with its series)
JUDGED = (SCHEDULED, Tag("topology", "site", "!="))


def samples_query(kind: Kind[Any], start: int, at: int) -> Select:
    """The scheduled raw samples of one judged kind in (start, at]."""
    a = kind.alerting
    assert a is not None
    columns = [Col("ok"), Col(a.value)] + ([Col("serial")] if a.serial else [])
    split = (("site",) if a.site else ()) + (("rcode",) if a.by_rcode else ())
    return Select(
        kind.measurement,
        tuple(columns),
        (Between(start, at), *JUDGED),
        group_by=(*SERIES_TAGS, *split),
    )


def _samples(kind: Kind[Any], s: Result) -> list[Sample]:
    a = kind.alerting
    assert a is not None
    rcode, site = s.tags.get("rcode", ""), s.tags.get("site", "")
    if a.serial:
        return [Sample(row[0], bool(row[1]), row[2], rcode, site, row[3]) for row in s.values]
    return [Sample(row[0], bool(row[1]), row[2], rcode, site, None) for row in s.values]


async def fetch(influx: InfluxQL, at: int, start: int) -> Snapshot:
    """The samples in (start, at] and the heartbeats of the last day up to ``at``."""
    kinds = alerted()
    beat_q = Select(
        "probe",
        (Fn("last", "uptime_s"),),
        (Between(at - HEARTBEAT_LOOKBACK_S * NS, at),),
        group_by=("probe", "region"),
    )
    *results, beats = await asyncio.gather(
        *(influx.one(samples_query(k, start, at)) for k in kinds), influx.one(beat_q)
    )
    series: dict[tuple[str, str, str], Series] = {}
    for kind, result in zip(kinds, results, strict=True):
        for s in result:
            t = s.tags
            key = (kind.name, t.get("probe", ""), t.get("target", ""))
            one = series.get(key)
            if one is None:
                one = series[key] = Series(
                    kind.name,
                    key[1],
                    t.get("region", ""),
                    key[2],
                    t.get("topology", ""),
                    t.get("provider", ""),
                )
            one.samples.extend(_samples(kind, s))
    for one in series.values():
        one.samples.sort(key=lambda x: x.ts)
    heartbeats = {
        s.tags.get("probe", ""): (s.tags.get("region", ""), int(s.values[0][0]))
        for s in beats
        if s.values
    }
    return Snapshot(at, start, series, heartbeats)


__all__ = [
    "JUDGED",
    "NO_ANSWER",
    "NS",
    "SCHEDULED",
    "SERIES_TAGS",
    "Sample",
    "Series",
    "Snapshot",
    "fetch",
]

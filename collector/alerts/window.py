"""What the rules look at: the raw samples of the last window, and each probe's last
heartbeat, read from InfluxDB in three concurrent queries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import NamedTuple

from collector.store.influxql import InfluxQL, between, select

NS = 1_000_000_000
#: rcodes that mean no answer came (the probe's vocabulary, probe/errors.py)
NO_ANSWER = frozenset({"TIMEOUT", "NETERR"})
#: a probe silent longer than this falls out of the heartbeat query
HEARTBEAT_LOOKBACK_S = 86400


class Sample(NamedTuple):
    """One measurement: ``value`` is ``rtt_ms`` (dns) or ``ttfb_ms`` (http), None when
    there is none; ``rcode`` is the DNS rcode ("" for http); ``site`` the anycast site
    that answered ("" when none said)."""

    ts: int  # epoch ns of the send
    ok: bool
    value: float | None
    rcode: str
    site: str
    serial: int | None


@dataclass(slots=True)
class Series:
    """One probe's samples of one target, oldest first."""

    kind: str  # "dns" or "http"
    probe: str
    region: str
    target: str
    topology: str
    provider: str
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    """The window ending at ``at`` (epoch ns): series by (probe, target), and each
    probe's region and last heartbeat (epoch ns)."""

    at: int
    start: int  # samples are in (start, at]
    series: dict[tuple[str, str], Series]
    heartbeats: dict[str, tuple[str, int]]


async def fetch(influx: InfluxQL, at: int, start: int) -> Snapshot:
    """The samples in (start, at] and the heartbeats of the last day up to ``at``."""
    span = between(start, at)
    dns_q = select(
        "ok, rtt_ms, serial", "dns", span, "probe, region, target, site, topology, provider, rcode"
    )
    http_q = select("ok, ttfb_ms", "http", span, "probe, region, target, topology, provider")
    beat_q = select(
        "last(uptime_s)", "probe", between(at - HEARTBEAT_LOOKBACK_S * NS, at), "probe, region"
    )
    dns, http, beats = await asyncio.gather(
        influx.one(dns_q), influx.one(http_q), influx.one(beat_q)
    )
    series: dict[tuple[str, str], Series] = {}
    for kind, result in (("dns", dns), ("http", http)):
        for s in result:
            t = s.tags
            key = (t.get("probe", ""), t.get("target", ""))
            one = series.get(key)
            if one is None:
                one = series[key] = Series(
                    kind,
                    key[0],
                    t.get("region", ""),
                    key[1],
                    t.get("topology", ""),
                    t.get("provider", ""),
                )
            rcode, site = t.get("rcode", ""), t.get("site", "")
            if kind == "dns":
                one.samples.extend(
                    Sample(row[0], bool(row[1]), row[2], rcode, site, row[3]) for row in s.values
                )
            else:
                one.samples.extend(
                    Sample(row[0], bool(row[1]), row[2], "", "", None) for row in s.values
                )
    for one in series.values():
        one.samples.sort(key=lambda x: x.ts)
    heartbeats = {
        s.tags.get("probe", ""): (s.tags.get("region", ""), int(s.values[0][0]))
        for s in beats
        if s.values
    }
    return Snapshot(at, start, series, heartbeats)


__all__ = ["NO_ANSWER", "NS", "Sample", "Series", "Snapshot", "fetch"]

"""What the status page shows, from fixed InfluxQL queries: the probes, latency per region
and target, the current anycast site per region, DNS's share of TTFB, firing alerts."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Final

from collector.store.influxql import InfluxQL, Series

#: how far back the page looks for measurements (alerts: ALERTS_SINCE)
WINDOW: Final = "15m"
#: a firing alert's last state change may be this old
ALERTS_SINCE: Final = "30d"

_QUERIES: Final = {
    "probes": 'SELECT last("uptime_s") AS "uptime_s", "lat", "lon", "spool_depth" FROM "probe" '
    'WHERE time > now() - $window GROUP BY "probe", "region", "version"',
    "probe_latency": 'SELECT median("rtt_ms") AS "median_ms" FROM "dns" '
    'WHERE time > now() - $window GROUP BY "probe"',
    "latency": 'SELECT percentile("rtt_ms", 50) AS "p50_ms", percentile("rtt_ms", 95) AS '
    '"p95_ms", count("ok") AS "queries" FROM "dns" WHERE time > now() - $window '
    'GROUP BY "region", "target", "topology"',
    "answered": 'SELECT count("ok") AS "ok" FROM "dns" WHERE "ok" = true AND '
    'time > now() - $window GROUP BY "region", "target", "topology"',
    "sites": 'SELECT last("rtt_ms") AS "rtt_ms" FROM "dns" WHERE "topology" = \'anycast\' AND '
    'time > now() - $window GROUP BY "region", "target", "probe", "site"',
    "ttfb": 'SELECT median("dns_ms") AS "dns_ms", median("connect_ms") AS "connect_ms", '
    'median("tls_ms") AS "tls_ms", median("ttfb_ms") AS "ttfb_ms" FROM "http" '
    'WHERE time > now() - $window GROUP BY "region", "target"',
    "alerts": 'SELECT last("message") AS "message", "value", "baseline", "probes" FROM "alert" '
    'WHERE time > now() - $since GROUP BY "rule", "severity", "region", "target", "state"',
}
#: the fixed InfluxQL the page runs, by what it is for
QUERIES: Final = {
    name: q.replace("$window", WINDOW).replace("$since", ALERTS_SINCE)
    for name, q in _QUERIES.items()
}


def _rows(series: list[Series]) -> list[dict[str, Any]]:
    """Every row, with its series' tags as columns."""
    return [row for s in series for row in s.rows()]


def _key(row: dict[str, Any], *names: str) -> tuple[str, ...]:
    return tuple(str(row.get(n) or "") for n in names)


def probes(probe_rows: list[dict[str, Any]], medians: list[dict[str, Any]]) -> list[dict[str, Any]]:
    median = {r["probe"]: r["median_ms"] for r in medians}
    out = [
        {
            "probe": r["probe"],
            "region": r.get("region", ""),
            "version": r.get("version", ""),
            "lat": r.get("lat"),
            "lon": r.get("lon"),
            "last_seen_ms": r["time"] // 1_000_000,
            "spool_depth": r.get("spool_depth"),
            "median_ms": median.get(r["probe"]),
        }
        for r in probe_rows
    ]
    return sorted(out, key=lambda p: (p["region"], p["probe"]))


def latency(rows: list[dict[str, Any]], answered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ok = {_key(r, "region", "target", "topology"): r["ok"] for r in answered}
    out = []
    for r in rows:
        k = _key(r, "region", "target", "topology")
        out.append(
            {
                "region": k[0],
                "target": k[1],
                "topology": k[2],
                "p50_ms": r.get("p50_ms"),
                "p95_ms": r.get("p95_ms"),
                "queries": r["queries"],
                "availability": ok.get(k, 0) / r["queries"] if r["queries"] else None,
            }
        )
    return sorted(out, key=lambda x: (x["region"], x["target"]))


def sites(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per region and anycast target, each site with the probes whose latest answer came
    from it; the site serving most of them is current."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        k = _key(r, "region", "target", "probe")
        if k not in latest or r["time"] > latest[k]["time"]:
            latest[k] = r
    at: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for (region, target, probe), r in latest.items():
        at[(region, target)][str(r.get("site") or "")].append(probe)
    out = []
    for (region, target), by_site in sorted(at.items()):
        ranked = sorted(by_site.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        for i, (site, who) in enumerate(ranked):
            out.append(
                {
                    "region": region,
                    "target": target,
                    "site": site,
                    "probes": sorted(who),
                    "current": i == 0,
                }
            )
    return out


def ttfb(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median phases per region and target; DNS's share of the time to first byte
    (dns + connect + tls + server wait; a plain-HTTP page has no tls)."""
    out = []
    for r in rows:
        phases = [r.get(p) for p in ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms")]
        total = sum(p or 0.0 for p in phases)
        dns = r.get("dns_ms")
        out.append(
            {
                "region": r.get("region", ""),
                "target": r.get("target", ""),
                "dns_ms": dns,
                "connect_ms": r.get("connect_ms"),
                "tls_ms": r.get("tls_ms"),
                "ttfb_ms": r.get("ttfb_ms"),
                "to_first_byte_ms": total or None,
                "dns_share": dns / total if dns is not None and total else None,
            }
        )
    return sorted(out, key=lambda x: (x["region"], x["target"]))


def firing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts whose latest state change is to firing."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        latest[_key(r, "rule", "region", "target")] = r
    out = [
        {
            "rule": r.get("rule", ""),
            "severity": r.get("severity", ""),
            "region": r.get("region", ""),
            "target": r.get("target", ""),
            "since_ms": r["time"] // 1_000_000,
            "message": r.get("message"),
            "value": r.get("value"),
            "baseline": r.get("baseline"),
            "probes": r.get("probes"),
        }
        for r in latest.values()
        if r.get("state") == "firing"
    ]
    return sorted(out, key=lambda a: -a["since_ms"])


async def gather(influx: InfluxQL) -> dict[str, Any]:
    """The page's data: every query at once. Raises ``QueryError`` if one fails."""
    names = list(QUERIES)
    results = await asyncio.gather(*(influx.one(QUERIES[n]) for n in names))
    got = {n: _rows(r) for n, r in zip(names, results, strict=True)}
    return {
        "window": WINDOW,
        "generated_ms": int(time.time() * 1000),
        "probes": probes(got["probes"], got["probe_latency"]),
        "latency": latency(got["latency"], got["answered"]),
        "sites": sites(got["sites"]),
        "ttfb": ttfb(got["ttfb"]),
        "alerts": firing(got["alerts"]),
    }

"""What the status page shows, from fixed queries: the probes, latency per region and
target, the current anycast site per region, the serving and the best site per region
with the inflation (the alert engine's ``inflation`` figures), DNS's share of TTFB,
firing alerts.

Which kinds feed which section comes from the kinds table (``collector.kinds``): the
``latency``, ``median`` and ``sites`` sections read each feeding kind's value field, the
``ttfb`` section its page-fetch phases, ``probes`` its heartbeats.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from typing import Any, Final

from collector.alerts.rules.base import labels
from collector.alerts.state import TAGS as ALERT_TAGS
from collector.alerts.tracing import ask_id
from collector.kinds import Kind, feeding
from collector.store.influxql import InfluxQL, Series
from collector.store.query import Ago, Col, FieldIs, Fn, Select, Tag
from collector.store.schema import ALERT_HISTORY

#: how far back the page looks for measurements (alerts: ALERT_HISTORY)
WINDOW: Final = "15m"
#: how far back it looks for each probe's last heartbeat: a probe silent for hours is
#: listed, greyed, not left out
HEARTBEATS: Final = "1d"
#: a probe whose last heartbeat is older than this is stale (3 x the default heartbeat_s)
STALE_S: Final = 180
#: how far back the page looks for the engine's last inflation figures (a few evaluations)
INFLATION_WINDOW: Final = "2m"
#: the records of a target's own servers, not of its sites' unicast addresses
NOT_SITES: Final = Tag("topology", "site", "!=")


def _value(kind: Kind[Any]) -> str:
    if kind.alerting is None:
        raise ValueError(f"kind {kind.name} feeds a latency section but has no value field")
    return kind.alerting.value


def queries() -> dict[str, list[Select]]:
    """The fixed queries the page runs, by what they are for (one per feeding kind)."""
    since = Ago(WINDOW)
    region = ("region", "target", "topology")
    return {
        "probes": [
            Select(
                k.measurement,
                (Fn("last", "uptime_s", "uptime_s"), Col("lat"), Col("lon"), Col("spool_depth")),
                (Ago(HEARTBEATS),),
                group_by=("probe", "region", "version"),
            )
            for k in feeding("probes")
        ],
        "probe_latency": [
            Select(
                k.measurement,
                (Fn("median", _value(k), "median_ms"),),
                (since, NOT_SITES),
                group_by=("probe",),
            )
            for k in feeding("median")
        ],
        "latency": [
            Select(
                k.measurement,
                (
                    Fn("percentile", _value(k), "p50_ms", 50),
                    Fn("percentile", _value(k), "p95_ms", 95),
                    Fn("count", "ok", "queries"),
                ),
                (since, NOT_SITES),
                group_by=region,
            )
            for k in feeding("latency")
        ],
        "answered": [
            Select(
                k.measurement,
                (Fn("count", "ok", "ok"),),
                (FieldIs("ok", True), since, NOT_SITES),
                group_by=region,
            )
            for k in feeding("latency")
        ],
        "sites": [
            Select(
                k.measurement,
                (Fn("last", _value(k), "rtt_ms"),),
                (Tag("topology", "anycast"), since),
                group_by=("region", "target", "probe", "site"),
            )
            for k in feeding("sites")
        ],
        "inflation": [
            Select(
                "inflation",
                (Col("inflation_ms"), Col("anycast_ms"), Col("best_ms"), Col("geo_ms")),
                (Ago(INFLATION_WINDOW),),
                group_by=("region", "target", "probe", "site", "best"),
            )
        ],
        "ttfb": [
            Select(
                k.measurement,
                (
                    Fn("median", "dns_ms", "dns_ms"),
                    Fn("median", "connect_ms", "connect_ms"),
                    Fn("median", "tls_ms", "tls_ms"),
                    Fn("median", "ttfb_ms", "ttfb_ms"),
                ),
                (since,),
                group_by=("region", "target"),
            )
            for k in feeding("ttfb")
        ],
        "alerts": [
            Select(
                "alert",
                (
                    Fn("last", "message", "message"),
                    Col("value"),
                    Col("baseline"),
                    Col("threshold"),
                    Col("probes"),
                ),
                (Ago(ALERT_HISTORY),),
                group_by=(
                    "rule",
                    "severity",
                    "region",
                    "target",
                    "topology",
                    "probe",
                    "site",
                    "state",
                ),
            )
        ],
        # what the traces an alert asked for said (collector/alerts/tracing.py)
        "paths": [
            Select(
                "event",
                (Fn("last", "message", "message"),),
                (Ago(ALERT_HISTORY), Tag("kind", "path"), Tag("ask", "", "!=")),
                group_by=("ask", "probe", "family"),
            )
        ],
    }


def _rows(series: list[Series]) -> list[dict[str, Any]]:
    """Every row, with its series' tags as columns."""
    return [row for s in series for row in s.rows()]


def _key(row: dict[str, Any], *names: str) -> tuple[str, ...]:
    return tuple(str(row.get(n) or "") for n in names)


def probes(
    probe_rows: list[dict[str, Any]],
    medians: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    now_ms: int,
) -> list[dict[str, Any]]:
    """Every probe heard from in the last day, with its state: ``silent`` while its
    silence alert fires, ``sick`` while its probe alert does, ``stale`` when its last
    heartbeat is older than ``STALE_S``, else ``ok``."""
    median = {r["probe"]: r["median_ms"] for r in medians}
    firing_for = {(a["rule"], a.get("probe") or "") for a in alerts}
    out = []
    for r in probe_rows:
        last = r["time"] // 1_000_000
        probe = r["probe"]
        if ("silence", probe) in firing_for:
            state = "silent"
        elif ("probe", probe) in firing_for:
            state = "sick"
        elif now_ms - last > STALE_S * 1000:
            state = "stale"
        else:
            state = "ok"
        out.append(
            {
                "probe": probe,
                "region": r.get("region", ""),
                "version": r.get("version", ""),
                "lat": r.get("lat"),
                "lon": r.get("lon"),
                "last_seen_ms": last,
                "spool_depth": r.get("spool_depth"),
                "median_ms": median.get(probe) if state in ("ok", "sick") else None,
                "state": state,
            }
        )
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


def inflation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per region and anycast target, from the engine's latest figures: the site serving
    most of its probes, the best site most of them have, and the medians over its
    probes and lanes of the inflation, the anycast and the best round trips."""
    latest: dict[tuple[str, str], int] = {}
    for r in rows:
        k = (str(r.get("region") or ""), str(r.get("target") or ""))
        latest[k] = max(latest.get(k, 0), r["time"])
    at: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        k = (str(r.get("region") or ""), str(r.get("target") or ""))
        if r["time"] == latest[k] and r.get("inflation_ms") is not None:
            at[k].append(r)

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def most(key: str, of: list[dict[str, Any]]) -> str:
        counts: dict[str, int] = defaultdict(int)
        for r in of:
            counts[str(r.get(key) or "")] += 1
        return min(counts, key=lambda s: (-counts[s], s))

    out = []
    for (region, target), of in sorted(at.items()):
        geo = [r["geo_ms"] for r in of if r.get("geo_ms") is not None]
        out.append(
            {
                "region": region,
                "target": target,
                "site": most("site", of),
                "best": most("best", of),
                "inflation_ms": median([r["inflation_ms"] for r in of]),
                "anycast_ms": median([r["anycast_ms"] for r in of]),
                "best_ms": median([r["best_ms"] for r in of]),
                "geo_ms": median(geo),
                "probes": len({r.get("probe") for r in of}),
                "at_best": len({r.get("probe") for r in of if r.get("site") == r.get("best")}),
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


def firing(
    rows: list[dict[str, Any]], paths: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The alerts whose latest state change is to firing, each with what its traces
    said (``paths``: the ``path`` events of the asks the engine made when it fired; the
    alert's probes first, the control last)."""
    said: dict[str, list[str]] = {}
    for p in sorted(paths or [], key=lambda p: ("control)" in p["message"], p["message"])):
        said.setdefault(p.get("ask", ""), []).append(p["message"])
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        latest[_key(r, "rule", "region", "target", "probe")] = r
    out = [
        {
            "rule": r.get("rule", ""),
            "severity": r.get("severity", ""),
            "region": r.get("region", ""),
            "target": r.get("target", ""),
            "probe": r.get("probe", ""),
            "since_ms": r["time"] // 1_000_000,
            "message": r.get("message"),
            "value": r.get("value"),
            "baseline": r.get("baseline"),
            "threshold": r.get("threshold"),
            "probes": r.get("probes"),
            "path": said.get(_ask_of(r), []),
        }
        for r in latest.values()
        if r.get("state") == "firing"
    ]
    return sorted(out, key=lambda a: -a["since_ms"])


def _ask_of(row: dict[str, Any]) -> str:
    """The id of the trace ask an alert's firing made: its labels and instant."""
    tags = {k: str(row.get(k) or "") for k in ALERT_TAGS}
    return ask_id(labels(alertname=str(row.get("rule", "")), **tags), int(row["time"]))


async def gather(influx: InfluxQL) -> dict[str, Any]:
    """The page's data: every query at once. Raises ``QueryError`` if one fails."""
    wanted = queries()
    flat = [(name, q) for name, qs in wanted.items() for q in qs]
    results = await asyncio.gather(*(influx.one(q) for _, q in flat))
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
    for (name, _), result in zip(flat, results, strict=True):
        got[name] += _rows(result)
    now_ms = int(time.time() * 1000)
    alerts = firing(got["alerts"], got["paths"])
    return {
        "window": WINDOW,
        "generated_ms": now_ms,
        "probes": probes(got["probes"], got["probe_latency"], alerts, now_ms),
        "latency": latency(got["latency"], got["answered"]),
        "sites": sites(got["sites"]),
        "inflation": inflation(got["inflation"]),
        "ttfb": ttfb(got["ttfb"]),
        "alerts": alerts,
    }

"""Anycast inflation: how much farther than necessary each probe's anycast answers come
from, per probe, anycast target and lane (address family and transport).

A target's ``sites`` (``probe.targets.Site``) are also measured at their own unicast
addresses (records with ``topology`` ``site``, every ``site_every`` intervals). Over the
inflation rule's ``window_s``, each evaluation reads, in four aggregate queries:

* the anycast answers per site (median, count, time of the last): the **serving** site
  is the site of the last answer, ``anycast_ms`` the median of that site's answers;
* the site queries per site (the median of the answered ones; the last one's outcome,
  how many were made and answered, the last error): a site is a candidate for **best**
  when at least ``min_samples`` were answered and its last one was; ``best_ms`` is the
  lowest candidate median. A site whose unicast queries go unanswered is never best,
  and when none answers the point says so in ``error``. While a site of the lane's
  family has had fewer than ``min_samples`` queries in the window (a lab or a probe
  just started, a site just added), and its last was not lost, there is no best site
  yet: the best of the others could be the wrong one;
* the probes' coordinates (their heartbeats' ``lat``/``lon``, from their tokens).

``inflation_ms`` is ``anycast_ms - best_ms`` and ``gain_ms`` the part of it that unicast
to the best site would save (never below 0); ``factor`` is ``anycast_ms / best_ms``;
``at_best`` is 1 when the serving site is the best one, else 0 (its mean is the share of
probes served by their best site).
``geo_ms`` is geographic inflation (Koch et al., "Anycast in Context", SIGCOMM 2021):
2 / c_f x (the distance to the serving site - the distance to the closest site), with
c_f = 2/3 of c, the speed of light in fibre, in ms of round trip.

The points go to the ``inflation`` measurement, at the evaluation's instant: two
evaluators write the same point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from collector.alerts.window import NS, SCHEDULED
from collector.store.influxql import InfluxQL
from collector.store.influxql import Series as Result
from collector.store.lineproto import FieldValue, line
from collector.store.query import AnyOf, Between, FieldIs, Fn, Select, Tag
from probe.targets import Site

#: light in vacuum, km per ms
C_KM_PER_MS: Final = 299_792.458 / 1000
#: light in fibre: 2/3 of c (about 200 km per ms)
FIBRE_KM_PER_MS: Final = C_KM_PER_MS * 2 / 3
EARTH_RADIUS_KM: Final = 6371.0
#: how far back a probe's coordinates are looked for (its heartbeats carry them)
PLACES_LOOKBACK_S: Final = 86400
#: a lane: (probe, target, family, transport)
Lane = tuple[str, str, str, str]
LANE_TAGS: Final = ("probe", "region", "target", "family", "transport", "site")


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) in degrees (haversine, on a sphere
    of radius 6371 km)."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def geo_inflation_ms(to_serving_km: float, to_closest_km: float) -> float:
    """Geographic inflation in ms of round trip: 2 / c_f x the extra distance."""
    return 2 * (to_serving_km - to_closest_km) / FIBRE_KM_PER_MS


@dataclass(frozen=True, slots=True)
class Sites:
    """An anycast target's sites, and how often each is measured (s)."""

    sites: tuple[Site, ...]
    period_s: float

    def place(self, site: str) -> tuple[float, float] | None:
        for s in self.sites:
            if s.id == site and s.lat is not None and s.lon is not None:
                return (s.lat, s.lon)
        return None


@dataclass(slots=True)
class _Site:
    """One site's unicast queries of one lane in the window."""

    median: float | None = None
    answered: int = 0
    made: int = 0
    last_ok: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class Figure:
    """One probe's inflation on one anycast target and lane, at one evaluation."""

    at: int
    probe: str
    region: str
    target: str
    family: str
    transport: str
    period_s: float  # how often the target's sites are measured
    site: str = ""  # the serving site (of the last anycast answer)
    best: str = ""  # the site of the lowest unicast median
    closest: str = ""  # the site nearest the probe on the map
    anycast_ms: float | None = None
    serving_ms: float | None = None  # the serving site's own unicast median
    best_ms: float | None = None
    geo_ms: float | None = None
    samples: int = 0  # anycast answers from the serving site
    sites: int = 0  # sites that were candidates for best
    error: str = ""

    @property
    def inflation_ms(self) -> float | None:
        if self.anycast_ms is None or self.best_ms is None:
            return None
        return self.anycast_ms - self.best_ms

    @property
    def gain_ms(self) -> float | None:
        i = self.inflation_ms
        return None if i is None else max(0.0, i)

    @property
    def factor(self) -> float | None:
        if self.anycast_ms is None or not self.best_ms:
            return None
        return self.anycast_ms / self.best_ms

    def to_line(self) -> str:
        tags = {
            "probe": self.probe,
            "region": self.region,
            "target": self.target,
            "family": self.family,
            "transport": self.transport,
            "site": self.site,
            "best": self.best,
            "closest": self.closest,
        }
        fields: dict[str, FieldValue | None] = {
            "anycast_ms": _r(self.anycast_ms),
            "serving_ms": _r(self.serving_ms),
            "best_ms": _r(self.best_ms),
            "inflation_ms": _r(self.inflation_ms),
            "gain_ms": _r(self.gain_ms),
            "factor": _r(self.factor, 4),
            "geo_ms": _r(self.geo_ms),
            "at_best": None if not self.best else int(self.site == self.best),
            "samples": self.samples,
            "sites": self.sites,
            "error": self.error or None,
        }
        return line("inflation", tags, {k: v for k, v in fields.items() if v is not None}, self.at)


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def queries(targets: Sequence[str], at: int, window_s: float) -> list[Select]:
    """The four statements of one evaluation (see the module)."""
    span = Between(at - int(window_s * NS), at)
    which = AnyOf(tuple(Tag("target", t) for t in sorted(targets)))
    anycast = (span, SCHEDULED, which, Tag("topology", "anycast"), Tag("site", "", "!="))
    site = (span, SCHEDULED, which, Tag("topology", "site"))
    ok = FieldIs("ok", True)
    return [
        Select(
            "dns",
            (Fn("median", "rtt_ms", "m"), Fn("count", "rtt_ms", "n")),
            (*anycast, ok),
            group_by=LANE_TAGS,
        ),
        Select("dns", (Fn("last", "rtt_ms", "last"),), (*anycast, ok), group_by=LANE_TAGS),
        Select(
            "dns",
            (Fn("median", "rtt_ms", "m"), Fn("count", "rtt_ms", "n")),
            (*site, ok),
            group_by=LANE_TAGS,
        ),
        Select(
            "dns",
            (Fn("last", "ok", "last_ok"), Fn("count", "ok", "made"), Fn("last", "error", "error")),
            site,
            group_by=LANE_TAGS,
        ),
    ]


def places_query(at: int) -> Select:
    """Each probe's last coordinates."""
    span = Between(at - PLACES_LOOKBACK_S * NS, at)
    return Select(
        "probe", (Fn("last", "lat", "lat"), Fn("last", "lon", "lon")), (span,), group_by=("probe",)
    )


def _lane(s: Result) -> tuple[Lane, str, str]:
    t = s.tags
    lane = (t.get("probe", ""), t.get("target", ""), t.get("family", ""), t.get("transport", ""))
    return lane, t.get("region", ""), t.get("site", "")


def _row(s: Result) -> dict[str, Any]:
    return dict(zip(s.columns, s.values[0], strict=True)) if s.values else {}


@dataclass(slots=True)
class _Lane:
    region: str = ""
    anycast: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # m, n, last ts
    sites: dict[str, _Site] = field(default_factory=dict)


def compute(
    at: int,
    results: Sequence[Sequence[Result]],
    places: Mapping[str, tuple[float, float]],
    targets: Mapping[str, Sites],
    window_s: float,
    min_samples: int,
) -> list[Figure]:
    """The figures of one evaluation from the results of :func:`queries` (in order)."""
    medians, lasts, site_medians, site_lasts = results
    lanes: dict[Lane, _Lane] = {}

    def lane_of(s: Result) -> tuple[_Lane, Lane, str]:
        key, region, site = _lane(s)
        one = lanes.setdefault(key, _Lane())
        one.region = one.region or region
        return one, key, site

    last_ts: dict[tuple[Lane, str], int] = {}
    for s in lasts:
        key, _, site = _lane(s)
        if s.values:
            last_ts[(key, site)] = int(s.values[0][0])
    for s in medians:
        one, key, site = lane_of(s)
        row = _row(s)
        if row.get("m") is not None:
            one.anycast[site] = (float(row["m"]), int(row["n"]), last_ts.get((key, site), 0))
    for s in site_lasts:
        one, _, site = lane_of(s)
        row = _row(s)
        one.sites[site] = _Site(
            made=int(row.get("made") or 0),
            last_ok=bool(row.get("last_ok")),
            error=str(row.get("error") or ""),
        )
    for s in site_medians:
        one, _, site = lane_of(s)
        row = _row(s)
        got = one.sites.setdefault(site, _Site())
        if row.get("m") is not None:
            got.median, got.answered = float(row["m"]), int(row["n"])
    out = []
    for (probe, target, family, transport), one in sorted(lanes.items()):
        known = targets.get(target)
        if known is None or not one.anycast:
            continue
        out.append(
            _figure(at, probe, target, family, transport, one, known, places, window_s, min_samples)
        )
    return out


def _figure(
    at: int,
    probe: str,
    target: str,
    family: str,
    transport: str,
    one: _Lane,
    known: Sites,
    places: Mapping[str, tuple[float, float]],
    window_s: float,
    min_samples: int,
) -> Figure:
    serving, (anycast_ms, n, _) = max(one.anycast.items(), key=lambda kv: (kv[1][2], kv[0]))
    base: dict[str, Any] = {
        "at": at,
        "probe": probe,
        "region": one.region,
        "target": target,
        "family": family,
        "transport": transport,
        "period_s": known.period_s,
        "site": serving,
        "samples": n,
    }
    if known.period_s * min_samples > window_s:
        return Figure(
            **base,
            error=(
                f"window_s ({window_s:g} s) holds fewer than min_samples ({min_samples}) of "
                f"this target's site queries (one every {known.period_s:g} s): raise "
                "alerts.rules.inflation.window_s"
            ),
        )
    if n < min_samples:
        return Figure(**base, error=f"{n} anycast answers from {serving} (needs {min_samples})")
    base["anycast_ms"] = anycast_ms
    # the sites this lane can measure: those with an address of its family
    lane_sites = [s for s in known.sites if any(_family(a) == family for a in s.unicast)]
    ids = [s.id for s in lane_sites]
    here = places.get(probe)
    placed = {s.id: where for s in lane_sites if (where := known.place(s.id)) is not None}
    if here is not None and placed:
        dist = {sid: distance_km(here, where) for sid, where in placed.items()}
        closest = min(dist, key=lambda k: (dist[k], k))
        base["closest"] = closest
        if serving in dist:
            base["geo_ms"] = geo_inflation_ms(dist[serving], dist[closest])
    measured = one.sites.get(serving)
    if measured is not None and measured.median is not None:
        base["serving_ms"] = measured.median
    candidates: dict[str, float] = {}
    waiting = []
    for sid in ids:
        got = one.sites.get(sid) or _Site()
        if got.made and not got.last_ok:
            continue  # its last query went unanswered: it cannot be the best now
        if got.made < min_samples:
            waiting.append(f"{sid}: {got.made} of {min_samples} queries made")
        elif got.median is not None and got.answered >= min_samples:
            candidates[sid] = got.median
    if waiting:  # a best site among some of them only could be a wrong one
        return Figure(**base, error="waiting for the sites' queries: " + "; ".join(waiting))
    if not candidates:
        return Figure(**base, error=_no_best(ids, one.sites, min_samples))
    best = min(candidates, key=lambda k: (candidates[k], k))
    unknown = ""
    if serving not in ids:  # an identity the target's sites do not list
        unknown = (
            f"serving site {serving} is not one of the target's sites of this family "
            f"({', '.join(ids)}): no serving_ms, no geographic inflation"
        )
    return Figure(**base, best=best, best_ms=candidates[best], sites=len(candidates), error=unknown)


def _family(address: str) -> str:
    return "6" if ":" in address else "4"


def _no_best(ids: list[str], seen: Mapping[str, _Site], min_samples: int) -> str:
    """Why no site can be the best: each site's unicast queries in the window."""
    parts = []
    for sid in ids:
        got = seen.get(sid) or _Site()
        why = f"{sid}: {got.answered} of {got.made} answered"
        if got.answered and not got.last_ok:
            why += ", the last not"
        elif 0 < got.answered < min_samples:
            why += f" (needs {min_samples})"
        if got.error:
            why += f" ({got.error})"
        parts.append(why)
    return "no site answered at its unicast address: " + "; ".join(parts)


async def measure(
    influx: InfluxQL,
    at: int,
    targets: Mapping[str, Sites],
    window_s: float,
    min_samples: int,
) -> list[Figure]:
    """Each probe's figures on the ``targets`` that list sites, at ``at``."""
    if not targets:
        return []
    statements = [*queries(list(targets), at, window_s), places_query(at)]
    *results, placed = await influx.query(statements)
    places = {}
    for s in placed:
        row = _row(s)
        if row.get("lat") is not None and row.get("lon") is not None:
            places[s.tags.get("probe", "")] = (float(row["lat"]), float(row["lon"]))
    return compute(at, results, places, targets, window_s, min_samples)


__all__ = [
    "FIBRE_KM_PER_MS",
    "Figure",
    "Sites",
    "compute",
    "distance_km",
    "geo_inflation_ms",
    "measure",
    "queries",
]

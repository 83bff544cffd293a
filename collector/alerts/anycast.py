"""Anycast events: a probe's site changing on a target (``catchment``), and a site
starting to serve a newer SOA serial (``serial``), written to the ``event`` measurement.

Both follow the samples in time order, from where the previous evaluation stopped. On
start, each probe's last answer before the first window (and the no-answers after it)
and each site's last serial are read from the hour before it, so an event that spans
a restart is measured as if there had been none. An event's point is keyed by its tags
and the time of the first answer from the new site (or serial): seen twice, it is
written twice to the same point.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.alerts.window import NO_ANSWER, NS, Snapshot
from collector.kinds import BY_NAME, Kind, alerted
from collector.store.influxql import InfluxQL
from collector.store.lineproto import FieldValue, line
from collector.store.query import AnyOf, Between, Col, FieldIs, Fn, Select, Tag

log = logging.getLogger("popwatch.collector.alerts")

#: how far back the start looks for the last answer and the last serial
LOOKBACK_S = 3600
#: samples newer than this are left for the next evaluation: some may still be on their way
SETTLE_S = 5
HOUR_NS = 3600 * NS
ANYCAST = Tag("topology", "anycast")
HAS_SITE = Tag("site", "", "!=")


def sited() -> list[Kind[Any]]:
    """The kinds whose points name the anycast site that answered."""
    return [k for k in alerted() if k.alerting is not None and k.alerting.site]


def _sited(kind: str, topology: str) -> bool:
    """A series whose sites are followed: an anycast target of a kind that names them."""
    a = BY_NAME[kind].alerting
    return topology == "anycast" and a is not None and a.site


def _serials(kind: str, topology: str) -> bool:
    a = BY_NAME[kind].alerting
    return topology == "anycast" and a is not None and a.site and a.serial


@dataclass(frozen=True, slots=True)
class Event:
    """One point of the ``event`` measurement."""

    kind: str  # "catchment", "serial" or "path" (collector/alerts/paths.py)
    ts: int  # the first answer from the new site, or with the new serial
    probe: str
    region: str
    target: str
    from_site: str = ""  # serial: the site that served it first
    to_site: str = ""  # serial: the site that serves it now
    outage_ms: float | None = None  # last answer of the old site -> first of the new
    lost: int | None = None  # no answers in between
    flaps_1h: int | None = None  # this probe's site changes on this target, last hour
    serial: int | None = None
    lag_s: float | None = None  # newest serial first seen anywhere -> first seen here
    message: str = ""
    family: str = ""  # path: the trace's address family
    from_path: str = ""  # path: the path_id before, and now
    to_path: str = ""
    after_hop: int | None = None  # path: hops in common from the start
    added: str = ""  # path: the addresses on it now and not before (comma-separated)
    gone: str = ""  # path: those on it before and not now
    grew_ms: float | None = None  # path: the end of the path's round trip, now - before
    grew_from_hop: int | None = None  # path: the hop from which it grew
    ask: str = ""  # path: the ask that traced it ("" for a scheduled trace)

    def to_line(self) -> str:
        tags = {
            "kind": self.kind,
            "probe": self.probe,
            "region": self.region,
            "target": self.target,
            "from_site": self.from_site,
            "to_site": self.to_site,
            "family": self.family,
            "ask": self.ask,
        }
        fields: dict[str, FieldValue | None] = {
            "outage_ms": self.outage_ms,
            "lost": self.lost,
            "flaps_1h": self.flaps_1h,
            "serial": self.serial,
            "lag_s": self.lag_s,
            "message": self.message,
            "from_path": self.from_path or None,
            "to_path": self.to_path or None,
            "after_hop": self.after_hop,
            "added": self.added or None,
            "gone": self.gone or None,
            "grew_ms": self.grew_ms,
            "grew_from_hop": self.grew_from_hop,
        }
        return line("event", tags, {k: v for k, v in fields.items() if v is not None}, self.ts)


def newer(a: int, b: int) -> bool:
    """``a`` is a newer SOA serial than ``b`` (RFC 1982 serial number arithmetic)."""
    d = (a - b) % (1 << 32)
    return 0 < d < (1 << 31)


@dataclass(slots=True)
class _Anchor:
    site: str  # the site of the last answer
    ts: int  # its time
    lost: int  # no answers since
    done: int  # samples up to here are counted


class Catchments:
    """Each probe's anycast site per target, and the site changes."""

    def __init__(self) -> None:
        self.anchors: dict[tuple[str, str], _Anchor] = {}
        self.moves: dict[tuple[str, str], list[int]] = defaultdict(list)  # event times
        self.started = False

    async def start(self, influx: InfluxQL, until: int) -> None:
        """The last answer of each (probe, anycast target) in the hour up to ``until``,
        the no-answers after it, and the site changes of that hour."""
        span = Between(until - LOOKBACK_S * NS, until)
        no_answer = AnyOf(tuple(Tag("rcode", r) for r in sorted(NO_ANSWER)))
        statements: list[Select] = []
        kinds = sited()
        for k in kinds:
            statements.append(
                Select(
                    k.measurement,
                    (Fn("last", "ok"),),
                    (ANYCAST, HAS_SITE, span),
                    group_by=("probe", "target", "site"),
                )
            )
            statements.append(
                Select(
                    k.measurement,
                    (Col("ok"),),
                    (ANYCAST, no_answer, span),
                    group_by=("probe", "target"),
                )
            )
        statements.append(
            Select("event", (Col("lost"),), (Tag("kind", "catchment"), span), ("probe", "target"))
        )
        results = await influx.query(statements) if statements else []
        moves = results[-1] if results else []
        last = [s for i in range(0, 2 * len(kinds), 2) for s in results[i]]
        lost = [s for i in range(1, 2 * len(kinds), 2) for s in results[i]]
        for s in last:
            key = (s.tags.get("probe", ""), s.tags.get("target", ""))
            ts = int(s.values[0][0])
            have = self.anchors.get(key)
            if have is None or ts > have.ts:
                self.anchors[key] = _Anchor(s.tags.get("site", ""), ts, 0, until)
        for s in lost:
            key = (s.tags.get("probe", ""), s.tags.get("target", ""))
            if (a := self.anchors.get(key)) is not None:
                a.lost = sum(1 for row in s.values if row[0] > a.ts)
        for s in moves:
            key = (s.tags.get("probe", ""), s.tags.get("target", ""))
            self.moves[key] = sorted(int(row[0]) for row in s.values)
        self.started = True

    def update(self, snap: Snapshot, until: int) -> list[Event]:
        """Follow every anycast series' samples up to ``until``; the site changes."""
        events: list[Event] = []
        for s in snap.series.values():
            if not _sited(s.kind, s.topology):
                continue
            key = (s.probe, s.target)
            a = self.anchors.get(key)
            for x in s.samples:
                if x.ts > until:
                    break
                if a is not None and x.ts <= a.done:
                    continue
                if x.site and x.rcode not in NO_ANSWER:
                    if a is None:
                        a = self.anchors[key] = _Anchor(x.site, x.ts, 0, x.ts)
                    elif x.site != a.site:
                        events.append(self._moved(s.probe, s.region, s.target, a, x.site, x.ts))
                        a.site, a.ts, a.lost = x.site, x.ts, 0
                    else:
                        a.ts, a.lost = x.ts, 0
                elif x.rcode in NO_ANSWER and a is not None:
                    a.lost += 1
                if a is not None:
                    a.done = x.ts
        self._forget(until)
        return events

    def _forget(self, until: int) -> None:
        """Drop the anchors of series with no answer for ``LOOKBACK_S`` (a gap that long is
        no failover) and site changes older than the hour: what is kept is bounded by the
        series of the last hour, however many one probe invented before."""
        old = until - LOOKBACK_S * NS
        if any(a.done < old for a in self.anchors.values()):
            self.anchors = {k: a for k, a in self.anchors.items() if a.done >= old}
        for key in [k for k, moves in self.moves.items() if not moves or moves[-1] < old]:
            del self.moves[key]

    def _moved(self, probe: str, region: str, target: str, a: _Anchor, to: str, ts: int) -> Event:
        moves = self.moves[(probe, target)]
        if ts not in moves:
            bisect.insort(moves, ts)
        del moves[: bisect.bisect_right(moves, ts - HOUR_NS)]
        flaps = bisect.bisect_right(moves, ts)
        outage_ms = (ts - a.ts) / 1e6
        return Event(
            kind="catchment",
            ts=ts,
            probe=probe,
            region=region,
            target=target,
            from_site=a.site,
            to_site=to,
            outage_ms=outage_ms,
            lost=a.lost,
            flaps_1h=flaps,
            message=(
                f"{probe} ({region}) moved from {a.site} to {to} on {target}: "
                f"{outage_ms:.0f} ms from the last answer of {a.site} to the first of {to}, "
                f"{a.lost} queries lost; {flaps} site change{'s' if flaps != 1 else ''} "
                "in the last hour"
            ),
        )

    def current(self, probe: str, target: str) -> str | None:
        a = self.anchors.get((probe, target))
        return a.site if a is not None else None

    def flaps(self, probe: str, target: str, at: int) -> int:
        moves = self.moves.get((probe, target), [])
        return len(moves) - bisect.bisect_right(moves, at - HOUR_NS)


@dataclass(slots=True)
class _Serial:
    serial: int
    done: int


#: serial events kept per target and evaluation (a probe posting a storm of serial
#: changes writes no more than this; the rest are counted in the log)
MAX_SERIAL_EVENTS = 100
#: serials remembered per target (when each was first seen), the newest kept
MAX_SERIALS = 64
#: serials whose first sighting is looked up at start (exactly, one query each)
MAX_START_LOOKUPS = 200


class Serials:
    """Each anycast site's SOA serial per target, when and where each serial was first
    seen, and the ``serial`` events: a site (``to_site``) serving a newer serial, with
    its lag behind the site that served it first (``from_site``).

    What is needed is followed in memory from the samples of each window: no query per
    serial change, so an evaluation's cost does not grow with what one probe sends. At
    start, the last serial of each site is read from the hour before, and when each of
    those was first seen (the day before: one query each, at most
    ``MAX_START_LOOKUPS``). What is remembered is bounded and expires after a day."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], _Serial] = {}  # (target, site)
        # (target, serial) -> when and where it was first seen
        self.first_seen: dict[tuple[str, int], tuple[int, str]] = {}
        self.started = False

    async def start(self, influx: InfluxQL, until: int) -> None:
        span = Between(until - LOOKBACK_S * NS, until)
        kinds = [k for k in sited() if k.alerting is not None and k.alerting.serial]
        result = [
            s
            for k in kinds
            for s in await influx.one(
                Select(
                    k.measurement,
                    (Fn("last", "serial"),),
                    (ANYCAST, HAS_SITE, span),
                    group_by=("target", "site"),
                )
            )
        ]
        for s in result:
            serial = s.values[0][1]
            if serial is not None:
                self.marks[(s.tags.get("target", ""), s.tags.get("site", ""))] = _Serial(
                    int(serial), until
                )
        wanted = sorted({(t, m.serial) for (t, _), m in self.marks.items()})
        for target, serial in wanted[:MAX_START_LOOKUPS]:
            seen: list[tuple[int, str]] = []
            for k in kinds:
                found = await influx.one(
                    Select(
                        k.measurement,
                        (Fn("first", "serial"),),
                        (
                            Tag("target", target),
                            ANYCAST,
                            FieldIs("serial", serial),
                            Between(until - 86400 * NS, until),
                        ),
                        group_by=("site",),
                    )
                )
                seen += [(int(s.values[0][0]), s.tags.get("site", "")) for s in found if s.values]
            seen.sort()
            if seen:
                self.first_seen[(target, serial)] = seen[0]
        self.started = True

    def newest(
        self, snap: Snapshot, quorum: Callable[[str], int]
    ) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
        """Per anycast target with serials in the window: the newest serial that at least
        ``quorum(target)`` of the probes measuring it saw (capped at how many did: one
        probe alone cannot make a serial the newest that honest sites lag), and each
        site's latest (serial, time)."""
        latest: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        seers: dict[tuple[str, int], set[str]] = defaultdict(set)
        measuring: dict[str, set[str]] = defaultdict(set)
        for s in snap.series.values():
            if not _serials(s.kind, s.topology):
                continue
            sites = latest[s.target]
            for x in s.samples:
                if x.serial is not None and x.site:
                    measuring[s.target].add(s.probe)
                    seers[(s.target, int(x.serial))].add(s.probe)
                    have = sites.get(x.site)
                    if have is None or x.ts > have[1]:
                        sites[x.site] = (int(x.serial), x.ts)
        out = {}
        for target, sites in latest.items():
            need = max(1, min(quorum(target), len(measuring[target])))
            agreed = [
                serial
                for serial in {s for s, _ in sites.values()}
                if len(seers[(target, serial)]) >= need
            ]
            if not agreed:
                continue
            top = agreed[0]
            for serial in agreed:
                if newer(serial, top):
                    top = serial
            out[target] = (top, sites)
        return out

    def seen_since(self, target: str, serial: int, at: int) -> tuple[int, str]:
        """When ``serial`` was first seen on ``target``, and at which site (``at`` and no
        site when it never was)."""
        return self.first_seen.get((target, serial), (at, ""))

    def update(self, snap: Snapshot, until: int) -> list[Event]:
        """Follow every anycast site's serials up to ``until``; each change to a newer
        serial is an event with its lag."""
        changes: list[tuple[str, str, str, str, int, int]] = []
        rows: list[tuple[int, str, str, str, str, int]] = []
        for s in snap.series.values():
            if _serials(s.kind, s.topology):
                rows.extend(
                    (x.ts, s.target, x.site, s.probe, s.region, int(x.serial))
                    for x in s.samples
                    if x.serial is not None and x.site and x.ts <= until
                )
        rows.sort()
        for ts, target, site, probe, region, serial in rows:
            if (target, serial) not in self.first_seen:
                self.first_seen[(target, serial)] = (ts, site)
            mark = self.marks.get((target, site))
            if mark is None:
                self.marks[(target, site)] = _Serial(serial, ts)
                continue
            if ts <= mark.done:
                continue
            if newer(serial, mark.serial):
                changes.append((target, site, probe, region, serial, ts))
                mark.serial = serial
            mark.done = ts
        events = []
        per_target: dict[str, int] = defaultdict(int)
        dropped = 0
        for target, site, probe, region, serial, ts in changes:
            per_target[target] += 1
            if per_target[target] > MAX_SERIAL_EVENTS:
                dropped += 1
                continue
            first, origin = self.seen_since(target, serial, ts)
            lag_s = max(0.0, (ts - first) / NS)
            events.append(
                Event(
                    kind="serial",
                    ts=ts,
                    probe=probe,
                    region=region,
                    target=target,
                    from_site=origin,
                    to_site=site,
                    serial=serial,
                    lag_s=lag_s,
                    message=(
                        f"{site} serves serial {serial} of {target}, {lag_s:.0f} s after "
                        f"{origin or 'another site'} first did"
                    ),
                )
            )
        if dropped:
            log.warning(
                "%d serial changes in one evaluation not written as events (over %d per "
                "target): %s",
                dropped,
                MAX_SERIAL_EVENTS,
                ", ".join(
                    f"{t} ({n})" for t, n in sorted(per_target.items()) if n > MAX_SERIAL_EVENTS
                ),
            )
        self._forget(until)
        return events

    def _forget(self, until: int) -> None:
        """Drop what is older than a day, and all but the newest ``MAX_SERIALS`` serials
        of a target."""
        day = until - 86400 * NS
        self.marks = {k: m for k, m in self.marks.items() if m.done >= day}
        by_target: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for (target, serial), (ts, _) in self.first_seen.items():
            if ts >= day:
                by_target[target].append((ts, serial))
        keep = {
            (target, serial)
            for target, seen in by_target.items()
            for _, serial in sorted(seen)[-MAX_SERIALS:]
        }
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in keep}


__all__ = ["LOOKBACK_S", "SETTLE_S", "Catchments", "Event", "Serials", "newer"]

"""Which probes an ask goes to: the registry's active probes that match its locations,
less those the alert engine marks sick or silent (``healthy_only``).

Health is read from InfluxDB, as the engine left it: the last ``alert`` point of each
``probe`` and ``silence`` alert of a probe in the last 30 days; a probe whose last one
is ``firing`` is skipped, and the answer says why. A ``topology`` matcher takes the
probes that measured a target of that topology (scheduled, not asked) in the last 15
minutes. Among the matches of a location, probes are taken in random order, so asks
spread over a region's probes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from collector.asks.model import AskRequest, Location, Skipped
from collector.identity import Identity
from collector.kinds import KINDS
from collector.store.influxql import InfluxQL
from collector.store.query import Ago, AnyOf, Fn, Select, Tag
from collector.store.schema import ALERT_HISTORY

#: the alerts that say a probe itself is not to be trusted now, and what to say of it
UNHEALTHY = {
    "probe": "sick: its probe alert fires (the alert engine judges the probe's own network bad)",
    "silence": "silent: its silence alert fires (no heartbeat)",
}


async def unhealthy(influx: InfluxQL) -> dict[str, str]:
    """probe -> why it is skipped, for each probe whose probe or silence alert fires."""
    rows = await influx.one(
        Select(
            "alert",
            (Fn("last", "value"),),
            (Ago(ALERT_HISTORY), AnyOf(tuple(Tag("rule", r) for r in UNHEALTHY))),
            ("rule", "probe", "state"),
        )
    )
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for s in rows:
        key = (s.tags.get("rule", ""), s.tags.get("probe", ""))
        ts = int(s.values[0][0])
        if key not in last or ts > last[key][0]:
            last[key] = (ts, s.tags.get("state", ""))
    out: dict[str, str] = {}
    for (rule, probe), (_, state) in sorted(last.items()):
        if state == "firing" and probe and probe not in out:
            out[probe] = UNHEALTHY[rule]
    return out


async def measuring(influx: InfluxQL, topology: str) -> set[str]:
    """The probes with scheduled measurements of a target of ``topology`` in the last
    15 minutes (every kind whose points carry topology and ok)."""
    found: set[str] = set()
    for kind in KINDS:
        if "topology" not in kind.tags or "ok" not in kind.fields:
            continue
        where = (Ago("15m"), Tag("topology", topology), Tag("ask", ""))
        for s in await influx.one(
            Select(kind.measurement, (Fn("count", "ok"),), where, ("probe",))
        ):
            if s.tags.get("probe"):
                found.add(s.tags["probe"])
    return found


def _matches(loc: Location, who: Identity, topo: dict[str, set[str]]) -> bool:
    if loc.region is not None and who.region != loc.region:
        return False
    if loc.country is not None and who.country.upper() != loc.country.upper():
        return False
    if loc.city is not None and who.city.casefold() != loc.city.casefold():
        return False
    if loc.asn is not None and who.asn != loc.asn:
        return False
    if loc.probe is not None and who.probe != loc.probe:
        return False
    return loc.topology is None or who.probe in topo[loc.topology]


async def choose(
    req: AskRequest, active: Iterable[Identity], influx: InfluxQL, shuffle: bool = True
) -> tuple[list[Identity], list[Skipped]]:
    """The probes an ask goes to (``req.limit`` at most, each location's own ``limit``
    at most from it), and the matching ones left out with why."""
    probes = sorted(active, key=lambda i: i.probe)
    sick = await unhealthy(influx) if req.healthy_only else {}
    topo = {t: await measuring(influx, t) for t in {loc.topology for loc in req.locations} if t}
    locations = req.locations or [Location()]  # none: the whole fleet
    chosen: list[Identity] = []
    skipped: dict[str, Skipped] = {}
    taken: set[str] = set()
    for loc in locations:
        matching = [p for p in probes if _matches(loc, p, topo) and p.probe not in taken]
        healthy = []
        for p in matching:
            if p.probe in sick:
                skipped[p.probe] = Skipped(p.probe, sick[p.probe])
            else:
                healthy.append(p)
        if shuffle:
            random.shuffle(healthy)
        room = min(loc.limit or req.limit, req.limit - len(chosen))
        for p in healthy[: max(room, 0)]:
            chosen.append(p)
            taken.add(p.probe)
        if len(chosen) >= req.limit:
            break
    return chosen, [s for name, s in sorted(skipped.items()) if name not in taken]


__all__ = ["UNHEALTHY", "choose", "measuring", "unhealthy"]

"""A failover drill's figures, from an ask's results: per probe and series, each site
change, its outage and the queries lost, and the flips.

A result is answered when it has its kind's value (``rtt_ms`` for dns). A change's
outage is how long the queries sent went unanswered: from the send of the first query
that got no answer after the old site's last to the send of the first query the new site
answered (the probe's kernel stamps, so to the millisecond; what it measures is as fine
as the drill's interval), 0 when none was lost; its ``lost`` are the queries in between
that got no answer. ``flips`` counts the site
changes of the series. The same figures are written as ``event`` points (kind
``drill``, the ask's id in ``ask``), one per change, and one with no change for a series
whose site never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.store.lineproto import line

#: the tags that tell a series of one probe apart, where a kind's points carry them
SERIES_KEYS = ("server", "transport", "qname", "family", "url", "method")


@dataclass(frozen=True, slots=True)
class Change:
    at: int  # epoch ns: the send of the first query the new site answered
    from_site: str
    to_site: str
    outage_ms: float
    lost: int


@dataclass(slots=True)
class Report:
    probe: str
    region: str
    series: str
    queries: int = 0
    answered: int = 0
    changes: list[Change] = field(default_factory=list)
    first_site: str = ""
    last_site: str = ""

    @property
    def lost(self) -> int:
        return self.queries - self.answered

    @property
    def flips(self) -> int:
        return len(self.changes)

    @property
    def outage_ms(self) -> float:
        return round(sum(c.outage_ms for c in self.changes), 3)

    def as_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "region": self.region,
            "series": self.series,
            "queries": self.queries,
            "answered": self.answered,
            "lost": self.lost,
            "flips": self.flips,
            "outage_s": round(self.outage_ms / 1000, 1),
            "outage_ms": self.outage_ms,
            "sites": [self.first_site, *(c.to_site for c in self.changes)],
            "changes": [
                {
                    "at": c.at,
                    "from_site": c.from_site,
                    "to_site": c.to_site,
                    "outage_s": round(c.outage_ms / 1000, 1),
                    "outage_ms": c.outage_ms,
                    "lost": c.lost,
                }
                for c in self.changes
            ],
        }


def analyse(rows: list[dict[str, Any]], value: str) -> list[Report]:
    """Each probe's and series' report, from an ask's result rows (``value``: the field
    an answered result has)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series = "|".join(str(r[k]) for k in SERIES_KEYS if r.get(k) not in (None, ""))
        groups.setdefault((str(r.get("probe", "")), series), []).append(r)
    out = []
    for (probe, series), items in sorted(groups.items()):
        items.sort(key=lambda r: int(r["time"]))
        rep = Report(probe, str(items[0].get("region", "")), series)
        last_site = ""
        lost_since = 0
        first_lost = 0  # the send of the first query unanswered since the last answer
        for r in items:
            rep.queries += 1
            sent = int(r["time"])
            if r.get(value) is None:
                if not lost_since:
                    first_lost = sent
                lost_since += 1
                continue
            rep.answered += 1
            site = str(r.get("site") or "")
            if rep.answered == 1:
                rep.first_site = site
            elif site != last_site:
                outage = round((sent - first_lost) / 1_000_000, 3) if lost_since else 0.0
                rep.changes.append(Change(sent, last_site, site, outage, lost_since))
            last_site, lost_since = site, 0
        rep.last_site = last_site
        out.append(rep)
    return out


def events(reports: list[Report], ask_id: str, target: str, when: int) -> list[str]:
    """The ``event`` lines of a drill's reports (``when``: the time of a report whose
    site never changed)."""
    lines = []
    for rep in reports:
        tags = {"kind": "drill", "probe": rep.probe, "region": rep.region, "target": target}
        tags["ask"] = ask_id
        if not rep.changes:
            fields: dict[str, float | int | str] = {
                "outage_ms": 0.0,
                "lost": rep.lost,
                "flips": 0,
                "message": f"{rep.series}: no site change in {rep.queries} queries",
            }
            site = rep.first_site
            lines.append(line("event", {**tags, "from_site": site, "to_site": site}, fields, when))
        for c in rep.changes:
            fields = {
                "outage_ms": c.outage_ms,
                "lost": c.lost,
                "flips": rep.flips,
                "message": (
                    f"{rep.series}: {c.from_site} -> {c.to_site}, outage "
                    f"{c.outage_ms / 1000:.1f} s, {c.lost} queries lost"
                ),
            }
            site_tags = {"from_site": c.from_site, "to_site": c.to_site}
            lines.append(line("event", {**tags, **site_tags}, fields, c.at))
    return lines


__all__ = ["Change", "Report", "analyse", "events"]

"""``catchment``: a region's probes answered by another anycast site than their usual one."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from collector.alerts.rules.base import (
    Condition,
    Inputs,
    Judged,
    Rule,
    RuleSettings,
    by_region_target,
    labels,
)
from collector.kinds import BY_NAME


class CatchmentSettings(RuleSettings, frozen=True):
    """A region's probes answered by another anycast site than their usual one."""


class Catchment(Rule[CatchmentSettings]):
    """``quorum`` of a region's healthy probes (or all, if fewer) answered by another
    site than their usual one (the site of most of their baseline buckets): an alert
    naming both sites, and the probes that flap."""

    name: ClassVar[str] = "catchment"
    alertname: ClassVar[str] = "catchment"
    settings: ClassVar[type[CatchmentSettings]] = CatchmentSettings
    per_target: ClassVar[bool] = True
    doc: ClassVar[str] = "a region served by another anycast site than its usual one"

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        out: list[Condition] = []
        for (region, target), js in by_region_target(judged).items():
            healthy = [j for j in js if j.series.probe not in excluded]
            out += self._region(inp, region, target, healthy)
        return out

    def _region(self, inp: Inputs, region: str, target: str, js: list[Judged]) -> list[Condition]:
        if not js or js[0].series.topology != "anycast":
            return []
        a = BY_NAME[js[0].series.kind].alerting
        if a is None or not a.site:
            return []
        st = js[0].settings
        if not self.of(st.rules).enabled:
            return []
        seen: list[tuple[str, str, str]] = []  # probe, usual site, site now
        for j in js:
            s = j.series
            now = next(
                (x.site for x in reversed(s.samples) if x.site and x.value is not None), None
            )
            usual = inp.usual_site(s.kind, s.probe, target)
            if now and usual:
                seen.append((s.probe, usual, now))
        moved = [m for m in seen if m[1] != m[2]]
        if not moved or len(moved) < min(st.quorum, len(seen)):
            return []
        src = Counter(m[1] for m in moved).most_common(1)[0][0]
        dst = Counter(m[2] for m in moved).most_common(1)[0][0]
        flapping = [f"{m[0]} ({n})" for m in moved if (n := inp.flaps(m[0], target)) >= 2]
        summary = (
            f"{region}: {len(moved)} of {len(seen)} probes moved from {src} to {dst} on {target}"
        )
        if flapping:
            summary += f"; flapping (site changes in the last hour): {', '.join(flapping)}"
        return [
            Condition(
                labels=labels(
                    alertname=self.alertname,
                    severity="warning",
                    region=region,
                    target=target,
                    topology="anycast",
                ),
                value=float(len(moved)),
                unit="probes",
                baseline=None,
                probes=tuple(m[0] for m in moved),
                of=len(seen),
                summary=summary,
                for_s=st.for_s,
                keep_firing_for_s=st.keep_firing_for_s,
                extra=(("from_site", src), ("to_site", dst)),
            )
        ]


RULE = Catchment()

__all__ = ["RULE", "Catchment", "CatchmentSettings"]

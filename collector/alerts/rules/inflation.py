"""``inflation``: a region's probes served by an anycast site much slower than their best.

It judges the engine's inflation figures (:mod:`collector.alerts.inflation`): each
probe's anycast answers against its best site's unicast answers, per lane (family and
transport), over the rule's ``window_s``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import msgspec

from collector.alerts.rules.base import (
    Condition,
    Inputs,
    Judged,
    Rule,
    RuleSettings,
    labels,
    median,
)
from collector.alerts.rules.regional import region_size

if TYPE_CHECKING:
    from collector.alerts.inflation import Figure

Seconds = Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)]


class InflationSettings(RuleSettings, frozen=True):
    """A region served by an anycast site much slower than its best site."""

    min_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 20.0
    factor: Annotated[float, msgspec.Meta(ge=1, le=1000)] = 1.5
    #: the span each figure is measured over: long enough for ``min_samples`` of each
    #: site's unicast queries (made every ``site_every`` intervals)
    window_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 3600.0
    min_samples: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 3
    #: how long it holds before it fires; null: two rounds of the target's site queries
    #: (interval x site_every x 2), so every site is measured again after a change (a
    #: failed site's last good answers do not make it look best)
    for_s: Seconds | None = None


def inflated(f: Figure, rule: InflationSettings) -> bool:
    """The figure's probe is served by a site at least ``min_ms`` and ``factor`` worse
    than its best site."""
    i, k = f.inflation_ms, f.factor
    return (
        bool(f.best)
        and f.site != f.best
        and i is not None
        and k is not None
        and i >= rule.min_ms
        and k >= rule.factor
    )


class Inflation(Rule[InflationSettings]):
    """``quorum`` of a region's healthy probes (all of them if fewer) served by a site at
    least ``min_ms`` and ``factor`` slower than their best site (the lowest median
    unicast round trip of the window), for ``for_s``: an alert naming both sites and the
    milliseconds."""

    name: ClassVar[str] = "inflation"
    alertname: ClassVar[str] = "inflation"
    settings: ClassVar[type[InflationSettings]] = InflationSettings
    doc: ClassVar[str] = "a region served by an anycast site much slower than its best site"
    baseline_is: ClassVar[str] = "the best site's unicast median"
    line: ClassVar[Literal["baseline", "threshold"]] = "baseline"

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        rule = self.of(inp.cfg.rules)
        if not rule.enabled or not inp.inflation:
            return []
        providers = {j.series.target: j.series.provider for j in judged}
        groups: dict[tuple[str, str], dict[str, list[Figure]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for f in inp.inflation:
            if f.probe not in excluded and f.best:
                groups[(f.region, f.target)][f.probe].append(f)
        out = []
        for (region, target), probes in sorted(groups.items()):
            c = self._region(inp, rule, region, target, providers.get(target, ""), probes)
            if c is not None:
                out.append(c)
        return out

    def _region(
        self,
        inp: Inputs,
        rule: InflationSettings,
        region: str,
        target: str,
        provider: str,
        probes: dict[str, list[Figure]],
    ) -> Condition | None:
        st = inp.settings(target, "anycast", provider)
        chosen: dict[str, Figure] = {}  # each probe's median lane (of the inflated ones)
        bad: list[str] = []
        for probe, figures in sorted(probes.items()):
            hit = [f for f in figures if inflated(f, rule)]
            pick = sorted(hit or figures, key=lambda f: (f.inflation_ms or 0.0, f.family))
            chosen[probe] = pick[(len(pick) - 1) // 2]
            if hit:
                bad.append(probe)
        of = region_size(inp, region) or len(chosen)  # those still waiting count too
        holds = bool(bad) and len(bad) >= min(st.quorum, of)
        firing = inp.firing.get(self.alertname, region, target)
        if not holds and firing is None:
            return None
        shown = [chosen[p] for p in (bad or sorted(chosen))]
        serving = Counter(f.site for f in shown).most_common(1)[0][0]
        best = Counter(f.best for f in shown).most_common(1)[0][0]
        value = median(f.inflation_ms or 0.0 for f in shown)
        anycast = median(f.anycast_ms or 0.0 for f in shown)
        best_ms = median(f.best_ms or 0.0 for f in shown)
        geo = [f.geo_ms for f in shown if f.geo_ms is not None]
        summary = (
            f"{region}: served by {serving} at {anycast:.1f} ms on {target}, {value:.1f} ms "
            f"more than its best site {best} ({best_ms:.1f} ms at its unicast address); "
            f"{len(bad)} of {of} probes"
        )
        extra = [
            ("serving_site", serving),
            ("best_site", best),
            ("inflation_ms", f"{value:.1f}"),
        ]
        if geo:
            summary += f"; geographic inflation {median(geo):.1f} ms"
            extra.append(("geo_inflation_ms", f"{median(geo):.1f}"))
        period = max(f.period_s for f in shown)
        return Condition(
            labels=firing[0]
            if firing is not None
            else labels(
                alertname=self.alertname,
                severity="warning",
                region=region,
                target=target,
                topology="anycast",
            ),
            value=value,
            unit="ms",
            baseline=best_ms,
            probes=tuple(bad or sorted(chosen)),
            of=of,
            summary=summary,
            for_s=rule.for_s if rule.for_s is not None else max(st.for_s, 2 * period),
            keep_firing_for_s=st.keep_firing_for_s,
            extra=tuple(extra),
            holds=holds,
        )


RULE = Inflation()

__all__ = ["RULE", "Inflation", "InflationSettings", "inflated"]

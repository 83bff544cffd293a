"""``probe_health``: a probe degraded on most of its unrelated targets is sick itself."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, ClassVar

import msgspec

from collector.alerts.rules.base import Condition, Inputs, Judged, Rule, RuleSettings, labels


class ProbeHealthSettings(RuleSettings, frozen=True):
    """A probe degraded on most of its unrelated targets is sick itself."""

    min_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.6  # of its targets
    min_spread: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2  # providers or topologies


class ProbeHealth(Rule[ProbeHealthSettings]):
    """A probe degraded on ``min_share`` of its targets, spanning ``min_spread``
    providers or topologies, is sick, unless the sick probes are most of their region
    (then it is the region). A sick probe raises a ``probe`` alert and is left out of
    every quorum while it is sick or its ``probe`` alert fires."""

    name: ClassVar[str] = "probe_health"
    alertname: ClassVar[str] = "probe"
    settings: ClassVar[type[ProbeHealthSettings]] = ProbeHealthSettings
    baseline_is: ClassVar[str] = "the share of targets that makes a probe sick"
    doc: ClassVar[str] = "a probe whose own network is suspect, left out of its region's quorums"

    def exclude(self, inp: Inputs, judged: list[Judged]) -> tuple[list[Condition], set[str]]:
        firing = {probe for _, probe in inp.firing.probes(self.alertname)}
        rule = self.of(inp.cfg.rules)
        if not rule.enabled:
            return [], firing
        per_probe: dict[str, list[Judged]] = defaultdict(list)
        for j in judged:
            if j.verdicts:
                per_probe[j.series.probe].append(j)
        region_probes: dict[str, set[str]] = defaultdict(set)
        candidates: dict[str, tuple[str, int, int, int]] = {}  # region, bad, of, spread
        for probe, js in per_probe.items():
            region = js[0].series.region
            region_probes[region].add(probe)
            bad = [j for j in js if j.degraded]
            spread = max(
                len({j.series.provider for j in bad}), len({j.series.topology for j in bad})
            )
            if bad and len(bad) >= rule.min_share * len(js) and spread >= rule.min_spread:
                candidates[probe] = (region, len(bad), len(js), spread)
        out, sick = [], set()
        for probe, (region, n_bad, of, spread) in sorted(candidates.items()):
            peers = [p for p, c in candidates.items() if c[0] == region]
            if len(peers) >= 2 and 2 * len(peers) > len(region_probes[region]):
                continue  # most of the region at once: the region, not its probes
            sick.add(probe)
            out.append(
                Condition(
                    labels=labels(
                        alertname=self.alertname, severity="info", region=region, probe=probe
                    ),
                    value=n_bad / of,
                    unit="share",
                    baseline=rule.min_share,
                    probes=(probe,),
                    of=1,
                    summary=(
                        f"probe {probe} ({region}) is degraded on {n_bad} of its {of} targets, "
                        f"across {spread} providers or topologies: its own network is "
                        f"suspect, so it is left out of {region}'s quorums"
                    ),
                    for_s=inp.cfg.for_s,
                    keep_firing_for_s=inp.cfg.keep_firing_for_s,
                )
            )
        return out, sick | firing


RULE = ProbeHealth()

__all__ = ["RULE", "ProbeHealth", "ProbeHealthSettings"]

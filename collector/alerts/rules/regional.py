"""Rules that judge each probe on each series and alert per region, by quorum: what
latency and errors share."""

from __future__ import annotations

import logging
from typing import ClassVar, TypeVar

from collector.alerts.rules.base import (
    Condition,
    Inputs,
    Judged,
    Rule,
    RuleSettings,
    TargetSettings,
    Verdict,
    by_region_target,
    labels,
)

log = logging.getLogger("popwatch.collector.alerts")

S = TypeVar("S", bound=RuleSettings)


def region_size(inp: Inputs, region: str) -> int:
    """The probes registered in ``region`` (0 when the registry is not at hand)."""
    if inp.registered is None:
        return 0
    return sum(1 for r in inp.registered.values() if r == region)


def solo(inp: Inputs, probe: str) -> bool:
    """Whether ``probe`` may raise one more alert alone (see ``MAX_SOLO``); counts it."""
    n = inp.solo.get(probe, 0)
    if n >= MAX_SOLO:
        if n == MAX_SOLO:
            log.warning(
                "probe %s is degraded alone on more than %d targets the collector does not "
                "serve; only %d of them raise alerts",
                probe,
                MAX_SOLO,
                MAX_SOLO,
            )
        inp.solo[probe] = n + 1
        return False
    inp.solo[probe] = n + 1
    return True


#: alerts one probe alone may raise per evaluation on targets the collector does not
#: serve (its own target list, which can hold anything): past it, a log line
MAX_SOLO = 10


class QuorumRule(Rule[S]):
    """A region's target raises an alert when ``quorum`` of its healthy probes are
    degraded on it, or all of them if the region has fewer: ``critical`` when two or
    more agree, else ``warning``. The region's probes are those registered in it (not
    those that happen to report the target), so a probe cannot make a region red alone
    by inventing targets. Below the quorum, with ``probe_warnings``, each degraded probe
    raises a ``warning`` of its own. What one probe raises alone on a target the
    collector does not serve is at most ``MAX_SOLO`` alerts per evaluation."""

    per_target: ClassVar[bool] = True
    judges: ClassVar[bool] = True

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        out: list[Condition] = []
        for (region, target), js in by_region_target(judged).items():
            healthy = [j for j in js if j.series.probe not in excluded]
            if not healthy:
                continue
            st, topology = healthy[0].settings, healthy[0].series.topology
            verdicts = [
                (j.series.probe, j.verdicts[self.name]) for j in healthy if self.name in j.verdicts
            ]
            if not verdicts:
                continue
            bad = sorted(((p, v) for p, v in verdicts if v.degraded), key=lambda pv: pv[0])
            if not bad:
                continue
            of = region_size(inp, region) or len(verdicts)
            served = inp.served is not None and target in inp.served
            if len(bad) >= min(st.quorum, of):
                if len(bad) == 1 and not served and not solo(inp, bad[0][0]):
                    continue
                out.append(self._regional(region, target, topology, bad, of, st))
            elif inp.cfg.probe_warnings:
                out += [
                    self._regional(region, target, topology, [pv], of, st, pv[0])
                    for pv in bad
                    if served or solo(inp, pv[0])
                ]
        return out

    def _regional(
        self,
        region: str,
        target: str,
        topology: str,
        bad: list[tuple[str, Verdict]],
        of: int,
        st: TargetSettings,
        probe: str = "",
    ) -> Condition:
        probes = tuple(p for p, _ in bad)
        who = f"{', '.join(probes)} ({len(bad)} of {of} probes)"
        value, baseline, unit, summary = self.describe(region, target, bad, who, st)
        return Condition(
            labels=labels(
                alertname=self.alertname,
                severity="critical" if len(bad) >= 2 else "warning",
                region=region,
                target=target,
                topology=topology,
                probe=probe,
            ),
            value=value,
            unit=unit,
            baseline=baseline,
            probes=probes,
            of=of,
            summary=summary,
            for_=st.for_,
            keep_firing_for=st.keep_firing_for,
        )

    def describe(
        self,
        region: str,
        target: str,
        bad: list[tuple[str, Verdict]],
        who: str,
        st: TargetSettings,
    ) -> tuple[float, float | None, str, str]:
        """(value, baseline, unit, summary) of a regional condition from its degraded
        probes' verdicts."""
        raise NotImplementedError


__all__ = ["QuorumRule"]

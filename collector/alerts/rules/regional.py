"""Rules that judge each probe on each series and alert per region, by quorum: what
latency and errors share."""

from __future__ import annotations

import logging
from dataclasses import replace
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
    """A region's target raises an alert when ``quorum`` of its healthy probes lean
    degraded on it (all of them if the region has fewer) and the region's evidence
    agrees (``region``): ``critical`` when two or more agree, else ``warning``. Once it
    fires, it holds as a region: ``region`` judges the pooled evidence of the region's
    healthy probes against the alert's line, not each probe of the quorum, so one probe
    of the quorum back below the line does not resolve it. The region's probes are those
    registered in it (not those that happen to report the target), so a probe cannot
    make a region red alone by inventing targets. Below the quorum, with
    ``probe_warnings``, each probe degraded on its own evidence raises a ``warning`` of
    its own. What one probe raises alone on a target the collector does not serve is at
    most ``MAX_SOLO`` alerts per evaluation."""

    per_target: ClassVar[bool] = True
    judges: ClassVar[bool] = True

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        out: list[Condition] = []
        for (region, target), js in by_region_target(judged).items():
            healthy = [j for j in js if j.series.probe not in excluded and self.name in j.verdicts]
            if not healthy:
                continue
            st, topology = healthy[0].settings, healthy[0].series.topology
            verdicts = sorted(
                ((j.series.probe, j.verdicts[self.name]) for j in healthy), key=lambda pv: pv[0]
            )
            of = region_size(inp, region) or len(verdicts)
            leaning = [(p, v) for p, v in verdicts if v.leans]
            firing = inp.firing.get(self.alertname, region, target)
            if firing is not None:  # it holds as a region, or says what resolved it
                held = set(firing[1])
                bad = [(p, v) for p, v in verdicts if v.leans or p in held]
                c = self.region(inp, region, target, topology, healthy, bad, of, st, True)
                if c is not None:
                    out.append(replace(c, labels=firing[0]))
                continue
            if not leaning:
                continue
            served = inp.served is not None and target in inp.served
            if len(leaning) >= min(st.quorum, of) and (
                len(leaning) > 1 or served or solo(inp, leaning[0][0])
            ):
                c = self.region(inp, region, target, topology, healthy, leaning, of, st, False)
                if c is not None:
                    out.append(c)
                    continue
            if inp.cfg.probe_warnings:
                out += [
                    self._warning(region, target, topology, pv, of, st)
                    for pv in leaning
                    if pv[1].degraded and (served or solo(inp, pv[0]))
                ]
        return out

    def region(
        self,
        inp: Inputs,
        region: str,
        target: str,
        topology: str,
        healthy: list[Judged],
        bad: list[tuple[str, Verdict]],
        of: int,
        st: TargetSettings,
        firing: bool,
    ) -> Condition | None:
        """The regional condition of ``bad`` (the quorum that leans, or a firing
        alert's probes and those leaning now) from the region's ``healthy`` probes: None
        when it does not hold and the alert is not firing; when it fires, a condition
        that holds or not (``holds``), with the value now. By default the quorum's
        verdicts decide: it holds while ``quorum`` of them are degraded."""
        degraded = [(p, v) for p, v in bad if v.degraded]
        holds = len(degraded) >= min(st.quorum, of)
        if not holds and not firing:
            return None
        shown = degraded or bad
        value, baseline, unit, summary = self.describe(
            region, target, shown, self.who(shown, of), st
        )
        return self.condition(
            region, target, topology, shown, of, st, value, baseline, unit, summary, holds=holds
        )

    def who(self, bad: list[tuple[str, Verdict]], of: int) -> str:
        return f"{', '.join(p for p, _ in bad)} ({len(bad)} of {of} probes)"

    def condition(
        self,
        region: str,
        target: str,
        topology: str,
        bad: list[tuple[str, Verdict]],
        of: int,
        st: TargetSettings,
        value: float,
        baseline: float | None,
        unit: str,
        summary: str,
        probe: str = "",
        extra: tuple[tuple[str, str], ...] = (),
        holds: bool = True,
    ) -> Condition:
        probes = tuple(p for p, _ in bad)
        sites = sorted({v.site for _, v in bad if v.site})
        where = (("sites", ", ".join(sites)),) if sites else ()
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
            for_s=st.for_s,
            keep_firing_for_s=st.keep_firing_for_s,
            extra=where + extra,
            holds=holds,
        )

    def _warning(
        self,
        region: str,
        target: str,
        topology: str,
        pv: tuple[str, Verdict],
        of: int,
        st: TargetSettings,
    ) -> Condition:
        """One probe degraded alone, on its own evidence."""
        value, baseline, unit, summary = self.describe(region, target, [pv], self.who([pv], of), st)
        return self.condition(
            region, target, topology, [pv], of, st, value, baseline, unit, summary, probe=pv[0]
        )

    def describe(
        self,
        region: str,
        target: str,
        bad: list[tuple[str, Verdict]],
        who: str,
        st: TargetSettings,
    ) -> tuple[float, float | None, str, str]:
        """(value, baseline, unit, summary) of a condition from its probes' verdicts."""
        raise NotImplementedError


__all__ = ["MAX_SOLO", "QuorumRule", "region_size", "solo"]

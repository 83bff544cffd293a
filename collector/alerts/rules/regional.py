"""Rules that judge each probe on each series and alert per region, by quorum: what
latency and errors share."""

from __future__ import annotations

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

S = TypeVar("S", bound=RuleSettings)


class QuorumRule(Rule[S]):
    """A region's target raises an alert when ``quorum`` of its healthy probes (or all,
    if it has fewer) are degraded on it: ``critical`` when two or more agree, else
    ``warning``. Below the quorum, with ``probe_warnings``, each degraded probe raises a
    ``warning`` of its own."""

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
            if bad and len(bad) >= min(st.quorum, len(verdicts)):
                out.append(self._regional(region, target, topology, bad, len(verdicts), st))
            elif bad and inp.cfg.probe_warnings:
                out += [
                    self._regional(region, target, topology, [pv], len(verdicts), st, pv[0])
                    for pv in bad
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

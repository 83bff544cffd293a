"""``silence``: a probe with no heartbeat for ``missed`` x ``heartbeat_s``."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from collector.alerts.rules.base import Condition, Inputs, Judged, Rule, RuleSettings, labels
from probe.wire import NS


class SilenceSettings(RuleSettings, frozen=True):
    """No heartbeat (the ``probe`` measurement) for ``missed`` x ``heartbeat_s``."""

    heartbeat_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0  # the probes' own
    missed: Annotated[float, msgspec.Meta(ge=1, le=1000)] = 3.0


class Silence(Rule[SilenceSettings]):
    """A registered probe silent for too long (a revoked probe is never silent)."""

    name: ClassVar[str] = "silence"
    alertname: ClassVar[str] = "silence"
    settings: ClassVar[type[SilenceSettings]] = SilenceSettings
    baseline_is: ClassVar[str] = "missed heartbeats"
    doc: ClassVar[str] = "a probe whose heartbeats stopped"

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        rule = self.of(inp.cfg.rules)
        if not rule.enabled:
            return []
        limit_s = rule.missed * rule.heartbeat_s
        known = dict(inp.snap.heartbeats)
        for region, probe in inp.firing.probes(self.alertname):
            known.setdefault(probe, (region, 0))  # silent for over a day, still firing
        out = []
        for probe, (region, last) in sorted(known.items()):
            if inp.registered is not None and probe not in inp.registered:
                continue
            age_s = (inp.at - last) / NS if last else 86400.0
            if age_s <= limit_s:
                continue
            out.append(
                Condition(
                    labels=labels(
                        alertname=self.alertname, severity="warning", region=region, probe=probe
                    ),
                    value=age_s,
                    unit="s",
                    baseline=limit_s,
                    probes=(probe,),
                    of=1,
                    summary=(
                        f"probe {probe} ({region}) is silent: no heartbeat for "
                        + (f"{age_s:.0f} s" if last else "over a day")
                        + f" (expected every {rule.heartbeat_s:g} s)"
                    ),
                    for_s=inp.cfg.for_s,
                    keep_firing_for_s=inp.cfg.keep_firing_for_s,
                )
            )
        return out


RULE = Silence()

__all__ = ["RULE", "Silence", "SilenceSettings"]

"""``propagation``: an anycast site serving an older SOA serial than the newest seen."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, ClassVar

import msgspec

from collector.alerts.anycast import newer
from collector.alerts.rules.base import Condition, Inputs, Judged, Rule, RuleSettings, labels
from probe.wire import NS


class PropagationSettings(RuleSettings, frozen=True):
    """An anycast site serving an older SOA serial than the newest seen at any site."""

    max_serial_lag_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 300.0


class Propagation(Rule[PropagationSettings]):
    """A site serving an older serial than the newest (RFC 1982 order) for longer than
    ``max_serial_lag_s`` after the newest was first seen (label ``site``, no region)."""

    name: ClassVar[str] = "propagation"
    alertname: ClassVar[str] = "propagation"
    settings: ClassVar[type[PropagationSettings]] = PropagationSettings
    per_target: ClassVar[bool] = True
    baseline_is: ClassVar[str] = "max_serial_lag_s"
    doc: ClassVar[str] = "an anycast site lagging the newest SOA serial"

    def assess(self, inp: Inputs, judged: list[Judged], excluded: set[str]) -> list[Condition]:
        by_target: dict[str, list[Judged]] = defaultdict(list)
        for j in judged:
            by_target[j.series.target].append(j)
        out = []
        for target, (newest, sites) in sorted(inp.serials.items()):
            js = by_target.get(target, [])
            since = inp.newest_since.get(target)
            if not js or since is None:
                continue
            st = js[0].settings
            rule = self.of(st.rules)
            if not rule.enabled:
                continue
            lag_s = (inp.at - since) / NS
            for site, (serial, _) in sorted(sites.items()):
                if not newer(newest, serial) or lag_s <= rule.max_serial_lag_s:
                    continue  # the newest, or newer than what the probes agree on
                seers = sorted(
                    {j.series.probe for j in js if any(x.site == site for x in j.series.samples)}
                )
                out.append(
                    Condition(
                        labels=labels(
                            alertname=self.alertname,
                            severity="warning",
                            target=target,
                            topology="anycast",
                            site=site,
                        ),
                        value=lag_s,
                        unit="s",
                        baseline=rule.max_serial_lag_s,
                        probes=tuple(seers),
                        of=len(seers),
                        summary=(
                            f"{target}: site {site} serves serial {serial}; {newest} is the "
                            f"newest, seen at another site {lag_s:.0f} s ago"
                        ),
                        for_s=st.for_s,
                        keep_firing_for_s=st.keep_firing_for_s,
                        extra=(("serial", str(serial)), ("newest_serial", str(newest))),
                    )
                )
        return out


RULE = Propagation()

__all__ = ["RULE", "Propagation", "PropagationSettings"]

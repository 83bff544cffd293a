"""Hysteresis, and the ``alert`` measurement that holds every state change.

An alert fires after ``for`` consecutive evaluations in which its condition holds, and
resolves after ``keep_firing_for`` consecutive ones in which it does not. Each change is
a point of ``alert`` (tags: rule, severity, region, target, topology, probe, site,
state; fields: value, baseline or threshold, probes, message). A starting engine reads the last
point of every alert of the last 30 days back: those whose last state is ``firing``
fire on, with the time they started, so a restart sends no second "new" alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from collector.alerts.rules import Condition, Labels, line_of
from collector.store.influxql import InfluxQL
from collector.store.lineproto import FieldValue, line
from collector.store.query import Between, Fn, Select
from collector.store.schema import ALERT_HISTORY_S
from probe.wire import NS

#: the label names kept as tags of ``alert``; alertname is the tag ``rule``
TAGS = ("severity", "region", "target", "topology", "probe", "site")


@dataclass(slots=True)
class Tracked:
    """One alert's state."""

    labels: Labels
    for_: int
    keep_firing_for: int
    bad: int = 0  # consecutive evaluations with the condition
    good: int = 0  # consecutive evaluations without it, while firing
    firing: bool = False
    since: int = 0  # epoch ns of the evaluation that fired it
    condition: Condition | None = None  # the last one seen
    resolved_at: int = 0

    @property
    def rule(self) -> str:
        return dict(self.labels)["alertname"]


@dataclass(frozen=True, slots=True)
class Change:
    alert: Tracked
    state: Literal["firing", "resolved"]
    at: int


@dataclass
class States:
    """Every alert pending or firing."""

    default_keep: int = 2
    alerts: dict[Labels, Tracked] = field(default_factory=dict)

    async def recover(self, influx: InfluxQL, at: int) -> int:
        """Alerts whose last state in ``alert`` is firing fire on; how many."""
        result = await influx.one(
            Select(
                "alert", (Fn("last", "value"),), (Between(at - ALERT_HISTORY_S * NS, at),), ("*",)
            )
        )
        last: dict[Labels, tuple[int, str]] = {}
        for s in result:
            t = s.tags
            key = tuple(
                sorted([("alertname", t.get("rule", ""))] + [(k, t[k]) for k in TAGS if t.get(k)])
            )
            ts = int(s.values[0][0])
            if key not in last or ts > last[key][0]:
                last[key] = (ts, t.get("state", ""))
        n = 0
        for key, (ts, state) in last.items():
            if state == "firing" and key not in self.alerts:
                self.alerts[key] = Tracked(key, 1, self.default_keep, firing=True, since=ts, bad=1)
                n += 1
        return n

    def apply(self, conditions: list[Condition], at: int) -> list[Change]:
        """One evaluation's conditions: the alerts that fire or resolve now."""
        changes: list[Change] = []
        seen: set[Labels] = set()
        for c in conditions:
            seen.add(c.labels)
            a = self.alerts.get(c.labels)
            if a is None:
                a = self.alerts[c.labels] = Tracked(c.labels, c.for_, c.keep_firing_for)
            a.for_, a.keep_firing_for = c.for_, c.keep_firing_for
            a.condition = c
            a.bad += 1
            a.good = 0
            if not a.firing and a.bad >= a.for_:
                a.firing, a.since = True, at
                changes.append(Change(a, "firing", at))
        for key, a in list(self.alerts.items()):
            if key in seen:
                continue
            a.bad = 0
            if a.firing:
                a.good += 1
                if a.good >= a.keep_firing_for:
                    a.firing, a.resolved_at = False, at
                    changes.append(Change(a, "resolved", at))
                    del self.alerts[key]
            else:
                del self.alerts[key]
        return changes

    def firing(self) -> list[Tracked]:
        return [a for a in self.alerts.values() if a.firing]


def to_line(change: Change) -> str:
    """The ``alert`` point of a state change."""
    a = change.alert
    d = dict(a.labels)
    tags = {"rule": d["alertname"], "state": change.state, **{k: d.get(k, "") for k in TAGS}}
    c = a.condition
    fields: dict[str, FieldValue | None] = {
        "value": float(c.value) if c else 0.0,
        line_of(d["alertname"]): float(c.baseline) if c and c.baseline is not None else None,
        "probes": ",".join(c.probes) if c else "",
        "message": (c.summary if c else "") + (" (resolved)" if change.state == "resolved" else ""),
    }
    return line("alert", tags, {k: v for k, v in fields.items() if v is not None}, change.at)


__all__ = ["Change", "States", "Tracked", "to_line"]

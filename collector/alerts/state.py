"""The waits, and the ``alert`` measurement that holds every state change.

An alert fires once its condition has held for ``for_s`` seconds, and resolves once it
has been gone for ``keep_firing_for_s`` seconds (durations, as in Prometheus). Each change is
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
    for_s: float
    keep_firing_for_s: float
    pending_since: int | None = None  # epoch ns: the condition has held since
    good_since: int | None = None  # epoch ns: firing, and the condition is gone since
    firing: bool = False
    since: int = 0  # epoch ns of the evaluation that fired it
    condition: Condition | None = None  # the last one seen (holding or not)
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

    default_for_s: float = 30.0
    default_keep_s: float = 60.0
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
                self.alerts[key] = Tracked(
                    key, self.default_for_s, self.default_keep_s, firing=True, since=ts
                )
                n += 1
        return n

    def apply(self, conditions: list[Condition], at: int) -> list[Change]:
        """One evaluation's conditions: the alerts that fire or resolve now.

        An alert fires once its condition has held for ``for_s`` (from the first
        evaluation that saw it), and resolves once it has been gone for
        ``keep_firing_for_s``: durations, so the evaluation interval changes how
        exactly they are met, not how long they are. A condition that does not hold
        (``holds`` false) counts as gone, and is kept as what the alert saw last: its
        resolution carries the value at resolution, not the last firing value."""
        changes: list[Change] = []
        seen: set[Labels] = set()
        for c in conditions:
            a = self.alerts.get(c.labels)
            if not c.holds:
                if a is not None and a.firing:
                    a.condition = c
                continue
            seen.add(c.labels)
            if a is None:
                a = self.alerts[c.labels] = Tracked(c.labels, c.for_s, c.keep_firing_for_s)
            a.for_s, a.keep_firing_for_s = c.for_s, c.keep_firing_for_s
            a.condition = c
            a.good_since = None
            if a.pending_since is None:
                a.pending_since = at
            if not a.firing and at - a.pending_since >= a.for_s * NS:
                a.firing, a.since = True, at
                changes.append(Change(a, "firing", at))
        for key, a in list(self.alerts.items()):
            if key in seen:
                continue
            a.pending_since = None
            if a.firing:
                if a.good_since is None:
                    a.good_since = at
                if at - a.good_since >= a.keep_firing_for_s * NS:
                    a.firing, a.resolved_at = False, at
                    changes.append(Change(a, "resolved", at))
                    del self.alerts[key]
            else:
                del self.alerts[key]
        return changes

    def firing(self) -> list[Tracked]:
        return [a for a in self.alerts.values() if a.firing]


def message(a: Tracked, state: str) -> str:
    """Alert ``a``'s summary in ``state``: a resolution says what resolved it (the value
    then, from the condition that no longer holds), or that nothing was seen."""
    c = a.condition
    if c is None:
        return ""
    if state == "resolved" and c.holds:  # no evidence since it last held
        return f"{c.summary} (resolved: no samples of it in the window since)"
    return c.summary


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
        "message": message(a, change.state),
    }
    return line("alert", tags, {k: v for k, v in fields.items() if v is not None}, change.at)


__all__ = ["Change", "States", "Tracked", "message", "to_line"]

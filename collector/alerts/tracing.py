"""Traces on alert: when a regional ``latency``, ``errors`` or ``catchment`` alert fires,
the engine asks its probes (and one healthy probe of another region, the control) for a
trace of the target's path at once, and compares each with that probe's last scheduled
trace from before the onset (:mod:`collector.alerts.paths`).

The ask goes through the command channel like an operator's (``collector.asks``), made
by the collector itself: operator ``popwatch-alerts``, its id a hash of the alert and
the instant it fired, so two evaluators make one ask. When every probe's trace is in
(or the ask's deadline passed), the differences become the alert's ``path`` and
``path_control`` annotations, ``path`` events, and a follow-up alert (``alertname``
``path``) that reaches the receivers while the alert fires.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from collector.alerts import paths
from collector.alerts.anycast import Event
from collector.alerts.asn import AsnTable
from collector.alerts.rules import Labels
from collector.alerts.state import Tracked
from collector.alerts.window import Snapshot
from collector.asks.model import GRACE_S, START_WITHIN_S
from collector.store.influxql import InfluxQL, QueryError
from collector.store.query import Tag
from probe.targets import TraceTarget
from probe.wire import NS

log = logging.getLogger("popwatch.collector.alerts")

#: the rules whose alerts are traced: a region's path to a target
TRACED_RULES: Final = frozenset({"latency", "errors", "catchment"})
#: how long before a catchment alert's pending the path is taken to have changed: the
#: site changes it counts are at most this old (the rules with a window use theirs)
CATCHMENT_LEAD_S: Final = 30.0
#: affected probes traced per alert at most
MAX_TRACED: Final = 5
OPERATOR: Final = "popwatch-alerts"

#: makes an ask: (id, kind, target spec, probes, created_at epoch ns)
Asker = Callable[[str, str, dict[str, Any], list[str], int], Awaitable[object]]


@dataclass(slots=True)
class Pending:
    """An alert's trace ask, waiting for its traces."""

    labels: Labels
    ask_id: str
    region: str
    target: str
    probes: tuple[str, ...]  # the alert's
    control: str | None
    onset: int  # epoch ns: baselines are from before this
    deadline: int  # epoch ns: no more traces are waited for after it
    families: int  # traces each probe makes


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an alert's traces said: its annotations, and their events."""

    labels: Labels
    annotations: dict[str, str]
    events: list[Event] = field(default_factory=list)
    at: int = 0  # epoch ns: when it was known
    traces: int = 0  # traces that came back (none: no follow-up, only the annotation)


def ask_id(labels: Labels, since: int) -> str:
    """The id of an alert's trace ask: the same at every evaluator."""
    text = "|".join(f"{k}={v}" for k, v in labels) + f"|{since}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Tracing:
    """The trace asks of the alerts that fired, and their differences once in."""

    def __init__(
        self,
        influx: InfluxQL,
        asker: Asker,
        specs: Callable[[], Mapping[str, dict[str, Any]]],
        lead_s: Callable[[str], float],
        asn: AsnTable | None = None,
    ) -> None:
        self.asn = asn  # the operator's prefix -> ASN table, for the words
        self.influx = influx
        self.asker = asker
        self.specs = specs  # target name -> its trace target spec
        self.lead_s = lead_s  # a rule -> how long before its alert's pending the onset is
        self.pending: dict[Labels, Pending] = {}

    async def fired(
        self, alert: Tracked, at: int, snap: Snapshot, busy: set[tuple[str, str]]
    ) -> Evidence | None:
        """Ask for the traces of ``alert``, which fired at ``at``; ``busy``: (probe,
        target) pairs in firing alerts (no control among them). Evidence now only when
        nothing can be asked (it says why)."""
        d = dict(alert.labels)
        region, target = d.get("region", ""), d.get("target", "")
        if alert.rule not in TRACED_RULES or not region or not target:
            return None
        spec = self.specs().get(target)
        if spec is None:
            why = f"not traced: the collector serves no target {target!r} to trace"
            return Evidence(alert.labels, {"path": why}, at=at)
        c = alert.condition
        probes = tuple(sorted(c.probes if c else ()))[:MAX_TRACED]
        if d.get("probe"):
            probes = (d["probe"],)
        control = self.control(snap, target, region, busy)
        chosen = [*probes, *([control] if control else [])]
        if not chosen:
            return Evidence(alert.labels, {"path": "not traced: no probe to ask"}, at=at)
        aid = ask_id(alert.labels, alert.since)
        spec = {**spec, "interval": 3600}
        try:
            await self.asker(aid, "trace", spec, chosen, at)
        except Exception as exc:  # the ask's own faults: say so in the alert
            log.warning("alert engine: cannot ask for the traces of %s: %s", d, exc)
            return Evidence(alert.labels, {"path": f"not traced: {exc}"}, at=at)
        onset = (alert.pending_since or alert.since) - int(self.lead_s(alert.rule) * NS)
        target_ = msgspec.convert(spec, TraceTarget)  # the board took it: it converts
        deadline = at + int((START_WITHIN_S + target_.timeout + GRACE_S) * NS)
        families = len(target_.families)
        self.pending[alert.labels] = Pending(
            alert.labels, aid, region, target, probes, control, onset, deadline, families
        )
        log.info(
            "alert %s: asked %s for traces of %s (ask %s)",
            alert.rule, ", ".join(chosen), target, aid,
        )  # fmt: skip
        return None

    @staticmethod
    def control(snap: Snapshot, target: str, region: str, busy: set[tuple[str, str]]) -> str | None:
        """A healthy probe of another region that measures ``target`` (in no firing
        alert on it, nor in one of its own: ``(probe, "")`` in ``busy``): of a region
        with no firing alert on the target, the one with the most samples in the
        window."""
        sick = {s.region for s in snap.series.values() if (s.probe, target) in busy}
        found = [
            (s.region in sick, -len(s.samples), s.region, s.probe)
            for s in snap.series.values()
            if s.target == target and s.region and s.region != region and s.samples
            and (s.probe, target) not in busy and (s.probe, "") not in busy
        ]  # fmt: skip
        return min(found)[3] if found else None

    def forget(self, labels: Labels) -> None:
        self.pending.pop(labels, None)

    async def collect(self, at: int) -> list[Evidence]:
        """The evidence of each pending ask whose traces are all in, or whose deadline
        passed."""
        out = []
        for p in list(self.pending.values()):
            try:
                got = await paths.read(self.influx, (Tag("ask", p.ask_id),), p.onset, at + NS)
            except (QueryError, TimeoutError) as exc:
                log.warning("alert engine: traces of ask %s not read this cycle: %s", p.ask_id, exc)
                continue
            asked = [*p.probes, *([p.control] if p.control else [])]
            have = {pr: sum(1 for t in got if t.probe == pr) for pr in asked}
            if at < p.deadline and any(n < p.families for n in have.values()):
                continue
            del self.pending[p.labels]
            try:
                out.append(await self._evidence(p, got, at))
            except (QueryError, TimeoutError) as exc:
                log.warning("alert engine: baselines of ask %s not read: %s", p.ask_id, exc)
        return out

    async def _evidence(self, p: Pending, got: list[paths.Trace], at: int) -> Evidence:
        asked = [*p.probes, *([p.control] if p.control else [])]
        bases = await asyncio.gather(
            *(paths.last_before(self.influx, pr, p.target, p.onset) for pr in asked)
        )
        baseline = dict(zip(asked, bases, strict=True))
        regions = {t.probe: t.region for t in got}
        words: dict[str, list[str]] = {"path": [], "path_control": []}
        events = []
        for t in got:
            base = baseline.get(t.probe, {}).get((t.key[3], t.key[4]))
            diff = paths.compare(base, t)
            said = diff.words(t.who("control" if t.probe == p.control else ""), self.asn)
            words["path_control" if t.probe == p.control else "path"].append(said)
            events.append(diff.event(None, said))
        for pr in asked:
            if pr not in regions:
                key = "path_control" if pr == p.control else "path"
                words[key].append(f"{pr}: no trace came back")
        annotations = {k: " | ".join(v) for k, v in words.items() if v}
        return Evidence(p.labels, annotations, events, at, len(got))


__all__ = ["MAX_TRACED", "OPERATOR", "TRACED_RULES", "Asker", "Evidence", "Tracing", "ask_id"]

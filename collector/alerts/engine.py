"""The alert engine: every ``evaluate_every_s``, one evaluation over what InfluxDB holds.

An evaluation (``step``) rolls up the buckets that have closed, reads the window's raw
samples and the heartbeats, follows the anycast sites and serials (``event`` points),
judges the rules, applies the waits (``for_s``, ``keep_firing_for_s``), writes the
state changes (``alert`` points) and hands them to the notifiers. It keeps nothing a
restart would lose: the firing alerts come back from ``alert``, the baselines from
``rollup_5m``, the last sites and serials from the raw points of the hour before.

Points go through ``writer`` (the collector's sink: InfluxDB, or the collector's spool
while InfluxDB is away). Points it could not take are kept and written with the next
evaluation.

Evaluations fall on the instants of the ``evaluate_every_s`` grid (multiples of it since
the epoch), so several evaluators judge the same instants and write the same points.
Alertmanager gets every change and re-send from each of them (it deduplicates); the
webhooks only from the one holding the lease (:mod:`collector.alerts.lease`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from collector.alerts import inflation, metrics, paths
from collector.alerts.anycast import LOOKBACK_S, SETTLE_S, Catchments, Event, Serials
from collector.alerts.asn import AsnTable
from collector.alerts.config import AlertsConfig, TargetSettings, settings_for
from collector.alerts.inflation import Figure, Sites
from collector.alerts.lease import LOG_LOOKBACK_S, Lease, delivered, hook_id, log_line
from collector.alerts.notify import Alertmanager, Notice, Notifier, Webhook, fingerprint
from collector.alerts.rollup import BASELINE_S, BUCKET_S, Rollups, bucket_of
from collector.alerts.rules import (
    BY_ALERTNAME,
    RULES,
    Condition,
    Firing,
    Inputs,
    Labels,
    annotate,
    assess,
)
from collector.alerts.rules.inflation import RULE as INFLATION
from collector.alerts.state import Change, States, Tracked, message, to_line
from collector.alerts.tracing import CATCHMENT_LEAD_S, Asker, Evidence, Tracing
from collector.alerts.window import NS, Snapshot, fetch
from collector.store.influxql import InfluxQL, QueryError

log = logging.getLogger("popwatch.collector.alerts")

#: points kept for a later write at most (an evaluation writes a few, a bucket's rollup
#: one per series)
MAX_UNWRITTEN = 500_000
WRITE_LINES = 2_000  # points per write
MAX_SETTINGS = 100_000  # targets whose settings are cached
BASELINE_BUCKETS = BASELINE_S // BUCKET_S
#: the webhook lease lives this many evaluations without a renewal
LEASE_EVALUATIONS = 3
#: a delivery logged this close to a change's instant is that change's (two evaluators
#: may see a change one evaluation apart)
SAME_CHANGE_S = 300


def default_holder() -> str:
    """An evaluator's name when it is given none: this host, this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Writer(Protocol):
    """Where points go: a body of line-protocol lines (the collector's ``Sink``)."""

    async def write(self, body: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one evaluation saw and did."""

    at: int  # epoch ns evaluated
    conditions: list[Condition]  # those that hold now
    changes: list[Change]
    events: list[Event]
    seconds: float  # the whole evaluation, wall time
    influx_seconds: float  # of which waiting for InfluxDB's answers


def notifiers_for(cfg: AlertsConfig) -> list[Notifier]:
    """Alertmanager (if ``alertmanager_url``) and each webhook."""
    out: list[Notifier] = []
    if cfg.alertmanager_url:
        out.append(Alertmanager(cfg.alertmanager_url, 4 * max(cfg.resend_s, cfg.evaluate_every_s)))
    out.extend(Webhook(w.url, w.format) for w in cfg.webhooks)
    return out


class Engine:
    """Evaluates ``cfg``'s rules over ``influx``.

    ``dry``: nothing is written and nothing sent (``alerts check``). ``registered``:
    the probes that may report, with their regions (revoked ones are never silent; a
    regional quorum counts a region's registered probes, not those that happen to
    report). ``served``: the targets the collector serves to every probe (None: it
    serves none, or it is not known). ``holder``: this evaluator's name in the webhook
    lease, the same across its restarts (so a restarted one takes its lease back).
    ``asker`` makes an ask (collector.asks' board) and ``traced`` gives each served
    target's trace spec: with both, a regional alert that fires asks for traces
    (:mod:`collector.alerts.tracing`); ``asn`` names the hops' networks in their words.
    """

    def __init__(
        self,
        cfg: AlertsConfig,
        influx: InfluxQL,
        writer: Writer | None = None,
        notifiers: Sequence[Notifier] = (),
        registered: Callable[[], dict[str, str]] | None = None,
        dry: bool = False,
        served: Callable[[], set[str] | None] | None = None,
        holder: str | None = None,
        sites: Callable[[], Mapping[str, Sites]] | None = None,
        asker: Asker | None = None,
        traced: Callable[[], Mapping[str, dict[str, object]]] | None = None,
        asn: AsnTable | None = None,
    ) -> None:
        self.cfg = cfg
        self.influx = influx
        self.writer = None if dry else writer
        self.notifiers = list(notifiers)
        self.registered = registered
        self.served = served
        self.sites = sites
        self.dry = dry
        self.states = States(default_for_s=cfg.for_s, default_keep_s=cfg.keep_firing_for_s)
        self.rollups = Rollups(influx, write=not dry)
        self.catchments = Catchments()
        self.serials = Serials()
        self.started = False
        self._settings: dict[tuple[str, str, str], TargetSettings] = {}
        self._unwritten: list[str] = []
        self._last_at: int | None = None
        self._last_resend = 0.0
        self._window_ns = int(cfg.window_s * NS)
        self.webhooks = [n for n in self.notifiers if isinstance(n, Webhook)]
        self.lease: Lease | None = None
        if self.webhooks and self.writer is not None:
            ttl = LEASE_EVALUATIONS * cfg.evaluate_every_s
            self.lease = Lease(influx, self.writer.write, holder or default_holder(), ttl)
        for w in self.webhooks:
            w.on_delivered = self._delivered_to
        #: each alert's last state change (its state, instant, and the alert): what the
        #: webhooks must have been told
        self.recent: dict[Labels, tuple[str, int, Tracked]] = {}
        self._log_of: dict[tuple[str, str], tuple[str, int]] = {}  # the delivery log
        self.baselines = paths.Baselines(asn)
        self.tracing = (
            Tracing(influx, asker, traced, self._lead_s, asn)
            if asker is not None and traced is not None and not dry
            else None
        )
        #: what each firing alert's traces said (its path annotations)
        self.evidence: dict[Labels, Evidence] = {}

    async def __aenter__(self) -> Engine:
        for n in self.notifiers:
            await n.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for n in self.notifiers:
            await n.close()

    def settings(self, target: str, topology: str, provider: str) -> TargetSettings:
        key = (target, topology, provider)
        st = self._settings.get(key)
        if st is None:
            st = self._settings[key] = settings_for(self.cfg, target, topology, provider)
        return st

    def _baseline_span(self, at: int) -> tuple[int, int]:
        """Bucket indexes [lo, hi) of the baseline: the day before the window."""
        hi = bucket_of(at - self._window_ns)
        return hi - BASELINE_BUCKETS, hi

    async def start(self, at: int) -> None:
        """Recover the firing alerts, the baselines, the last sites and serials."""
        t0 = time.perf_counter()
        recovered = await self.states.recover(self.influx, at)
        for a in self.states.firing():
            self.recent.setdefault(a.labels, ("firing", a.since, a))
        lo, _ = self._baseline_span(at)
        await self.rollups.load(lo, bucket_of(at) + 1)
        await self.catchments.start(self.influx, at - self._window_ns)
        await self.serials.start(self.influx, at - self._window_ns)
        self.started = True
        log.info(
            "alert engine started in %.1f s: %d alerts firing, %d baseline series, "
            "%d anycast series followed",
            time.perf_counter() - t0,
            recovered,
            len(self.rollups.rings),
            len(self.catchments.anchors),
        )

    async def step(self, at: int) -> StepResult:
        """One evaluation at ``at`` (epoch ns)."""
        t0 = time.perf_counter()
        self.influx.take_seconds()
        if not self.started:
            await self.start(at)
        lo, hi = self._baseline_span(at)
        await self.rollups.advance(at, lo, self._write)
        start = at - self._window_ns
        if self._last_at is not None:  # from where the previous evaluation stopped
            start = min(start, max(self._last_at - SETTLE_S * NS, at - LOOKBACK_S * NS))
        snap = await fetch(self.influx, at, start)
        figures = await self._inflation(at)
        until = at - SETTLE_S * NS
        events = self.catchments.update(snap, until)
        events += self.serials.update(snap, until)
        events += await self._path_events(at)
        providers = {s.target: s.provider for s in snap.series.values()}
        serials = self.serials.newest(
            snap, lambda t: self.settings(t, "anycast", providers.get(t, "")).quorum
        )
        newest_since = {
            target: self.serials.seen_since(target, newest, at)[0]
            for target, (newest, _) in serials.items()
        }
        registered = self.registered() if self.registered is not None else None
        served = self.served() if self.served is not None else None
        self._forget()
        inputs = Inputs(
            cfg=self.cfg,
            snap=snap,
            settings=self.settings,
            baseline=lambda kind, probe, target, site: self.rollups.baseline(
                (kind, probe, target, site), lo, hi
            ),
            usual_site=lambda kind, probe, target: self.rollups.usual_site(
                kind, probe, target, lo, hi
            ),
            firing=Firing(
                (a.labels, a.condition.probes if a.condition else ()) for a in self.states.firing()
            ),
            serials=serials,
            newest_since=newest_since,
            registered=registered,
            served=served,
            flaps=lambda probe, target: self.catchments.flaps(probe, target, at),
            inflation=figures,
        )
        conditions = assess(inputs)
        changes = [] if self.dry else self.states.apply(conditions, at)
        self._last_at = at
        if events:
            metrics.CATCHMENT_EVENTS.inc(sum(1 for e in events if e.kind == "catchment"))
        lines = [e.to_line() for e in events] + [f.to_line() for f in figures]
        lines += [to_line(c) for c in changes]
        await self._write(lines)
        if changes:
            self._log(changes)
            self._notify(changes)
        if not self.dry:
            await self._deliver_webhooks(at, changes)
        if self.tracing is not None:
            await self._trace(changes, snap, at)
        for rule in RULES:
            name = rule.alertname
            metrics.FIRING.labels(name).set(sum(1 for a in self.states.firing() if a.rule == name))
        seconds = time.perf_counter() - t0
        metrics.EVALUATION_SECONDS.observe(seconds)
        holding = [c for c in conditions if c.holds]
        return StepResult(at, holding, changes, events, seconds, self.influx.take_seconds())

    def _lead_s(self, alertname: str) -> float:
        """How long before an alert's pending its onset is: its rule's window."""
        rule = BY_ALERTNAME.get(alertname)
        window = getattr(rule.of(self.cfg.rules), "window_s", None) if rule else None
        return float(window) if window else CATCHMENT_LEAD_S

    async def _path_events(self, at: int) -> list[Event]:
        """The scheduled traces since the last evaluation: their path changes."""
        if self.dry:
            return []
        try:
            return await self.baselines.update(self.influx, at, SETTLE_S * NS)
        except (QueryError, TimeoutError) as exc:  # the other rules go on without it
            log.warning("alert engine: traces not read this cycle: %s", exc)
            return []

    async def _trace(self, changes: list[Change], snap: Snapshot, at: int) -> None:
        """Ask for the traces of the alerts that fired; the evidence of those whose
        traces are in, into their annotations, a follow-up and ``path`` events."""
        assert self.tracing is not None
        firing = {a.labels: a for a in self.states.firing()}
        busy = {
            (p, dict(a.labels).get("target", ""))
            for a in firing.values()
            for p in (a.condition.probes if a.condition else ())
        }
        found: list[Evidence] = []
        for c in changes:
            if c.state == "resolved":
                self.tracing.forget(c.alert.labels)
                ev = self.evidence.pop(c.alert.labels, None)
                if ev is not None and ev.traces:
                    self._follow_up([(c.alert, ev)], "resolved")
            elif (ev := await self.tracing.fired(c.alert, at, snap, busy)) is not None:
                found.append(ev)
        found += await self.tracing.collect(at)
        lines, fresh = [], []
        for ev in found:
            alert = firing.get(ev.labels)
            if alert is None:  # resolved while its traces were taken
                continue
            self.evidence[ev.labels] = ev
            lines += [e.to_line() for e in ev.events]
            if ev.traces:  # a follow-up that says "not traced" would be noise
                fresh.append((alert, ev))
            log.info("alert %s path: %s", alert.rule, " | ".join(ev.annotations.values()))
        await self._write(lines)
        if fresh:
            self._follow_up(fresh, "firing")
            # the alert itself again, with its path annotations (Alertmanager keeps the
            # newest; the follow-up is what makes a receiver hear of them)
            self._notify([Change(a, "firing", a.since) for a, _ in fresh])

    def follow_up(self, a: Tracked, ev: Evidence, state: str, wall: float) -> Notice:
        """The follow-up alert of ``a``'s path evidence: ``alertname`` ``path``, the
        alert's other labels, ``alert`` its rule."""
        labels = {**dict(a.labels), "alertname": "path", "alert": a.rule, "severity": "info"}
        annotations = {"summary": ev.annotations.get("path", ""), **ev.annotations}
        if a.condition is not None:
            annotations["alert_summary"] = a.condition.summary
        link = self.link(dict(a.labels), a.since, None if state == "firing" else wall)
        return Notice(
            status=state,
            labels=labels,
            annotations=annotations,
            starts_at=ev.at / NS,
            resolved_at=wall if state == "resolved" else None,
            generator_url=link,
        )

    def _follow_up(self, pairs: list[tuple[Tracked, Evidence]], state: str) -> None:
        wall = time.time()
        notices = [self.follow_up(a, ev, state, wall) for a, ev in pairs]
        deliver = self.lease is None or self.lease.held
        for n in self.notifiers:
            if deliver or not isinstance(n, Webhook):
                n.submit(notices, change=True)

    async def _inflation(self, at: int) -> list[Figure]:
        """The inflation figures of the anycast targets that list their sites."""
        rule = INFLATION.of(self.cfg.rules)
        sites = self.sites() if self.sites is not None else {}
        if not rule.enabled or not sites:
            return []
        try:
            return await inflation.measure(self.influx, at, sites, rule.window_s, rule.min_samples)
        except (QueryError, TimeoutError) as exc:  # the other rules go on without it
            log.warning("alert engine: inflation figures not read this cycle: %s", exc)
            return []

    def _forget(self) -> None:
        """Bound what is kept per series: settings of targets not seen for a while."""
        if len(self._settings) > MAX_SETTINGS:
            self._settings.clear()

    async def _write(self, lines: list[str]) -> None:
        if self.writer is None:
            return
        self._unwritten.extend(lines)
        try:
            while self._unwritten:  # in bodies well under 1 MB (aiohttp warns past it)
                chunk = self._unwritten[:WRITE_LINES]
                await self.writer.write(("\n".join(chunk) + "\n").encode())
                del self._unwritten[: len(chunk)]
        except Exception as exc:  # the sink's own errors: keep the points for the next try
            if len(self._unwritten) > MAX_UNWRITTEN:
                drop = len(self._unwritten) - MAX_UNWRITTEN
                del self._unwritten[:drop]
                log.error(
                    "alert engine: %d unwritten points dropped (over %d)", drop, MAX_UNWRITTEN
                )
            log.warning(
                "alert engine: %d points not written yet (%s); retrying with the next evaluation",
                len(self._unwritten),
                exc,
            )

    def _log(self, changes: list[Change]) -> None:
        """One INFO line per state change: the rule, where, the state, and the value
        against its line."""
        for change in changes:
            labels = dict(change.alert.labels)
            where = " ".join(
                f"{k}={labels[k]}" for k in ("region", "target", "probe", "site") if k in labels
            )
            c = change.alert.condition
            text = annotate(c) if c is not None else {}
            line = next(
                (f" against {k} {text[k]}" for k in ("threshold", "baseline") if k in text), ""
            )
            value = f", value {text['value']}{line}" if "value" in text else ""
            log.info("alert %s %s: %s%s", labels.get("alertname", "?"), change.state, where, value)

    def notice(self, a: Tracked, state: str, wall: float) -> Notice:
        """What the notifiers get about alert ``a``."""
        labels = dict(a.labels)
        annotations = annotate(a.condition) if a.condition is not None else {}
        if a.condition is not None:
            annotations["summary"] = message(a, state)
        if (ev := self.evidence.get(a.labels)) is not None:
            annotations.update(ev.annotations)
        link = self.link(labels, a.since, None if state == "firing" else wall)
        if link:
            annotations["dashboard"] = link
        return Notice(
            status=state,
            labels=labels,
            annotations=annotations,
            starts_at=a.since / NS,
            resolved_at=wall if state == "resolved" else None,
            generator_url=link,
        )

    def link(self, labels: dict[str, str], since: int, resolved: float | None) -> str:
        """The dashboard, at the alert's region, target and time range."""
        if not self.cfg.dashboard_url:
            return ""
        params = {
            f"var-{k}": labels[k] for k in ("region", "target", "probe", "site") if k in labels
        }
        params["from"] = str(since // 1_000_000 - 3600 * 1000)
        params["to"] = "now" if resolved is None else str(int(resolved * 1000) + 900 * 1000)
        url = self.cfg.dashboard_url
        return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)

    def _notify(self, changes: list[Change]) -> None:
        """The changes to every notifier but the webhooks (see ``_deliver_webhooks``)."""
        wall = time.time()
        notices = [self.notice(c.alert, c.state, wall) for c in changes]
        for n in self.notifiers:
            if not isinstance(n, Webhook):
                n.submit(notices, change=True)

    async def _deliver_webhooks(self, at: int, changes: list[Change]) -> None:
        """While this evaluator holds the webhook lease: every alert's last change that
        the delivery log does not have yet, to each webhook. Otherwise nothing (and what
        was queued is dropped: the holder delivers it)."""
        for c in changes:
            self.recent[c.alert.labels] = (c.state, c.at, c.alert)
        cut = at - LOG_LOOKBACK_S * NS
        for labels, (state, t, _) in list(self.recent.items()):
            if state == "resolved" and t < cut:
                del self.recent[labels]
        if not self.webhooks:
            return
        if self.lease is None:  # nothing to share a lease through: deliver the changes
            wall = time.time()
            notices = [self.notice(c.alert, c.state, wall) for c in changes]
            for w in self.webhooks:
                w.submit(notices, change=True)
            return
        had = self.lease.held
        if not await self.lease.check(at):
            for w in self.webhooks:
                w.clear()
            return
        if not had:  # a new holder: what the old one delivered
            self._log_of = await delivered(self.influx, at)
        for w in self.webhooks:
            to, queued = hook_id(w.url, w.fmt), w.queued()
            due = []
            for labels, (state, t, a) in self.recent.items():
                fp = fingerprint(dict(labels))
                logged = self._log_of.get((to, fp))
                if (fp, state, t) in queued or (
                    logged is not None
                    and logged[0] == state
                    and abs(logged[1] - t) <= SAME_CHANGE_S * NS
                ):
                    continue
                n = self.notice(a, state, t / NS)
                due.append(dataclasses.replace(n, change_at=t))
            w.submit(due, change=True)

    async def _delivered_to(self, w: Webhook, notices: list[Notice]) -> None:
        """The delivery log's points of a delivered message."""
        to, lines = hook_id(w.url, w.fmt), []
        for n in notices:
            if n.change_at is None:
                continue
            self._log_of[(to, n.fingerprint)] = (n.status, n.change_at)
            lines.append(log_line(to, n.fingerprint, n.status, n.change_at))
        await self._write(lines)

    def resend(self, force: bool = False) -> None:
        """Every ``resend_s``: the firing alerts again, to Alertmanager."""
        wall = time.time()
        if not force and wall - self._last_resend < self.cfg.resend_s:
            return
        self._last_resend = wall
        firing = self.states.firing()
        notices = [self.notice(a, "firing", wall) for a in firing]
        notices += [
            self.follow_up(a, ev, "firing", wall)
            for a in firing
            if (ev := self.evidence.get(a.labels)) is not None and ev.traces
        ]
        for n in self.notifiers:
            n.submit(notices, change=False)

    async def run(self, stop: asyncio.Event, clock: Callable[[], float] = time.time) -> None:
        """Evaluate at each instant of the ``evaluate_every_s`` grid until ``stop`` is
        set (an evaluation that overran its interval skips the instants it missed)."""
        every = self.cfg.evaluate_every_s
        last: int | None = None
        while not stop.is_set():
            k = math.floor(clock() / every)
            at = round(k * every * NS)
            if last is not None and k <= last:
                k = last + 1  # this instant is judged (or failed): wait for the next one
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, k * every - clock()))
                continue
            last = k
            try:
                result = await self.step(at)
                log.debug(
                    "evaluation: %d conditions, %d changes, %.2f s (InfluxDB %.2f s)",
                    len(result.conditions),
                    len(result.changes),
                    result.seconds,
                    result.influx_seconds,
                )
            except QueryError as exc:
                metrics.EVALUATION_FAILURES.inc()
                log.warning("alert evaluation skipped: %s", exc)
            except Exception:
                metrics.EVALUATION_FAILURES.inc()
                log.exception("alert evaluation failed")
            self.resend()  # firing alerts stay alive while InfluxDB is away
            delay = max(0.0, (k + 1) * every - clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


__all__ = ["Engine", "StepResult", "Writer", "notifiers_for"]

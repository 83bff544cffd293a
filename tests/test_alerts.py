"""Alerts: regional, quorum-based, aware of sick probes, stable, and delivered.

Real InfluxDB 1.6.7, a real `popwatch-collector run` that every point goes through, and a
real Prometheus Alertmanager whose webhook receiver (tests/support/alertmanager.py) records what
arrives after Alertmanager's own routing. The world: 3 regions x 3 probes, 4 targets
(anycast, unicast, resolver, http) of 3 providers, 24 h of steady history. The tests
drive the engine's evaluations with explicit times (``Engine.step(at)``), 30 s apart, in
the two hours before now, so no test waits for minutes; the engine dies for good and
restarts in `popwatch-collector run` itself, in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.alertmanager import Alertmanager, Receiver
from support.influx import InfluxDB
from support.procs import Collector

from collector.alerts.config import AlertsConfig, load_alerts
from collector.alerts.engine import Engine, StepResult, notifiers_for
from collector.config import load_config
from collector.ingest.registry import Registry
from collector.store.influxql import InfluxQL
from collector.store.sink import InfluxV1Sink
from probe.configfile import ConfigError

NS = 1_000_000_000
COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")
DATA = Path(__file__).parent / "data" / "alerts"

REGIONS = ("eu", "us", "ap")
PROBES = {f"{r}-{i}": r for r in REGIONS for i in (1, 2, 3)}
SITES = {"eu": "fra1", "us": "nyc1", "ap": "sin1"}
TARGETS = {  # name: kind, topology, provider
    "ns-any": ("dns", "anycast", "alpha"),
    "ns-uni": ("dns", "unicast", "beta"),
    "ns-res": ("dns", "resolver", "gamma"),
    "www": ("http", "anycast", "alpha"),
}
SERIAL = 2026010100
STEP_S = 30  # evaluate_every_s, and the live samples' spacing


def base_ms(probe: str, target: str) -> float:
    """Each probe's steady latency to each target: distinct, so medians are exact."""
    region, i = probe.rsplit("-", 1)
    return 10.0 + 10 * REGIONS.index(region) + 2 * list(TARGETS).index(target) + int(i) - 1


#: a sample's override: (probe, target, ts ns) -> a record, or None for "as usual"
Override = Callable[[str, str, int], dict[str, Any] | None]


class World:
    """A collector in front of its own database, with the probes registered."""

    def __init__(self, influx: InfluxDB, tmp_path: Path) -> None:
        self.influx = influx
        self.db = "alerts_" + uuid.uuid4().hex[:8]
        data = tmp_path / "collector"
        data.mkdir()
        registry = Registry(data / "registry.sqlite")
        self.tokens = {p: registry.add(p, region=r) for p, r in PROBES.items()}
        registry.close()
        self.collector = Collector(influx, data, self.db)
        self.t0 = (int(time.time()) - 7200) // 300 * 300  # epoch s, on a bucket boundary
        self.overrides: list[Override] = []
        self.silent: set[str] = set()
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> World:
        await asyncio.to_thread(self.collector.start)
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()
        await asyncio.to_thread(self.collector.stop)

    def record(self, probe: str, target: str, ts: int) -> dict[str, Any]:
        for override in reversed(self.overrides):
            r = override(probe, target, ts)
            if r is not None:
                return r
        return normal(probe, target, ts)

    async def post(self, probe: str, records: list[dict[str, Any]]) -> None:
        assert self.session is not None
        body = {
            "schema": 1,
            "batch": str(uuid.uuid4()),
            "sent_at": time.time_ns(),
            "measurements": records,
        }
        headers = {"Authorization": f"Bearer {self.tokens[probe]}"}
        async with self.session.post(
            f"{self.collector.url}/api/v1/measurements", json=body, headers=headers
        ) as r:
            answer = await r.json()
            assert r.status == 200 and not answer["rejected"], answer

    async def seed(self, t0: int | None = None, live_s: int = 300) -> None:
        """24 h of history at 5-minute spacing, then ``live_s`` at 30 s spacing, up to
        ``t0`` (epoch s)."""
        t0 = self.t0 if t0 is None else t0
        times = list(range(t0 - 86400 - 600, t0 - live_s, 300))
        times += list(range(t0 - live_s + 15, t0, STEP_S))
        for probe in PROBES:
            records = []
            for t in times:
                ts = t * NS
                records += [self.record(probe, target, ts) for target in TARGETS]
                records.append(heartbeat(ts))
            await self.post(probe, records)

    async def tick(self, at: int) -> None:
        """Each probe's samples and heartbeat 15 s before ``at`` (epoch s)."""
        ts = (at - 15) * NS
        await asyncio.gather(
            *(
                self.post(probe, [*(self.record(probe, t, ts) for t in TARGETS), heartbeat(ts)])
                for probe in PROBES
                if probe not in self.silent
            )
        )


def normal(
    probe: str, target: str, ts: int, rtt_ms: float | None = None, **kw: Any
) -> dict[str, Any]:
    """A probe's usual answer (``rtt_ms`` and ``kw`` change it)."""
    kind, topology, provider = TARGETS[target]
    value = base_ms(probe, target) if rtt_ms is None else rtt_ms
    if kind == "http":
        return {
            "kind": "http",
            "ts": ts,
            "target": target,
            "url": "https://www.example.test/",
            "status": 200,
            "ttfb_ms": value,
            "topology": topology,
            "provider": provider,
            **kw,
        }
    r: dict[str, Any] = {
        "kind": "dns",
        "ts": ts,
        "target": target,
        "server": "192.0.2.53",
        "port": 53,
        "transport": "udp",
        "qname": "example.test.",
        "qtype": "SOA",
        "rcode": "NOERROR",
        "timestamping": "kernel",
        "rtt_ms": value,
        "serial": SERIAL,
        "topology": topology,
        "provider": provider,
    }
    if topology == "anycast":
        r["site"] = SITES[PROBES[probe]]
    r.update(kw)
    return r


def timeout(probe: str, target: str, ts: int) -> dict[str, Any]:
    """No answer: rcode TIMEOUT, no rtt_ms, no site."""
    r = normal(probe, target, ts)
    for key in ("rtt_ms", "site", "serial"):
        r.pop(key, None)
    r.update(rcode="TIMEOUT", error="timeout: no answer within 2 s")
    return r


def heartbeat(ts: int) -> dict[str, Any]:
    return {
        "kind": "probe",
        "ts": ts,
        "version": "test",
        "uptime_s": 100.0,
        "spool_depth": 0,
        "dropped": 0,
        "rejected": 0,
    }


def slow(
    factor: float, probes: set[str], targets: set[str], since: int, until: int | None = None
) -> Override:
    """``probes`` answer ``targets`` ``factor`` x slower from ``since`` (epoch s) on."""

    def override(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        if (
            probe in probes
            and target in targets
            and ts >= since * NS
            and (until is None or ts < until * NS)
        ):
            return normal(probe, target, ts, rtt_ms=base_ms(probe, target) * factor)
        return None

    return override


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def alertmanager(receiver: Receiver) -> Iterator[Alertmanager]:
    with Alertmanager(receiver.url) as am:
        yield am


@pytest.fixture
async def world(influx: InfluxDB, tmp_path: Path) -> AsyncIterator[World]:
    async with World(influx, tmp_path) as w:
        yield w


@contextlib.asynccontextmanager
async def engine(world: World, **alerts: Any) -> AsyncIterator[Engine]:
    """An engine over the world's database, writing straight to InfluxDB."""
    cfg = load_alerts({"evaluate_every_s": STEP_S, **alerts})
    influxql = InfluxQL(world.influx.url, world.db)
    sink = InfluxV1Sink(world.influx.url, world.db)
    await sink.start()
    try:
        async with Engine(cfg, influxql, sink, notifiers_for(cfg)) as e:
            yield e
    finally:
        await sink.close()
        await influxql.close()


async def run(world: World, e: Engine, first: int, last: int) -> list[StepResult]:
    """Evaluations ``first``..``last`` (each 30 s after t0 times its number), each after
    the probes' samples for it."""
    results = []
    for k in range(first, last + 1):
        at = world.t0 + k * STEP_S
        await world.tick(at)
        results.append(await e.step(at * NS))
    return results


def changes(results: list[StepResult]) -> list[tuple[int, str, dict[str, str]]]:
    """(evaluation index, state, labels) of every state change."""
    return [(i, c.state, dict(c.alert.labels)) for i, r in enumerate(results) for c in r.changes]


async def arrived(
    rx: Receiver, cond: Callable[[list[dict[str, Any]]], bool], within: float = 15
) -> list[dict[str, Any]]:
    """The receiver's alerts once ``cond`` holds for them (or the timeout passed)."""
    await polled(lambda: cond(rx.alerts()), within)
    return rx.alerts()


async def polled(cond: Callable[[], bool], within: float) -> None:
    """Until ``cond()`` holds or ``within`` seconds passed (the receiver is a thread)."""
    for _ in range(int(within / 0.2)):
        if cond():
            return
        await asyncio.sleep(0.2)


def of(alerts: list[dict[str, Any]], status: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts
        if a["status"] == status and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def alert_rows(world: World) -> list[dict[str, Any]]:
    try:
        return world.influx.query("SELECT * FROM alert", db=world.db)
    except RuntimeError:
        return []


async def test_a_region_degrading_raises_one_regional_alert_with_value_and_baseline(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """eu's three probes get 5x slower on ns-uni: exactly one regional alert (eu,
    ns-uni, critical) fires within for + 1 evaluations of the first slow sample, with
    the median of their window medians (65 ms) against the median of their baselines
    (13 ms); it reaches Alertmanager's receiver, resolves after recovery, and no other
    region or target alerts."""
    await world.seed()
    eu = {p for p, r in PROBES.items() if r == "eu"}
    world.overrides.append(
        slow(5, eu, {"ns-uni"}, world.t0 + 1 * STEP_S - 15, world.t0 + 6 * STEP_S)
    )
    grafana = "http://grafana.test/d/popwatch-region"
    async with engine(world, alertmanager_url=alertmanager.url, dashboard_url=grafana) as e:
        results = await run(world, e, 1, 20)
    seen = changes(results)
    fired = [(i, lab) for i, state, lab in seen if state == "firing"]
    assert [lab for _, lab in fired] == [
        {
            "alertname": "latency",
            "severity": "critical",
            "region": "eu",
            "target": "ns-uni",
            "topology": "unicast",
        }
    ]
    assert fired[0][0] + 1 <= 2 + 1  # evaluation 1 saw the first slow sample: fired by 3
    resolved = [lab for _, state, lab in seen if state == "resolved"]
    assert resolved == [fired[0][1]]
    alerts = await arrived(receiver, lambda a: bool(of(a, "resolved")))
    firing = of(alerts, "firing")
    assert len(firing) == 1, alerts
    a = firing[0]
    assert a["labels"] == {**fired[0][1]}
    assert a["annotations"]["value"] == "65.0 ms"
    assert a["annotations"]["baseline"].startswith("13.0 ms")
    assert a["annotations"]["probes"] == "eu-1, eu-2, eu-3 (3 of 3)"
    since_ms = (world.t0 + (fired[0][0] + 1) * STEP_S) * 1000  # the evaluation that fired
    link = f"{grafana}?var-region=eu&var-target=ns-uni&from={since_ms - 3_600_000}&to=now"
    assert (a["annotations"]["dashboard"], a["generatorURL"]) == (link, link)
    assert len(of(alerts, "resolved", alertname="latency", region="eu")) == 1
    assert {x["labels"]["region"] for x in alerts} == {"eu"}
    rows = alert_rows(world)
    assert [(r["state"], r["rule"], r["region"]) for r in rows] == [
        ("firing", "latency", "eu"),
        ("resolved", "latency", "eu"),
    ]
    assert rows[0]["value"] == 65.0 and rows[0]["baseline"] == 13.0


async def test_one_probe_alone_raises_no_regional_alert(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """One eu probe 5x slower on ns-uni: no regional alert; with probe_warnings, one
    warning for that probe alone."""
    await world.seed()
    world.overrides.append(slow(5, {"eu-2"}, {"ns-uni"}, world.t0))
    async with engine(world, alertmanager_url=alertmanager.url, probe_warnings=True) as e:
        results = await run(world, e, 1, 6)
    fired = [lab for _, state, lab in changes(results) if state == "firing"]
    assert fired == [
        {
            "alertname": "latency",
            "severity": "warning",
            "region": "eu",
            "target": "ns-uni",
            "topology": "unicast",
            "probe": "eu-2",
        }
    ]
    alerts = await arrived(receiver, lambda a: len(a) >= 1)
    assert [a["labels"].get("probe") for a in alerts] == ["eu-2"]
    assert not of(alerts, "firing", severity="critical")


async def test_a_sick_probe_raises_a_probe_alert_and_no_regional_one(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """eu-1 degraded on all four targets (three providers, three topologies) is sick: a
    `probe` alert (info) fires, and no regional alert, even though eu-2 is degraded on
    ns-uni too (eu-1 is left out of eu's quorum, so eu-2 stands alone)."""
    await world.seed()
    world.overrides.append(slow(6, {"eu-1"}, set(TARGETS), world.t0))
    world.overrides.append(slow(5, {"eu-2"}, {"ns-uni"}, world.t0))
    async with engine(world, alertmanager_url=alertmanager.url) as e:
        results = await run(world, e, 1, 8)
    fired = [lab for _, state, lab in changes(results) if state == "firing"]
    assert fired == [{"alertname": "probe", "severity": "info", "region": "eu", "probe": "eu-1"}]
    alerts = await arrived(receiver, lambda a: len(a) >= 1)
    assert [a["labels"]["alertname"] for a in alerts] == ["probe"]
    assert "left out of eu's quorums" in alerts[0]["annotations"]["summary"]


@pytest.mark.parametrize("shift", [0, 3], ids=["above-first", "below-first"])
@pytest.mark.parametrize("holds", [True, False], ids=["default", "without"])
async def test_a_value_hovering_at_the_threshold_does_not_flap(
    world: World, alertmanager: Alertmanager, receiver: Receiver, holds: bool, shift: int
) -> None:
    """eu's probes hover at their threshold on ns-uni for 20 evaluations: three samples
    4 % above it, three 2 % below, and again (starting above or below). The window's
    median crosses the threshold both ways, twice in a row each time. With the defaults
    (a firing alert holds while its probes' answers of the last ``hold_s`` are past
    baseline + 90 % of the way to the threshold, and resolves ``keep_firing_for_s``
    after that stops) the alert fires once and resolves once, after the probes are back
    to normal; without those holds (hysteresis 0, hold_s 1, keep_firing_for_s 0), the
    same samples make it flap."""
    await world.seed()
    eu = {p for p, r in PROBES.items() if r == "eu"}
    start, end = world.t0, world.t0 + 20 * STEP_S

    def hover(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        if probe in eu and target == "ns-uni" and start * NS <= ts < end * NS:
            above = ((ts // NS - start) // STEP_S + shift) // 3 % 2 == 0
            threshold = base_ms(probe, target) + 20  # > 2x the baselines of 12-14 ms
            return normal(probe, target, ts, rtt_ms=threshold * (1.04 if above else 0.98))
        return None

    world.overrides.append(hover)
    off: dict[str, Any] = {
        "rules": {"latency": {"hysteresis": 0, "hold_s": 1}},
        "keep_firing_for_s": 0,
    }
    async with engine(world, alertmanager_url=alertmanager.url, **({} if holds else off)) as e:
        during = [state for _, state, _ in changes(await run(world, e, 1, 20))]
        after = [state for _, state, _ in changes(await run(world, e, 21, 40))]
    if not holds:
        assert during.count("firing") >= 2 and "resolved" in during, during
        return
    assert (during, after) == (["firing"], ["resolved"])
    alerts = await arrived(receiver, lambda a: bool(of(a, "resolved")))
    assert (len(of(alerts, "firing")), len(of(alerts, "resolved"))) == (1, 1)


async def test_a_catchment_move_is_an_event_and_a_regional_alert_naming_both_sites(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """eu's probes lose fra1 on ns-any (timeouts: 2 for eu-1, 1 for eu-2, 12 for eu-3),
    then ams1 answers: one `catchment` event per probe whose lost and outage_ms are
    the seeded gap, and a catchment alert for eu naming fra1 and ams1. The engine is
    replaced by a new one during eu-3's outage, once its last fra1 answer is older than
    the window: the new engine finds it (and the timeouts since) in the hour before,
    measures the same outage, rewrites the events it sees again to the same points,
    and takes the firing alert back instead of firing it again."""
    await world.seed()
    gaps = {"eu-1": 2, "eu-2": 1, "eu-3": 12}
    cut = world.t0 + 2 * STEP_S  # the first tick without fra1

    def move(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        if probe not in gaps or target != "ns-any" or ts < (cut - 15) * NS:
            return None
        lost = (ts // NS - (cut - 15)) // STEP_S
        if lost < gaps[probe]:
            return timeout(probe, target, ts)
        return normal(probe, target, ts, site="ams1", rtt_ms=base_ms(probe, target) + 5)

    world.overrides.append(move)
    async with engine(world, alertmanager_url=alertmanager.url) as e:
        results = await run(world, e, 1, 11)
    async with engine(world, alertmanager_url=alertmanager.url) as e:
        # evaluation 12: eu-3's last fra1 answer (tick 1) is 345 s old, out of the window
        results += await run(world, e, 12, 16)
    events = {ev.probe: ev for r in results for ev in r.events if ev.kind == "catchment"}
    assert set(events) == set(gaps)
    for probe, n in gaps.items():
        ev = events[probe]
        assert (ev.from_site, ev.to_site, ev.lost) == ("fra1", "ams1", n)
        # from the last fra1 answer (one tick before the cut) to the first ams1 answer
        assert ev.outage_ms == (n + 1) * STEP_S * 1000
    stored = world.influx.query("SELECT * FROM event WHERE kind = 'catchment'", db=world.db)
    assert sorted((r["probe"], r["lost"], r["outage_ms"]) for r in stored) == sorted(
        (p, n, (n + 1) * STEP_S * 1000.0) for p, n in gaps.items()
    )
    fired = [lab for _, state, lab in changes(results) if state == "firing"]
    assert (
        fired.count(
            {
                "alertname": "catchment",
                "severity": "warning",
                "region": "eu",
                "target": "ns-any",
                "topology": "anycast",
            }
        )
        == 1
    )
    alerts = await arrived(receiver, lambda a: bool(of(a, "firing", alertname="catchment")))
    assert len(of(alerts, "firing", alertname="catchment")) == 1
    catchment = of(alerts, "firing", alertname="catchment")[0]
    assert (catchment["annotations"]["from_site"], catchment["annotations"]["to_site"]) == (
        "fra1",
        "ams1",
    )
    assert "from fra1 to ams1" in catchment["annotations"]["summary"]
    assert {a["labels"]["region"] for a in alerts} == {"eu"}


async def test_a_site_keeping_an_old_serial_raises_propagation_and_records_the_lag(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """fra1 and nyc1 serve a new serial; sin1 keeps the old one for 8 minutes: a
    `propagation` alert for sin1 once the lag passes max_serial_lag_s (120 s), resolved
    when sin1 catches up, and a `serial` event for sin1 with the 480 s lag."""
    await world.seed()
    bump = world.t0 + STEP_S  # the tick whose samples first carry the new serial
    caught_up = bump + 16 * STEP_S

    def serials(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        if target != "ns-any" or ts < (bump - 15) * NS:
            return None
        region = PROBES[probe]
        if region == "ap" and ts < (caught_up - 15) * NS:
            return None
        return normal(probe, target, ts, serial=SERIAL + 1)

    world.overrides.append(serials)
    async with engine(
        world, alertmanager_url=alertmanager.url, rules={"propagation": {"max_serial_lag_s": 120}}
    ) as e:
        results = await run(world, e, 1, 24)
    seen = changes(results)
    assert [(state, lab) for _, state, lab in seen] == [
        (
            "firing",
            {
                "alertname": "propagation",
                "severity": "warning",
                "target": "ns-any",
                "topology": "anycast",
                "site": "sin1",
            },
        ),
        (
            "resolved",
            {
                "alertname": "propagation",
                "severity": "warning",
                "target": "ns-any",
                "topology": "anycast",
                "site": "sin1",
            },
        ),
    ]
    fired_at = seen[0][0] + 1
    assert (fired_at - 1) * STEP_S > 120  # not before the lag passed the limit
    lags = {
        ev.to_site: (ev.from_site, ev.lag_s)
        for r in results
        for ev in r.events
        if ev.kind == "serial"
    }
    assert lags["sin1"] == ("fra1", caught_up - bump)
    assert lags["fra1"] == ("fra1", 0.0)
    stored = world.influx.query(
        "SELECT lag_s FROM event WHERE kind = 'serial' GROUP BY to_site", db=world.db
    )
    assert {r["to_site"]: r["lag_s"] for r in stored} == {
        "fra1": 0.0,
        "nyc1": 0.0,
        "sin1": caught_up - bump,
    }
    alerts = await arrived(receiver, lambda a: bool(of(a, "resolved")))
    assert len(of(alerts, "firing", alertname="propagation", site="sin1")) == 1
    assert (
        "serves serial 2026010100; 2026010101 is the newest" in alerts[0]["annotations"]["summary"]
    )


async def test_a_probe_that_stops_its_heartbeats_raises_silence(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """us-3 goes quiet: a `silence` alert once 3 x heartbeat_s (180 s) passed without
    its heartbeat, resolved when it is back; nothing else fires."""
    await world.seed()
    async with engine(world, alertmanager_url=alertmanager.url) as e:
        results = await run(world, e, 1, 2)
        world.silent.add("us-3")
        results += await run(world, e, 3, 12)
        world.silent.clear()
        results += await run(world, e, 13, 16)
    seen = changes(results)
    label = {"alertname": "silence", "severity": "warning", "region": "us", "probe": "us-3"}
    assert [(state, lab) for _, state, lab in seen] == [("firing", label), ("resolved", label)]
    # the last heartbeat came with tick 2 (t0 + 45 s): 195 s old at evaluation 8 (the
    # first past 180 s), so it fires at evaluation 9
    assert seen[0][0] + 1 == 9
    alerts = await arrived(receiver, lambda a: bool(of(a, "resolved")))
    assert [a["status"] for a in alerts] == ["firing", "resolved"]


async def test_webhooks_get_firing_and_resolved_and_a_failing_one_is_retried(world: World) -> None:
    """A JSON webhook and a Slack webhook each receive the firing and the resolved
    message; the Slack one answers 500 to its first two attempts and still gets both,
    in order."""
    with Receiver() as json_rx, Receiver() as slack_rx:
        slack_rx.fail_next(2)
        await world.seed()
        eu = {p for p, r in PROBES.items() if r == "eu"}
        world.overrides.append(slow(5, eu, {"ns-res"}, world.t0, world.t0 + 4 * STEP_S))
        hooks = [{"url": json_rx.url, "format": "json"}, {"url": slack_rx.url, "format": "slack"}]
        async with engine(world, webhooks=hooks) as e:
            results = await run(world, e, 1, 14)
            assert [state for _, state, _ in changes(results)] == ["firing", "resolved"]
            await polled(lambda: len(slack_rx.bodies()) >= 2, 20)
    bodies = json_rx.bodies()
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert bodies[0]["alerts"][0]["labels"]["target"] == "ns-res"
    assert bodies[0]["version"] == "4"
    texts = [b["text"] for b in slack_rx.bodies()]
    assert len(texts) == 2 and "FIRING" in texts[0] and "RESOLVED" in texts[1]
    assert "eu: ns-res latency" in texts[0]
    assert slack_rx.attempts == 4


INVALID = sorted(DATA.glob("invalid-*.yaml"))


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_a_bad_rule_config_is_one_line_naming_the_key(path: Path) -> None:
    """Each bad alerts section gives exactly the error its first line expects."""
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ").format(file=path)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == expect


def test_alerts_check_names_a_bad_rule_config_and_exits_2() -> None:
    """`popwatch-collector alerts check` with a bad rule: the same one line, status 2."""
    path = DATA / "invalid-factor.yaml"
    out = subprocess.run(
        [COLLECTOR, "alerts", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("POPWATCH_")},
    )
    assert out.returncode == 2
    assert (
        out.stderr
        == f"popwatch-collector: {path}: alerts.rules.latency.factor: expected a number > 1, "
        "got 0.5\n"
    )


def test_the_variables_set_the_section() -> None:
    """POPWATCH_ALERTMANAGER_URL and POPWATCH_ALERTS_<KEY> set the section's keys, and a
    bad one is named as the variable."""
    cfg = load_alerts(
        {"resend_s": 30},
        env={
            "POPWATCH_ALERTMANAGER_URL": "http://am:9093",
            "POPWATCH_ALERTS_ENABLED": "1",
            "POPWATCH_ALERTS_FOR_S": "90",
        },
    )
    assert (cfg.alertmanager_url, cfg.enabled, cfg.for_s, cfg.resend_s) == (
        "http://am:9093",
        True,
        90,
        30,
    )
    with pytest.raises(
        ConfigError,
        match=r"^POPWATCH_ALERTS_QUORUM: expected an integer from 1 to 1000, got 'two'$",
    ):
        load_alerts({}, env={"POPWATCH_ALERTS_QUORUM": "two"})
    assert load_alerts(None) == AlertsConfig()


async def test_alerts_check_prints_what_fires_with_value_baseline_and_probes(
    world: World, tmp_path: Path
) -> None:
    """`alerts check --at T` over data where eu is slow on ns-uni: one line with the
    alert, its value, baseline and probes, and status 1; an hour earlier, nothing
    fires and the status is 0. Nothing is written."""
    eu = {p for p, r in PROBES.items() if r == "eu"}
    world.overrides.append(slow(5, eu, {"ns-uni"}, world.t0 - 100))
    await world.seed()
    conf = tmp_path / "collector.yaml"
    conf.write_text(
        f"influxdb_url: {world.influx.url}\ninfluxdb_api: v1\ninfluxdb_bucket: {world.db}\n"
        "alerts:\n  enabled: true\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPWATCH_")}

    def check(at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COLLECTOR, "alerts", "check", "--config", str(conf), "--at", str(at)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    out = await asyncio.to_thread(check, world.t0)
    assert out.returncode == 1, out.stderr
    assert out.stdout.splitlines() == [
        "would fire: latency (critical) region=eu target=ns-uni topology=unicast "
        "value=65.0 ms baseline=13.0 ms (median of the previous 24 h) "
        "probes=eu-1, eu-2, eu-3 (3 of 3): eu: ns-uni latency 65.0 ms, 5.0x its baseline "
        "13.0 ms (line 33.0 ms), seen by eu-1, eu-2, eu-3 (3 of 3 probes)"
    ]
    calm = await asyncio.to_thread(check, world.t0 - 3600)
    assert (calm.returncode, calm.stdout) == (0, ""), calm.stderr
    for measurement in ("alert", "rollup_5m", "event"):
        q = f"SELECT * FROM {measurement} WHERE time > 0"  # noqa: S608 - our own names
        assert world.influx.query(q, db=world.db) == []


#: buckets of the seeded day (24 h at 5-minute spacing) that the late history fills
BASELINE_BUCKETS_SEEDED = 200


def assert_baselines_are_influxdbs(world: World, e: Engine, lo: int, hi: int) -> None:
    """Every series' baseline over buckets [lo, hi) is InfluxDB's own median of its
    rows in rollup_5m."""
    span = f"kind != 'done' AND time >= {lo * 300}s AND time < {hi * 300}s"
    rows = world.influx.query(
        f"SELECT median(p50) FROM rollup_5m WHERE {span} GROUP BY kind, probe, target, site",  # noqa: S608
        db=world.db,
    )
    assert len(rows) == len(PROBES) * len(TARGETS)
    for r in rows:
        key = (r["kind"], r["probe"], r["target"], r.get("site") or "")
        mine = e.rollups.baseline(key, lo, hi)
        assert mine is not None and mine.p50 == r["median"], (key, mine, r["median"])


async def test_the_baselines_are_influxdbs_medians_of_the_rollup(world: World) -> None:
    """The engine's in-memory baseline of every series equals InfluxDB's own median of
    that series' rows in rollup_5m over the same buckets (history with jitter, so the
    medians are not trivially equal)."""

    def jitter(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        wobble = ((ts // NS * 7919 + hash(probe + target)) % 1000) / 1000
        return normal(probe, target, ts, rtt_ms=base_ms(probe, target) * (1 + wobble))

    world.overrides.append(jitter)
    await world.seed()
    at = world.t0 * NS
    async with engine(world) as e:
        await e.step(at)
        lo, hi = e._baseline_span(at)
        assert_baselines_are_influxdbs(world, e, lo, hi)


async def test_history_that_arrives_late_reaches_the_baselines(world: World) -> None:
    """An engine evaluates before any history is there (the day's buckets rolled up
    empty); then the day arrives (a probe's spool replaying, an import). At the next
    bucket the engine rolls up again the buckets that gained points: every series'
    baseline is then InfluxDB's own median of its rows (it stayed None: the empty
    buckets were done for good)."""
    at = world.t0 * NS
    async with engine(world) as e:
        await e.step(at)
        lo, hi = e._baseline_span(at + 300 * NS)
        key = ("dns", "eu-1", "ns-uni", "")
        assert e.rollups.baseline(key, lo, hi) is None
        await world.seed()
        await e.step(at + 300 * NS)  # a new bucket: the day is counted again
        assert e.rollups.redone >= BASELINE_BUCKETS_SEEDED
        assert_baselines_are_influxdbs(world, e, lo, hi)


class Live:
    """`popwatch-collector run` with the alert engine on: evaluating every second,
    re-sending every 2 s (so endsAt is 8 s ahead), over the world's database."""

    def __init__(self, world: World, am: Alertmanager) -> None:
        self.world = world
        world.collector.env.update(
            POPWATCH_ALERTS_ENABLED="1",
            POPWATCH_ALERTS_EVALUATE_EVERY_S="1",
            POPWATCH_ALERTS_RESEND_S="2",
            POPWATCH_ALERTS_FOR_S="1",
            POPWATCH_ALERTS_KEEP_FIRING_FOR_S="2",
            POPWATCH_ALERTMANAGER_URL=am.url,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.world.collector.start)


async def _live_incident(
    world: World, am: Alertmanager, rx: Receiver
) -> tuple[Live, dict[str, Any]]:
    """History up to now, eu slow on ns-uni for its last three samples; the collector
    restarted with alerts on; the firing notification that arrives."""
    now = int(time.time())
    eu = {p for p, r in PROBES.items() if r == "eu"}
    world.overrides.append(slow(5, eu, {"ns-uni"}, now - 100))
    await world.seed(now)
    await asyncio.to_thread(world.collector.stop)
    live = Live(world, am)
    await live.start()
    alerts = await arrived(rx, lambda a: bool(of(a, "firing")), within=30)
    firing = of(alerts, "firing")
    assert [a["labels"] for a in firing] == [
        {
            "alertname": "latency",
            "severity": "critical",
            "region": "eu",
            "target": "ns-uni",
            "topology": "unicast",
        }
    ], alerts
    return live, firing[0]


def instant(rfc3339: str) -> datetime:
    """An RFC 3339 time as Alertmanager writes it (trailing zeros of the fraction or not)."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))


async def test_a_restart_mid_incident_sends_no_second_alert_and_still_resolves(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """The collector evaluating alerts is SIGKILLed while an alert fires, and started
    again: it takes the alert back from the `alert` measurement (same startsAt, no
    second firing notification, no second firing row), and when eu recovers the
    resolution arrives."""
    live, first = await _live_incident(world, alertmanager, receiver)
    await asyncio.to_thread(world.collector.kill)
    await live.start()
    await asyncio.sleep(4)  # several evaluations and re-sends of the restarted engine
    held = [a for a in alertmanager.alerts() if a["labels"].get("alertname") == "latency"]
    # the same instant (Alertmanager's API writes 18.010Z where its webhook writes 18.01Z)
    assert [instant(a["startsAt"]) for a in held] == [instant(first["startsAt"])]
    now = time.time_ns()
    for probe in (p for p, r in PROBES.items() if r == "eu"):  # recovery: many good samples
        await world.post(probe, [normal(probe, "ns-uni", now - i * 50_000_000) for i in range(20)])
    alerts = await arrived(receiver, lambda a: bool(of(a, "resolved")), within=30)
    assert len(of(alerts, "firing")) == 1
    assert len(of(alerts, "resolved", alertname="latency", region="eu")) == 1
    rows = alert_rows(world)
    assert [r["state"] for r in rows] == ["firing", "resolved"]


async def test_when_the_engine_dies_alertmanager_resolves_by_itself(
    world: World, alertmanager: Alertmanager, receiver: Receiver
) -> None:
    """The collector evaluating alerts is SIGKILLed for good while an alert fires:
    Alertmanager resolves it by itself once the last endsAt it was sent (at most 8 s
    ahead) has passed."""
    await _live_incident(world, alertmanager, receiver)
    killed = time.time()
    await asyncio.to_thread(world.collector.kill)
    alerts = await arrived(receiver, lambda a: bool(of(a, "resolved")), within=30)
    resolved = of(alerts, "resolved")
    assert len(resolved) == 1, alerts
    ends = resolved[0]["endsAt"]
    ends_s = time.mktime(time.strptime(ends[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert killed - 1 < ends_s <= killed + 8 + 1
    assert resolved[0]["_at"] >= ends_s - 0.5


def readme_queries() -> list[str]:
    """The InfluxQL of the README's "Alerts" section (its `- \\`SELECT ...\\`` items)."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `(SELECT [^`]+)`", section, re.MULTILINE)


async def test_the_readme_alerts_queries_run_against_what_the_engine_wrote(
    world: World,
) -> None:
    """Each query the README shows for alerts, events and the rollup runs on InfluxDB
    1.6.7 over what the engine wrote in an incident (eu slow on ns-uni, eu's catchment
    moved to ams1), and returns rows."""
    queries = readme_queries()
    assert len(queries) == 3
    await world.seed()
    eu = {p for p, r in PROBES.items() if r == "eu"}
    world.overrides.append(slow(5, eu, {"ns-uni"}, world.t0))
    world.overrides.append(
        lambda probe, target, ts: (
            normal(probe, target, ts, site="ams1")
            if probe in eu and target == "ns-any" and ts >= world.t0 * NS
            else None
        )
    )
    async with engine(world) as e:
        await run(world, e, 1, 5)
    for q in queries:
        assert world.influx.query(q, db=world.db), q

"""Whatever one probe sends, the others' data and alerts stay whole.

A probe is a box in somebody else's rack: its token can leak and its DNS server can lie.
Each attack here runs against real processes (a collector, InfluxDB 1.6.7 with its
limits lowered so that a test fills them in seconds, the alert engine over the same
InfluxDB), and each assertion is one that failed before its fix.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY
from support.influx import InfluxDB
from test_alerts import (
    NS,
    PROBES,
    SERIAL,
    STEP_S,
    TARGETS,
    World,
    normal,
    slow,
    timeout,
)
from test_collector import auth, dns_record
from test_hostile import COLLECTOR, Served, _count, _db, register

from collector.alerts.anycast import MAX_SERIAL_EVENTS
from collector.alerts.config import load_alerts
from collector.alerts.engine import Engine
from collector.alerts.rules.regional import MAX_SOLO
from collector.store.influxql import InfluxQL
from collector.store.sink import InfluxV1Sink
from probe.checks.dns import _text

#: InfluxDB's limits, lowered: a burst fills them in seconds
MAX_VALUES = 300


@pytest.fixture(scope="module")
def small_influx() -> Iterator[InfluxDB]:
    """An InfluxDB whose max-values-per-tag is MAX_VALUES (its default is 100,000)."""
    with InfluxDB(data=f"  max-values-per-tag = {MAX_VALUES}\n") as i:
        yield i.start()


def readyz(c: Served) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{c.admin_url}/readyz", timeout=10) as r:
            body: dict[str, Any] = json.load(r)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return body


def metric(c: Served, name: str) -> float:
    """A sample of the collector's /metrics, summed over its labels."""
    with urllib.request.urlopen(f"{c.admin_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def post(
    s: aiohttp.ClientSession, c: Served, token: str, records: list[dict[str, Any]]
) -> dict[str, Any]:
    body = {"schema": 1, "batch": str(uuid.uuid4()), "sent_at": time.time_ns()}
    body["measurements"] = records  # type: ignore[assignment]
    async with s.post(f"{c.url}/api/v1/measurements", json=body, headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


def invented(n: int, base: int, tag: str) -> list[dict[str, Any]]:
    """``n`` records, each with a target and a site never seen before."""
    return [
        dns_record(ts=base + i, target=f"{tag}-{i}", site=f"{tag}-site-{i}", topology="anycast")
        for i in range(n)
    ]


# --- the store --------------------------------------------------------------------------


async def test_a_cardinality_burst_leaves_room_for_everyone(
    small_influx: InfluxDB, tmp_path: Path
) -> None:
    """One probe posts 5 batches of 2,000 records, each with a new target and site (was:
    all accepted, InfluxDB's max-values-per-tag filled, and every honest probe's new
    target refused for a week). Now the probe's budget of new series rejects what is
    past it, with that reason; an honest probe's brand-new target is stored; /readyz
    stays ready; the collector's memory stays bounded."""
    data, db = tmp_path / "c", _db()
    tokens = register(data, {"attacker": "eu", "honest": "us"})
    base = time.time_ns() - 600 * NS
    env = {"POPWATCH_LIMITS_NEW_SERIES_BURST": "100", "POPWATCH_LIMITS_NEW_SERIES_PER_HOUR": "10"}
    with Served(small_influx, data, db, **env) as c:
        async with aiohttp.ClientSession() as s:
            answers = [
                await post(s, c, tokens["attacker"], invented(2000, base + k * 10_000, f"a{k}"))
                for k in range(5)
            ]
            honest = await post(
                s, c, tokens["honest"], [dns_record(ts=base + 99, target="brand-new-target")]
            )
        accepted = sum(a["accepted"] for a in answers)
        reasons = {r["error"] for a in answers for r in a["rejected"]}
        ready = readyz(c)
        rss = c.peak_rss_mb()
        stored = _count(small_influx, db, "honest")
    assert accepted <= 100 // 2 + 1, accepted  # two new values (target, site) a record
    assert all(r.startswith("over this probe's budget of new series") for r in reasons), reasons
    assert honest == {"accepted": 1, "rejected": [], "duplicate": False}
    assert stored == 1
    assert ready["ready"] and ready["problems"] == [] and ready["warnings"] == []
    assert rss < 150, rss


async def test_refused_lines_and_influxdbs_limits_show_in_readyz(
    small_influx: InfluxDB, tmp_path: Path
) -> None:
    """With a budget that lets them through, new tag values past InfluxDB's own limit
    are refused by InfluxDB: /readyz names it in its warnings (was: ready, no problems),
    the refusals are counted by cause, and InfluxDB's estimate past 80 % of its
    max-values-per-tag is a warning before that."""
    data, db = tmp_path / "c", _db()
    tokens = register(data, {"p": "eu"})
    base = time.time_ns() - 600 * NS
    env = {"POPWATCH_INFLUXDB_MAX_VALUES_PER_TAG": str(MAX_VALUES)}
    with Served(small_influx, data, db, **env) as c:
        async with aiohttp.ClientSession() as s:
            for k in range(4):
                await post(s, c, tokens["p"], invented(100, base + k * 1000, f"r{k}"))
        warnings: list[str] = []
        for _ in range(40):  # the headroom check runs every 15 s
            warnings = readyz(c)["warnings"]
            if any("values of tag" in w for w in warnings) and any(
                "refused" in w for w in warnings
            ):
                break
            await asyncio.sleep(1)
        refused = metric(c, 'popwatch_collector_points_refused_total{reason="max-values-per-tag"}')
    assert any("InfluxDB refused" in w and "max-values-per-tag" in w for w in warnings), warnings
    assert any("of its max-values-per-tag" in w for w in warnings), warnings
    assert refused > 0


async def test_a_large_targets_file_does_not_stall_ingest(influx: InfluxDB, tmp_path: Path) -> None:
    """A 40,000-target file (over 5 MB) served, and a probe fetching it while another
    posts: the post is answered at once (was: 25.8 s, the whole parse on the event
    loop), and the fetch gets the list."""
    data, db = tmp_path / "c", _db()
    tokens = register(data, {"p": "eu", "q": "us"})
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        + "".join(
            f"  - {{name: t{i}, topology: anycast, server: 192.0.2.{i % 250 + 1}, "
            f"queries: [{{qname: example.com}}]}}\n"
            for i in range(40_000)
        )
    )
    assert targets.stat().st_size > 3_000_000
    # loading 40,000 targets at start is not what is timed here: it may take its time
    with Served(influx, data, db, start_s=120, POPWATCH_TARGETS=str(targets)) as c:
        targets.write_text(
            targets.read_text() + "  - {name: last, topology: anycast, "
            "server: 192.0.2.1, queries: [{qname: example.com}]}\n"
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:

            async def fetch() -> int:
                async with s.get(f"{c.url}/api/v1/config", headers=auth(tokens["q"])) as r:
                    return len((await r.json())["targets"])

            async def honest() -> float:
                await asyncio.sleep(0.3)  # the fetch's parse is under way
                t0 = time.monotonic()
                await post(s, c, tokens["p"], [dns_record(ts=time.time_ns() - NS)])
                return time.monotonic() - t0

            served, took = await asyncio.gather(fetch(), honest())
    assert served in (40_000, 40_001)
    assert took < 2.0, took


# --- the collector's listeners ----------------------------------------------------------


async def test_the_admin_listener_checks_host_caps_connections_and_caches(
    influx: InfluxDB, tmp_path: Path
) -> None:
    """The admin listener refuses a Host that could be a rebinding name (421), takes a
    one-label name, an address and localhost; holds at most its cap of connections
    from one address (64; was: 5,800 idle ones sharing the public port's descriptors);
    and answers 300 concurrent status requests from one gathering (was: 503s with an
    empty reason, and ingest slowed 8 times)."""
    data, db = tmp_path / "c", _db()
    register(data, {"p": "eu"})
    with Served(influx, data, db) as c:
        # fewer connections than the admin listener lets one address hold
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as s:

            async def status_for(host: str) -> int:
                async with s.get(f"{c.admin_url}/readyz", headers={"Host": host}) as r:
                    return r.status

            hosts = {
                h: await status_for(h)
                for h in (
                    "evil.example",
                    "evil.example:8081",
                    f"127.0.0.1:{c.admin_port}",
                    "localhost",
                    "collector",
                    "popwatch.popwatch.svc",
                )
            }
            before = metric(c, 'popwatch_collector_query_seconds_count{client="status"}')
            results = await asyncio.gather(
                *(s.get(f"{c.admin_url}/api/v1/status") for _ in range(300))
            )
            codes = {r.status for r in results}
            bodies = [await r.json() for r in results]
            for r in results:
                r.release()
            after = metric(c, 'popwatch_collector_query_seconds_count{client="status"}')
        idle = [
            await asyncio.open_connection("127.0.0.1", c.admin_port, local_addr=("127.0.0.9", 0))
            for _ in range(80)
        ]
        refused = 0
        for r, _ in idle[64:]:
            answer = await asyncio.wait_for(r.read(200), 5)
            refused += answer.startswith(b"HTTP/1.1 503")
        for _, w in idle:
            w.close()
    assert hosts == {
        "evil.example": 421,
        "evil.example:8081": 421,
        f"127.0.0.1:{c.admin_port}": 200,
        "localhost": 200,
        "collector": 200,
        "popwatch.popwatch.svc": 200,
    }
    assert codes == {200} and all("probes" in b for b in bodies)
    assert after - before <= 20  # one gathering (a query per section), not 300
    assert refused == 16


def _short_cert(directory: Path, days: int) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that expires in ``days``."""
    cert, key = directory / "c.crt", directory / "c.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(days),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_a_certificate_about_to_expire_is_warned_of(influx: InfluxDB, tmp_path: Path) -> None:
    """A serving certificate with 3 days left: a warning at start, and in /readyz's
    warnings (was: nothing until probes refused it). certs init refuses an address
    with a zone id in one line (was: passed, then failed inside openssl)."""
    data, db = tmp_path / "c", _db()
    register(data, {"p": "eu"})
    cert, key = _short_cert(tmp_path, 3)
    c = Served(influx, data, db, POPWATCH_TLS_CERT=str(cert), POPWATCH_TLS_KEY=str(key))
    c.scheme = "https"
    c.data.mkdir(parents=True, exist_ok=True)
    with open(c.log, "wb") as err:
        c.proc = subprocess.Popen([COLLECTOR, "run"], env=c.env, stderr=err)
    try:
        for _ in range(100):
            try:
                ready = readyz(c)
                break
            except OSError:
                time.sleep(0.2)
        log = c.stderr()
    finally:
        c.stop()
    assert any("expires in" in w and "days" in w for w in ready["warnings"]), ready
    assert "expires in 2." in log or "expires in 3.0" in log, log
    out = subprocess.run(
        [COLLECTOR, "certs", "init", "--dir", str(tmp_path / "certs"), "--name", "fe80::1%eth0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "has a zone (%eth0)" in out.stderr and "Traceback" not in out.stderr


async def test_an_nsid_ending_in_a_backslash_is_stored(influx: InfluxDB, tmp_path: Path) -> None:
    """A DNS server whose NSID ends in a backslash (or has one before a comma): the probe
    writes those backslashes as \\x5c, and the collector stores the measurement (was:
    every measurement of that server rejected, the target gone from the status page)."""
    data, db = tmp_path / "c", _db()
    tokens = register(data, {"p": "eu"})
    sites = [_text(b"site\\"), _text(b"a\\,b"), _text(b"plain\\backslash")]
    assert sites == ["site\\x5c", "a\\x5c,b", "plain\\backslash"]
    base = time.time_ns() - 60 * NS
    with Served(influx, data, db) as c:
        async with aiohttp.ClientSession() as s:
            answer = await post(
                s, c, tokens["p"], [dns_record(ts=base + i, site=v) for i, v in enumerate(sites)]
            )
    assert answer == {"accepted": 3, "rejected": [], "duplicate": False}
    rows = influx.query("SELECT rtt_ms, site FROM dns", db=db)
    assert sorted(r["site"] for r in rows) == sorted(sites)


# --- the alert engine -------------------------------------------------------------------


@pytest.fixture
async def world(influx: InfluxDB, tmp_path: Path) -> AsyncIterator[World]:
    async with World(influx, tmp_path) as w:
        await w.seed()
        yield w


async def queries_of(e: Engine, at: int) -> tuple[int, Any]:
    """How many InfluxQL queries one evaluation at ``at`` sent, and its result."""
    name, labels = "popwatch_collector_query_seconds_count", {"client": "alerts"}
    before = REGISTRY.get_sample_value(name, labels) or 0
    result = await e.step(at)
    return int((REGISTRY.get_sample_value(name, labels) or 0) - before), result


def engine_for(world: World, **alerts: Any) -> Any:
    """An engine over the world's database that knows the registry (each probe's
    region) and serves nothing (every target is a probe's own)."""

    class _Engine:
        async def __aenter__(self) -> Engine:
            cfg = load_alerts({"evaluate_every_s": STEP_S, **alerts})
            self.influx = InfluxQL(world.influx.url, world.db)
            self.sink = InfluxV1Sink(world.influx.url, world.db)
            await self.sink.start()
            self.e = Engine(
                cfg, self.influx, self.sink, (), registered=lambda: dict(PROBES), served=set
            )
            return self.e

        async def __aexit__(self, *exc: object) -> None:
            await self.e.close()
            await self.sink.close()
            await self.influx.close()

    return _Engine()


async def test_invented_targets_raise_no_regional_alerts_and_few_of_any(world: World) -> None:
    """eu-1 reports TIMEOUTs for 200 targets nobody else measures (was: 200 regional
    `errors` warnings for eu within 10 s): the quorum counts eu's three registered
    probes, so none is regional; with probe_warnings, at most MAX_SOLO per evaluation."""
    at = world.t0 + STEP_S
    ts = (at - 15) * NS
    records = []
    for i in range(200):  # three timeouts each: past min_failures, and an onset
        for j in range(3):
            r = timeout("eu-1", "ns-uni", ts - (i * 3 + j) * 1_000_000)
            r["target"] = f"invented-{i}"
            records.append(r)
    await world.post("eu-1", records)
    await world.tick(at)
    async with engine_for(world, probe_warnings=True, for_s=0) as e:
        result = await e.step(at * NS)
    errors = [c for c in result.conditions if c.rule == "errors"]
    assert [c for c in errors if not c.label("probe")] == []
    assert len(errors) <= MAX_SOLO
    assert all(c.label("probe") == "eu-1" for c in errors)


async def test_a_lying_probe_cannot_blame_an_honest_site(world: World) -> None:
    """eu-1 alone reports a newer SOA serial from an invented site on ns-any, which
    every probe measures (was: a global propagation alert blaming the honest sites, with
    no quorum): the newest serial needs a quorum of the probes that measure it, so no
    propagation alert fires in ten minutes."""

    def lie(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        if probe == "eu-1" and target == "ns-any":
            return normal(probe, target, ts, serial=SERIAL + 7, site="invented")
        return None

    world.overrides.append(lie)
    fired = []
    async with engine_for(world, rules={"propagation": {"max_serial_lag_s": 60}}) as e:
        for k in range(1, 21):
            at = world.t0 + k * STEP_S
            await world.tick(at)
            result = await e.step(at * NS)
            fired += [c for c in result.conditions if c.rule == "propagation"]
    assert fired == []


async def test_a_serial_storm_costs_the_engine_nothing_extra(world: World) -> None:
    """20,000 ns-any records from one probe, alternating sites, each with a new serial,
    in one batch (was: 101 s for the next evaluation, one query per serial change): the
    evaluation sends as many queries as a calm one, writes at most MAX_SERIAL_EVENTS
    serial events for the target, and the engine keeps a bounded memory of serials."""
    async with engine_for(world) as e:
        at = world.t0 + STEP_S
        await world.tick(at)
        await e.step(at * NS)  # the first one also starts the engine
        at += STEP_S
        await world.tick(at)
        calm, _ = await queries_of(e, at * NS)
        at += STEP_S
        base = (at - 25) * NS
        storm = [
            normal(
                "eu-1",
                "ns-any",
                base + i * 1000,
                serial=SERIAL + 1 + i,
                site=("fra1", "nyc1")[i % 2],
            )
            for i in range(20_000)
        ]
        for k in range(0, len(storm), 2000):  # bodies under 1 MB (aiohttp warns past it)
            await world.post("eu-1", storm[k : k + 2000])
        await world.tick(at)
        t0 = time.monotonic()
        stormy, result = await queries_of(e, at * NS)
        took = time.monotonic() - t0
    serial_events = [ev for ev in result.events if ev.kind == "serial"]
    assert stormy <= calm + 1, (calm, stormy)
    assert len(serial_events) <= MAX_SERIAL_EVENTS
    assert len(e.serials.first_seen) <= 64 * len(TARGETS)
    assert took < 30, took


async def test_an_honest_regions_alert_fires_while_a_probe_attacks(world: World) -> None:
    """us's three probes become 5 times slower on ns-uni while eu-1 invents targets and
    lies about serials every evaluation: us's regional latency alert fires as it does
    without the attack (by the fourth evaluation), and nothing fires for eu."""
    world.overrides.append(
        slow(5, {p for p, r in PROBES.items() if r == "us"}, {"ns-uni"}, world.t0)
    )

    def lie(probe: str, target: str, ts: int) -> dict[str, Any] | None:
        if probe == "eu-1" and target == "ns-any":
            return normal(probe, target, ts, serial=SERIAL + 9, site="invented")
        return None

    world.overrides.append(lie)
    fired: list[tuple[int, dict[str, str]]] = []
    async with engine_for(world, for_s=STEP_S) as e:
        for k in range(1, 7):
            at = world.t0 + k * STEP_S
            ts = (at - 15) * NS
            junk = [
                {**timeout("eu-1", "ns-uni", ts - i), "target": f"junk-{k}-{i}"} for i in range(300)
            ]
            await world.post("eu-1", junk)
            await world.tick(at)
            result = await e.step(at * NS)
            fired += [(k, dict(c.alert.labels)) for c in result.changes if c.state == "firing"]
    regional = [(k, lab) for k, lab in fired if not lab.get("probe")]
    assert [(lab["alertname"], lab["region"], lab["target"]) for _, lab in regional] == [
        ("latency", "us", "ns-uni")
    ]
    assert regional[0][0] <= 4
    assert [lab for _, lab in fired if lab.get("region") == "eu"] == []

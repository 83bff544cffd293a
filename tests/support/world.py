"""A small popwatch world for the dashboards and the status page: real probes in two
regions, shipping through a real collector into a real InfluxDB 1.6.7, measuring real
Knot servers (two anycast sites with their own NSIDs and a unicast server), a web page
over HTTPS, pings, plus an alert and event history written in the schema's shape.

``World.run`` gathers a few seconds of data; the tests then read what InfluxDB holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from collector.alerts import inflation
from collector.alerts.inflation import Sites
from collector.store.influxql import InfluxQL
from probe.targets import Site
from support import servers, web
from support.influx import InfluxDB
from support.procs import PROBE, Collector, probe_env, register

DB = "popwatch"


@dataclass(frozen=True)
class Probe:
    id: str
    region: str
    country: str
    lat: float
    lon: float
    site: str  # the anycast site (Knot) this probe's catchment reaches


PROBES = (
    Probe("p-par-1", "eu-west", "FR", 48.86, 2.35, "pop-fra1"),
    Probe("p-fra-1", "eu-west", "DE", 50.11, 8.68, "pop-iad1"),
    Probe("p-iad-1", "us-east", "US", 38.9, -77.04, "pop-iad1"),
)
SITES = ("pop-fra1", "pop-iad1")
#: where the sites are (Frankfurt, Ashburn): p-fra-1, served by pop-iad1, is inflated
SITE_PLACES = {"pop-fra1": (50.11, 8.68), "pop-iad1": (39.04, -77.49)}
QNAMES = ("example.test", "www.example.test", "nope.example.test")


def _bump_serial(knot: servers.Knot) -> None:
    """Serve the next serial at this site (the other site lags behind it)."""
    zone = knot.dir / "example.test.zone"
    zone.write_text(zone.read_text().replace(str(servers.SERIAL), str(servers.SERIAL + 1)))
    subprocess.run(
        ["knotc", "-s", str(knot.dir / "knot.sock"), "zone-reload", "example.test."],
        check=True,
        capture_output=True,
    )


@dataclass
class World:
    tmp: Path
    influx: InfluxDB = field(default_factory=InfluxDB)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    start_ns: int = 0
    end_ns: int = 0

    def run(self, seconds: float = 4.0) -> World:
        s = self.stack
        s.enter_context(self.influx).start()
        lab = s.enter_context(web.WebLab()).start()
        record = f"web A {lab.address}\n"
        knots = {
            site: s.enter_context(servers.Knot(site, f"id-{site}")).start(record) for site in SITES
        }
        _bump_serial(knots["pop-iad1"])
        unicast = s.enter_context(servers.Knot("uni-ams1", "id-uni-ams1")).start(record)
        dead = servers.free_port()  # nothing listens: every query there fails
        data = self.tmp / "collector"
        tokens: dict[str, str] = {}
        for p in PROBES:
            flags = ("--country", p.country, "--lat", str(p.lat), "--lon", str(p.lon))
            tokens |= register(data, {p.id: p.region}, *flags)
        self.collector = Collector(self.influx, data, DB)
        self.collector.start()
        s.callback(self.collector.stop)
        self.start_ns = time.time_ns()
        procs = []
        for p in PROBES:
            targets = self.tmp / f"{p.id}-targets.yaml"
            queries = ", ".join(
                f"{{qname: {q}, qtype: {'SOA' if q == 'example.test' else 'A'}}}" for q in QNAMES
            )
            dns = "interval: 1, timeout: 0.5, ping: tcp, queries: [" + queries + "]"
            url = lab.url(host="web.example.test")
            http = (
                f"kind: http, topology: anycast, provider: acme, resolver: "
                f"'127.0.0.1:{knots[p.site].port}', family: 4, tls_ca: {lab.cert}, "
                "interval: 1, timeout: 0.9"
            )
            sites = ", ".join(
                f"{{id: {site}, unicast: [127.0.0.1], port: {knots[site].port}, "
                f"lat: {SITE_PLACES[site][0]}, lon: {SITE_PLACES[site][1]}}}"
                for site in SITES
            )
            targets.write_text(
                "targets:\n"
                f"  - {{name: ns-anycast, topology: anycast, provider: acme, server: 127.0.0.1, "
                f"port: {knots[p.site].port}, sites: [{sites}], site_every: 1, {dns}, "
                "trace: {every: 1, max_hops: 2, queries_per_hop: 2, hop_timeout_s: 0.2}}\n"
                f"  - {{name: ns-unicast, topology: unicast, provider: solo, server: 127.0.0.1, "
                f"port: {unicast.port}, {dns}}}\n"
                f"  - {{name: ns-dead, topology: unicast, provider: solo, server: 127.0.0.1, "
                f"port: {dead}, interval: 1, timeout: 0.5, queries: [{{qname: example.test}}]}}\n"
                f"  - {{name: www, url: '{url}', {http}}}\n"
                f"  - {{name: www-missing, url: '{lab.url(host='web.example.test', status=404)}', "
                f"{http}}}\n"
            )
            conf = self.tmp / f"{p.id}.yaml"
            conf.write_text(f"id: {p.id}\nbatch_s: 0.5\nheartbeat_s: 1\n")
            env = probe_env(self.collector, tokens[p.id], self.tmp / p.id, targets)
            procs.append(
                subprocess.Popen(
                    [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.DEVNULL
                )
            )
        try:
            time.sleep(seconds)
            deadline = time.monotonic() + 30
            while not self._enough() and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(20)
        self.end_ns = time.time_ns()
        self.seed_history()
        self.figure_inflation()
        return self

    def figure_inflation(self) -> None:
        """The alert engine's inflation figures over the run (its own code, on what the
        probes measured), written as the engine writes them."""
        sites = {
            "ns-anycast": Sites(
                tuple(
                    Site(id=s, unicast=["127.0.0.1"], lat=SITE_PLACES[s][0], lon=SITE_PLACES[s][1])
                    for s in SITES
                ),
                1.0,
            )
        }

        async def measure() -> list[str]:
            async with InfluxQL(self.influx.url, DB) as influx:
                span = (self.end_ns - self.start_ns) / 1e9 + 1
                figures = await inflation.measure(influx, self.end_ns, sites, span, 1)
            return [f.to_line() for f in figures]

        self.write(asyncio.run(measure()))

    def _enough(self) -> bool:
        """Every probe has shipped heartbeats, DNS, HTTP, ping and trace records."""
        for m in ("dns", "http", "ping", "trace", "probe"):
            try:
                rows = self.influx.query(f'SELECT count(*) FROM "{m}" GROUP BY "probe"', db=DB)  # noqa: S608
            except RuntimeError:
                return False
            if len(rows) < len(PROBES):
                return False
        return True

    def write(self, lines: list[str]) -> None:
        """Line protocol straight into InfluxDB, as the alert engine writes."""
        body = "\n".join(lines).encode()
        query = urllib.parse.urlencode({"db": DB, "precision": "ns"})
        req = urllib.request.Request(f"{self.influx.url}/write?{query}", data=body)
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 204

    def seed_history(self) -> None:
        """An alert and event history in the shape the alert engine writes (a regional
        alert has a topology and no probe; a probe alert a probe and no target): a latency
        alert firing in eu-west, one fired and resolved in us-east, a sick probe, a
        catchment change, a lagging serial and a path change."""
        t = self.end_ns - 1_000_000_000
        ms = 1_000_000
        self.write(
            [
                "alert,region=eu-west,rule=latency,severity=critical,state=firing,"
                "target=ns-anycast,topology=anycast "
                'value=48.5,baseline=12.25,probes="p-par-1,p-fra-1",'
                'message="eu-west ns-anycast p50 48.5 ms against 12.25 ms (2 probes)" '
                f"{t - 900 * ms}",
                "alert,region=us-east,rule=latency,severity=warning,state=firing,"
                'target=ns-unicast,topology=unicast value=80.0,baseline=30.0,probes="p-iad-1",'
                f'message="us-east ns-unicast p50 80 ms against 30 ms" {t - 800 * ms}',
                "alert,region=us-east,rule=latency,severity=warning,state=resolved,"
                'target=ns-unicast,topology=unicast value=31.0,baseline=30.0,probes="p-iad-1",'
                f'message="us-east ns-unicast recovered" {t - 300 * ms}',
                "alert,probe=p-fra-1,region=eu-west,rule=probe,severity=info,state=firing "
                'value=1.0,baseline=0.6,probes="p-fra-1",'
                f'message="probe p-fra-1 degraded on 3 of 3 targets" {t - 700 * ms}',
                "event,from_site=pop-fra1,kind=catchment,probe=p-fra-1,region=eu-west,"
                "target=ns-anycast,to_site=pop-iad1 outage_ms=1834.5,lost=2i,"
                f'message="p-fra-1 moved from pop-fra1 to pop-iad1" {t - 600 * ms}',
                "event,from_site=pop-iad1,kind=serial,probe=p-par-1,region=eu-west,"
                f"target=ns-anycast,to_site=pop-fra1 serial={servers.SERIAL}i,lag_s=42.0,"
                f'message="pop-fra1 serves {servers.SERIAL}, pop-iad1 {servers.SERIAL + 1}" '
                f"{t - 500 * ms}",
                "event,family=4,from_site=pop-fra1,kind=path,probe=p-fra-1,region=eu-west,"
                'target=ns-anycast,to_site=pop-iad1 from_path="0d3905aa8c3a6344",'
                'to_path="229482f0eae6ffd9",after_hop=1i,grew_ms=70.5,grew_from_hop=2i,'
                'flaps_1h=1i,message="eu-west (p-fra-1, IPv4): path changed after hop 1 '
                '(192.0.2.1); now ends at pop-iad1 (was pop-fra1); +70.5 ms from hop 2" '
                f"{t - 400 * ms}",
            ]
        )

    def close(self) -> None:
        self.stack.close()


def needs_root() -> bool:
    return os.geteuid() != 0

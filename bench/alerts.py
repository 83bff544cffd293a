"""The alert engine: one evaluation cycle at scale, and detection latency end to end.

World: REGIONS x PROBES probes, each measuring TARGETS targets (60 % anycast DNS, 20 %
unicast, 10 % resolver, 10 % HTTP; 4 providers) every INTERVAL s: with the defaults
20 x 5 x 100 = 10,000 series. Real InfluxDB 1.6.7 and a real `popwatch-collector run`.

1. **Cycle.** 24 h of history. By default the baseline history is seeded straight into
   `rollup_5m` (288 five-minute rows per series, as the engine writes them) and only the
   last 30 minutes of raw points go through the collector; `--full` sends all 24 h of
   raw points through the collector instead (14.4 M at the defaults) and lets the engine
   roll them up itself at its first start. Then the engine (in this process, over the
   same InfluxDB) starts, and evaluates again and again: the median cycle, and the share
   of it spent waiting for InfluxDB's answers. Also timed: the start (recovering alerts,
   loading the day of rollups) and a cycle that also rolls up a closed bucket (one in
   ten cycles at 30 s).
2. **Detection.** A second `popwatch-collector run`, with the engine on (defaults:
   window 5 min, `for_s` 30, every 30 s), next to the one the probes send to, and a real
   Alertmanager (group_wait 1 s) whose webhook receiver records arrivals. Simulated
   probes send every INTERVAL s, each at its own phase, from the end of the seeding to
   the end of the run. In each run one region's probes get 5x slower on one target; the
   latency is from the send time of the first slow measurement to the notification's
   arrival at the receiver. Goal: INTERVAL + for_s + 2 x evaluate_every. Any other
   alert that fires meanwhile is printed (there should be none).

    python bench/alerts.py [--regions 20] [--probes 5] [--targets 100] [--interval 60]
                           [--cycles 7] [--detections 3] [--full]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from _common import servers
from support.alertmanager import Alertmanager, Receiver
from support.influx import InfluxDB

from collector.alerts.config import AlertsConfig
from collector.alerts.engine import Engine
from collector.alerts.rollup import BUCKET_S, DELAY_S
from collector.ingest.registry import Registry
from collector.store.influxql import InfluxQL
from collector.store.sink import InfluxV1Sink
from probe.wire import NS

COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")
DB = "bench_alerts"
SERIAL = 2026010100
PROVIDERS = ("alpha", "beta", "gamma", "delta")


class World:
    def __init__(self, regions: int, probes: int, targets: int, interval: int) -> None:
        self.interval = interval
        self.probes = {f"r{r:02d}-p{i}": f"r{r:02d}" for r in range(regions) for i in range(probes)}
        self.targets: dict[str, tuple[str, str, str]] = {}  # name: kind, topology, provider
        for t in range(targets):
            share = t / targets
            kind, topology = (
                ("dns", "anycast")
                if share < 0.6
                else ("dns", "unicast")
                if share < 0.8
                else ("dns", "resolver")
                if share < 0.9
                else ("http", "anycast")
            )
            self.targets[f"t{t:03d}"] = (kind, topology, PROVIDERS[t % len(PROVIDERS)])
        self.tokens: dict[str, str] = {}
        self.slow: set[tuple[str, str]] = set()  # (region, target) made 5x slower
        self.first_slow: dict[tuple[str, str], int] = {}  # its first slow sample's ts
        # each probe's phase in the interval: its samples go out then
        self.phase = {p: random.uniform(0, interval) for p in self.probes}

    def base(self, probe: str, target: str) -> float:
        r, i = int(probe[1:3]), int(probe[-1])
        return 10.0 + (r * 7 + int(target[1:]) * 3) % 80 + i

    def site(self, probe: str) -> str:
        return f"s{int(probe[1:3]) % 8}"

    def record(self, probe: str, target: str, ts: int) -> dict[str, Any]:
        kind, topology, provider = self.targets[target]
        value = self.base(probe, target) * (1 + random.uniform(-0.05, 0.05))
        key = (self.probes[probe], target)
        if key in self.slow:
            value *= 5
            self.first_slow.setdefault(key, ts)
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
            }
        r = {
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
            r["site"] = self.site(probe)
        return r

    def heartbeat(self, ts: int) -> dict[str, Any]:
        return {
            "kind": "probe",
            "ts": ts,
            "version": "bench",
            "uptime_s": 1.0,
            "spool_depth": 0,
            "dropped": 0,
            "rejected": 0,
        }

    def rollup_lines(self, first: int, last: int) -> list[bytes]:
        """rollup_5m rows (and done markers) for buckets [first, last), in bodies."""
        bodies, lines = [], []
        for b in range(first, last):
            ts = b * BUCKET_S * NS
            for probe, region in self.probes.items():
                for target, (kind, topology, provider) in self.targets.items():
                    site = (
                        f",site={self.site(probe)}"
                        if kind == "dns" and topology == "anycast"
                        else ""
                    )
                    p50 = self.base(probe, target) * (1 + random.uniform(-0.05, 0.05))
                    lines.append(
                        f"rollup_5m,kind={kind},probe={probe},provider={provider},region={region}"
                        f"{site},target={target},topology={topology} p50={p50:.3f},n=5i {ts}"
                    )
            lines.append(
                f"rollup_5m,kind=done buckets={len(self.probes) * len(self.targets)}i {ts}"
            )
            if len(lines) > 50_000:
                bodies.append(("\n".join(lines) + "\n").encode())
                lines = []
        if lines:
            bodies.append(("\n".join(lines) + "\n").encode())
        return bodies


class Poster:
    """Posts batches to the collector, each probe with its own token."""

    def __init__(self, url: str, world: World) -> None:
        self.url = f"{url}/api/v1/measurements"
        self.world = world
        self.session = aiohttp.ClientSession()
        self.sem = asyncio.Semaphore(4)

    async def post(self, probe: str, records: list[dict[str, Any]]) -> None:
        for i in range(0, len(records), 5000):
            body = {
                "schema": 1,
                "batch": str(uuid.uuid4()),
                "sent_at": time.time_ns(),
                "measurements": records[i : i + 5000],
            }
            headers = {"Authorization": f"Bearer {self.world.tokens[probe]}"}
            async with self.sem, self.session.post(self.url, json=body, headers=headers) as r:
                answer = await r.json()
                assert r.status == 200, (r.status, str(answer)[:300])
                assert not answer["rejected"], str(answer)[:300]

    async def close(self) -> None:
        await self.session.close()


def start_collector(
    influx: InfluxDB, data: Path, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """``popwatch-collector run`` over ``data``, with ``extra`` variables."""
    port = servers.free_port()
    env = {
        **os.environ,
        "POPWATCH_LISTEN": f"127.0.0.1:{port}",
        "POPWATCH_ADMIN_LISTEN": f"127.0.0.1:{servers.free_port()}",
        "POPWATCH_DATA_DIR": str(data),
        "POPWATCH_INFLUXDB_URL": influx.url,
        "POPWATCH_INFLUXDB_API": "v1",
        "POPWATCH_INFLUXDB_BUCKET": DB,
        "POPWATCH_LOG_LEVEL": "info",
        "POPWATCH_RECORDS_PER_SECOND": "1e9",
        "POPWATCH_BURST_RECORDS": "1e9",
        **extra,
    }
    log = open(data / f"collector-{port}.log", "ab")  # noqa: SIM115 - kept for the process's life
    proc = subprocess.Popen([COLLECTOR, "run"], env=env, stderr=log)
    servers.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(60)


async def seed(world: World, influx: InfluxDB, url: str, full: bool, now: int) -> str:
    """History up to ``now`` (epoch s); what was seeded, in words."""
    interval = world.interval
    raw_from = now - 86400 - 600 if full else now - 1800
    t0 = time.monotonic()
    if not full:
        # the rollup rows for the day before the raw part, straight into InfluxDB
        last = raw_from // BUCKET_S  # buckets before the raw part
        bodies = world.rollup_lines(last - 288 - 2, last)
        async with aiohttp.ClientSession() as session:
            for body in bodies:
                write = f"{influx.url}/write?db={DB}&precision=ns"
                async with session.post(write, data=body) as r:
                    assert r.status == 204, await r.text()
        rolled = time.monotonic() - t0
    poster = Poster(url, world)
    n = 0
    try:
        times = list(range(raw_from, now, interval))
        # a few hours at a time, every probe in parallel
        for k in range(0, len(times), 60):
            chunk = times[k : k + 60]
            jobs = []
            for probe in world.probes:
                recs = []
                for t in chunk:
                    ts = int((t + world.phase[probe] - interval) * NS)
                    recs += [world.record(probe, target, ts) for target in world.targets]
                    recs.append(world.heartbeat(ts))
                n += len(recs)
                jobs.append(poster.post(probe, recs))
            await asyncio.gather(*jobs)
    finally:
        await poster.close()
    took = time.monotonic() - t0
    if full:
        return f"24 h of raw points through the collector: {n:,} records in {took:.0f} s"
    return (
        f"rollup_5m seeded directly for the baseline (290 rows x {len(world.probes) * len(world.targets):,} "
        f"series in {rolled:.0f} s); raw points for the last 30 min through the collector "
        f"({n:,} records)"
    )


async def cycles(world: World, influx: InfluxDB, n: int) -> None:
    cfg = AlertsConfig()
    q = InfluxQL(influx.url, DB, timeout_s=600)
    sink = InfluxV1Sink(influx.url, DB)
    await sink.start()
    try:
        async with Engine(cfg, q, sink) as engine:
            t0 = time.perf_counter()
            at = time.time_ns()
            await engine.start(at)
            start_s = time.perf_counter() - t0
            loaded = len(engine.rollups.rings)
            first = await engine.step(at)
            print(
                f"engine start: {start_s:.1f} s (alerts recovered, rollups of {loaded:,} series "
                f"loaded); first cycle, rolling up the buckets not in rollup_5m yet: "
                f"{first.seconds:.2f} s (InfluxDB {first.influx_seconds:.2f} s)",
                flush=True,
            )
            runs = []
            for _ in range(n):
                r = await engine.step(time.time_ns())
                runs.append(r)
                print(
                    f"  cycle: {r.seconds:.2f} s, InfluxDB {r.influx_seconds:.2f} s "
                    f"({r.influx_seconds / r.seconds:.0%}); {len(r.conditions)} conditions",
                    flush=True,
                )
            with_bucket = []
            for _ in range(max(1, n // 3)):
                newest = (time.time_ns() // NS - DELAY_S) // BUCKET_S - 1
                engine.rollups.done.pop(newest, None)  # as when a bucket has just closed
                with_bucket.append(await engine.step(time.time_ns()))
            med = statistics.median(r.seconds for r in runs)
            share = statistics.median(r.influx_seconds / r.seconds for r in runs)
            medb = statistics.median(r.seconds for r in with_bucket)
            shareb = statistics.median(r.influx_seconds / r.seconds for r in with_bucket)
            print(
                f"CYCLE: median {med:.2f} s over {n} cycles (goal <= 5 s), InfluxDB's share "
                f"{share:.0%}; with a bucket's rollup (1 in 10 cycles): {medb:.2f} s, InfluxDB "
                f"{shareb:.0%}; engine start {start_s:.1f} s",
                flush=True,
            )
    finally:
        await sink.close()
        await q.close()


async def simulate(world: World, url: str, stop_event: asyncio.Event) -> None:
    """Every probe sends its samples every interval, at its own phase, until stopped."""
    poster = Poster(url, world)
    start = time.time()
    sent = dict.fromkeys(world.probes, 0)
    try:
        while not stop_event.is_set():
            now = time.time()
            due = []
            for probe in world.probes:
                k = int((now - start - world.phase[probe]) // world.interval)
                if k >= sent[probe]:
                    sent[probe] = k + 1
                    ts = time.time_ns()
                    due.append(
                        poster.post(
                            probe,
                            [
                                *(world.record(probe, t, ts) for t in world.targets),
                                world.heartbeat(ts),
                            ],
                        )
                    )
            if due:
                await asyncio.gather(*due)
            await asyncio.sleep(0.2)
    finally:
        await poster.close()


async def detection(world: World, influx: InfluxDB, data: Path, runs: int) -> None:
    """A second collector, with the engine on, next to the one the probes send to (any
    number of collectors may serve probes; exactly one evaluates)."""
    cfg = AlertsConfig()
    goal = world.interval + cfg.for_s + 2 * cfg.evaluate_every_s
    evaluator = data / "evaluator"
    evaluator.mkdir()
    shutil.copy(data / "registry.sqlite", evaluator / "registry.sqlite")
    with Receiver() as rx, Alertmanager(rx.url) as am:
        proc, _ = start_collector(
            influx, evaluator, {"POPWATCH_ALERTS_ENABLED": "1", "POPWATCH_ALERTMANAGER_URL": am.url}
        )
        try:
            await asyncio.sleep(max(cfg.evaluate_every_s * 2, 60))  # the engine starts and settles
            regions = sorted(set(world.probes.values()))
            targets = list(world.targets)
            latencies = []
            for run in range(runs):
                key = (
                    regions[(run * 7 + 3) % len(regions)],
                    targets[(run * 13 + 5) % len(targets)],
                )
                world.slow.add(key)
                t0 = time.time()
                arrived = None
                while time.time() - t0 < 600:
                    for at, body in list(rx.received):
                        for a in body.get("alerts", []):
                            lab = a["labels"]
                            if (
                                a["status"] == "firing"
                                and (lab.get("region"), lab.get("target")) == key
                                and lab.get("alertname") == "latency"
                            ):
                                arrived = at
                    if arrived:
                        break
                    await asyncio.sleep(0.5)
                world.slow.discard(key)
                if arrived is None:
                    print(f"  detection run {run + 1}: no alert for {key} within 600 s", flush=True)
                    continue
                lat = arrived - world.first_slow[key] / NS
                latencies.append(lat)
                print(
                    f"  detection run {run + 1}: {key[0]}/{key[1]}: {lat:.1f} s (goal {goal:g} s)",
                    flush=True,
                )
            others = [
                (a["labels"].get("alertname"), a["labels"].get("region"), a["labels"].get("target"))
                for _, body in rx.received
                for a in body.get("alerts", [])
                if a["status"] == "firing"
                and (a["labels"].get("region"), a["labels"].get("target")) not in world.first_slow
            ]
            if latencies:
                print(
                    f"DETECTION: median {statistics.median(latencies):.1f} s over {len(latencies)} runs "
                    f"(runs {' / '.join(f'{x:.1f}' for x in latencies)}); goal <= probe interval "
                    f"{world.interval} s + for_s {cfg.for_s:g} s + 2 x evaluate_every {cfg.evaluate_every_s:g} s "
                    f"= {goal:g} s; other alerts meanwhile: {others or 'none'}",
                    flush=True,
                )
        finally:
            stop(proc)


async def main_async(args: argparse.Namespace) -> None:
    world = World(args.regions, args.probes, args.targets, args.interval)
    print(
        f"{len(world.probes)} probes in {args.regions} regions x {len(world.targets)} targets = "
        f"{len(world.probes) * len(world.targets):,} series, every {args.interval} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d, InfluxDB() as influx:
        influx.start()
        data = Path(d)
        reg = Registry(data / "registry.sqlite")
        world.tokens = {p: reg.add(p, region=r) for p, r in world.probes.items()}
        reg.close()
        influx.query(f'CREATE DATABASE "{DB}"')
        proc, url = start_collector(influx, data, {})
        stop_event = asyncio.Event()
        try:
            how = await seed(world, influx, url, args.full, int(time.time()))
            print(f"seeded: {how}", flush=True)
            # the probes go on sending, through the whole run
            sim = asyncio.create_task(simulate(world, url, stop_event))
            try:
                await cycles(world, influx, args.cycles)
                if args.detections:
                    await detection(world, influx, data, args.detections)
            finally:
                stop_event.set()
                await sim
        finally:
            stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--regions", type=int, default=20)
    p.add_argument("--probes", type=int, default=5, help="per region")
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--interval", type=int, default=60, help="seconds between a probe's samples")
    p.add_argument("--cycles", type=int, default=7)
    p.add_argument("--detections", type=int, default=3, help="detection runs (0: none)")
    p.add_argument("--full", action="store_true", help="24 h of raw points through the collector")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()

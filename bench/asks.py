"""Asks: what idle command long-polls cost a collector, and how fast an ask to 100 probes
comes back.

1. One ``popwatch-collector run`` (InfluxDB 1.6.7 behind it) holds 1,000 idle command
   long-polls (``GET /api/v1/commands?wait_s=25``, each probe's own token and keep-alive
   connection, re-polled as each answer comes, as a probe does): its RSS over its idle
   RSS, and its CPU (user + system over ``--idle-s`` seconds, as a share of one core).
   The clients are this process (aiohttp), not 1,000 probe processes: what is measured is
   the collector.
2. 100 real ``popwatch-probe run`` processes long-poll the same collector; an operator
   asks all of them for one DNS query to a real Knot: the time from the POST to the first
   and to the last result on the ask's stream (``/api/v1/asks/ID/stream``), per run.

Goals: 1,000 idle long-polls <= 50 MB over idle and <= 2 % of a core; the last of 100
results <= 1 s on loopback.

    .venv/bin/python bench/asks.py [--runs 3] [--idle-s 60]
"""

# ruff: noqa: S310 - loopback URLs of the servers this benchmark starts

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import median, servers
from support.influx import InfluxDB
from support.procs import PROBE, Collector

from collector.ingest.registry import Registry

TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def waiting(admin_url: str) -> float:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("popwatch_collector_command_waits "):
                return float(line.split()[1])
    return 0.0


async def idle_polls(url: str, tokens: list[str], stop: asyncio.Event) -> None:
    """One long-poll per token, each on its own connection, re-polled at each answer."""
    import aiohttp

    async def one(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
            while not stop.is_set():
                try:
                    async with s.get(f"{url}/api/v1/commands", params={"wait_s": "25"}) as r:
                        await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(1)

    tasks = [asyncio.create_task(one(t)) for t in tokens]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def bench_idle(influx: InfluxDB, work: Path, idle_s: float) -> tuple[float, float, float]:
    """(idle RSS MB, RSS with 1,000 long-polls MB, CPU share of a core meanwhile)."""
    data = work / "idle"
    reg = Registry(data / "registry.sqlite")
    tokens = [reg.add(f"idle-{i}", "bench") for i in range(1000)]
    reg.close()
    c = Collector(influx, data, "bench_idle")
    c.env["POPWATCH_LIMITS_MAX_CONNECTIONS_PER_ADDRESS"] = "2048"
    c.start()
    try:
        assert c.proc is not None
        time.sleep(5)
        idle = rss_mb(c.proc.pid)

        async def run() -> tuple[float, float]:
            stop = asyncio.Event()
            task = asyncio.create_task(idle_polls(c.url, tokens, stop))
            deadline = time.monotonic() + 60
            while waiting(c.admin_url) < 1000:
                assert time.monotonic() < deadline, "1,000 long-polls did not all wait"
                await asyncio.sleep(0.5)
            await asyncio.sleep(5)
            assert c.proc is not None
            c0, t0 = cpu_s(c.proc.pid), time.monotonic()
            await asyncio.sleep(idle_s)
            share = (cpu_s(c.proc.pid) - c0) / (time.monotonic() - t0)
            held = rss_mb(c.proc.pid)
            stop.set()
            await task
            return held, share

        held, share = asyncio.run(run())
        return idle, held, share
    finally:
        c.stop()


def bench_ask(influx: InfluxDB, work: Path, runs: int) -> list[tuple[float, float, int]]:
    """Per run: (s to the first result, s to the last, results) of an ask to 100 probes."""
    data = work / "hundred"
    reg = Registry(data / "registry.sqlite")
    tokens = {f"p{i:03d}": reg.add(f"p{i:03d}", f"r{i % 10}") for i in range(100)}
    operator = reg.add_operator("bench")
    reg.close()
    c = Collector(influx, data, "bench_ask")
    c.start()
    procs = []
    with servers.Knot("knot-bench", "knot-bench") as knot:
        knot.start()
        try:
            for probe, token in tokens.items():
                conf = work / f"{probe}.yaml"
                conf.write_text(f"id: {probe}\nlog_level: warning\nbatch_s: 1\n")
                env = {
                    **os.environ,
                    "POPWATCH_COLLECTOR_URL": c.url,
                    "POPWATCH_TOKEN": token,
                    "POPWATCH_DATA_DIR": str(work / probe),
                }
                procs.append(
                    subprocess.Popen(
                        [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.DEVNULL
                    )
                )
            deadline = time.monotonic() + 120
            while waiting(c.admin_url) < 100:
                assert time.monotonic() < deadline, "100 probes did not all long-poll"
                time.sleep(0.5)
            time.sleep(3)
            out = []
            for _ in range(runs):
                out.append(one_ask(c.url, operator, knot.port))
                time.sleep(3)  # the probes are back on their long-polls
            return out
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
            c.stop()


def one_ask(url: str, operator: str, port: int) -> tuple[float, float, int]:
    body = {
        "type": "dns",
        "target": "127.0.0.1",
        "options": {"qname": "example.test", "port": port, "nsid": True},
        "limit": 100,
    }
    headers = {"Authorization": f"Bearer {operator}", "Content-Type": "application/json"}
    t0 = time.monotonic()
    req = urllib.request.Request(f"{url}/api/v1/asks", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        made = json.load(r)
    assert len(made["probes"]) == 100, made
    times = []
    sreq = urllib.request.Request(f"{url}{made['location']}/stream", headers=headers)
    with urllib.request.urlopen(sreq, timeout=60) as r:
        for raw in r:
            line = raw.decode()
            if line.startswith("event: result"):
                times.append(time.monotonic() - t0)
            elif line.startswith("event: finished"):
                break
    return times[0], times[-1], len(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, InfluxDB() as influx:
        influx.start()
        work = Path(tmp)
        idle, held, share = bench_idle(influx, work, args.idle_s)
        print(
            f"1,000 idle command long-polls: collector RSS {held:.1f} MB, idle {idle:.1f} MB: "
            f"+{held - idle:.1f} MB (goal <= 50); CPU {share * 100:.2f} % of a core over "
            f"{args.idle_s:g} s (goal <= 2 %)",
            flush=True,
        )
        runs = bench_ask(influx, work, args.runs)
        for first, last, n in runs:
            print(f"ask to 100 probes: {n} results, first {first:.3f} s, last {last:.3f} s")
        print(
            f"ask to 100 probes, median of {len(runs)}: first {median([r[0] for r in runs]):.3f} s, "
            f"last {median([r[1] for r in runs]):.3f} s (goal <= 1 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

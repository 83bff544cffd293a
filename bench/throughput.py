"""How many timed queries/s does one probe process sustain on one core?

The probe runs its real scheduler and runner (``Prober``) with N series at a 1 s interval,
so N queries/s, pinned to one core while Knot gets the other. A rate counts as sustained
when under 0.1% of queries are lost (TIMEOUT), no run is skipped and the schedule keeps up;
at the highest sustained rate a tcpdump capture checks that rtt_ms is still exact.
dnsperf (the peer) then runs against the same Knot in the same run.

    python bench/throughput.py [--rates 2000,4000,6000,8000] [--seconds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
from _common import median, pcap, pct, servers
from accuracy import errors_us

from probe import metrics, net
from probe.config import ProbeConfig, Target
from probe.output import MemorySink
from probe.runner import Prober

QNAME = "www.example.test."


def config(port: int, rate: int) -> ProbeConfig:
    targets = [
        msgspec.convert(
            {
                "name": f"t{i}",
                "topology": "anycast",
                "server": "127.0.0.1",
                "port": port,
                "interval": 1,
                "timeout": 0.5,
                "queries": [{"qname": QNAME, "qtype": "A"}],
            },
            Target,
        )
        for i in range(rate)
    ]
    return ProbeConfig(id="bench", concurrency=4096, targets=targets)


async def drive(cfg: ProbeConfig, seconds: float) -> tuple[MemorySink, float, float]:
    sink = MemorySink()
    prober = Prober(cfg, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(prober.run(stop))
    await asyncio.sleep(1.0)  # warm up: the first second fills the pipeline
    sink.records.clear()
    skipped0 = metrics.SKIPPED._value.get()
    t0, c0 = time.monotonic(), os.times()
    await asyncio.sleep(seconds)
    n_in_window = len(sink.records)
    c1, t1 = os.times(), time.monotonic()
    skipped = metrics.SKIPPED._value.get() - skipped0
    stop.set()
    await task
    del sink.records[n_in_window:]
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return sink, (t1 - t0), cpu if not skipped else -cpu


def dnsperf(port: int, seconds: int, workdir: Path) -> float:
    """dnsperf's queries/s against the same Knot, same query."""
    qfile = workdir / "queries.txt"
    qfile.write_text(f"{QNAME} A\n")
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(qfile),
            "-l",
            str(seconds),
            "-c",
            "1",
            "-T",
            "1",
            "-Q",
            "1000000",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1))


def one_run(
    knot: servers.Knot, rates: list[int], seconds: float, workdir: Path
) -> dict[str, float]:
    best = {"rate": 0.0, "cpu_us": float("nan"), "p50": float("nan"), "p99": float("nan")}
    for rate in rates:
        cfg = config(knot.port, rate)
        path = workdir / f"tp-{rate}.pcap"
        with pcap.capture(path, f"udp port {knot.port}", cpu=0):  # on Knot's core, not the probe's
            sink, wall, cpu = asyncio.run(drive(cfg, seconds))
        recs = sink.records
        lost = sum(r.rcode == "TIMEOUT" for r in recs)
        achieved = len(recs) / wall
        ok = cpu >= 0 and lost / max(1, len(recs)) < 0.001 and achieved >= 0.99 * rate
        errs, _ = errors_us(recs, pcap.dns_round_trips(pcap.dns(pcap.read(path)), QNAME))
        path.unlink()
        cpu_us = abs(cpu) / max(1, len(recs)) * 1e6
        print(
            f"  {rate:6d} q/s asked: {achieved:7.0f} done, lost {lost} ({lost / max(1, len(recs)):.3%}),"
            f" {cpu_us:5.1f} CPU µs/measurement, |error| p50 {pct(errs, 50):.2f} µs "
            f"p99 {pct(errs, 99):.2f} µs{'' if cpu >= 0 else ', runs skipped'}"
            f" -> {'sustained' if ok else 'NOT sustained'}",
            flush=True,
        )
        if ok:
            best = {"rate": achieved, "cpu_us": cpu_us, "p50": pct(errs, 50), "p99": pct(errs, 99)}
        else:
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rates", default="3000,4000,4500,5000,5500,6000,6500,7000,8000")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rates = [int(x) for x in args.rates.split(",")]
    os.sched_setaffinity(0, {1})  # the probe: one core
    net.warm_up()
    with tempfile.TemporaryDirectory() as d, servers.knot() as knot:
        assert knot.proc is not None
        subprocess.run(
            ["taskset", "-a", "-p", "-c", "0", str(knot.proc.pid)], check=True, capture_output=True
        )
        results, peers = [], []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            results.append(one_run(knot, rates, args.seconds, Path(d)))
            peers.append(dnsperf(knot.port, 5, Path(d)))
            print(f"  dnsperf (1 core, same Knot): {peers[-1]:.0f} q/s", flush=True)
    rate = median([r["rate"] for r in results])
    peer = median(peers)
    print()
    print(f"throughput, median of {args.runs} runs:")
    print(f"  popwatch sustained {rate:.0f} timed q/s on one core (<0.1% loss)   (goal ≥ 5000)")
    print(f"  CPU per measurement {median([r['cpu_us'] for r in results]):.1f} µs")
    print(
        f"  accuracy at that rate: |error| p50 {median([r['p50'] for r in results]):.2f} µs "
        f"p99 {median([r['p99'] for r in results]):.2f} µs"
    )
    print(f"  dnsperf {peer:.0f} q/s; ratio popwatch/dnsperf {rate / peer:.3f}")


if __name__ == "__main__":
    main()

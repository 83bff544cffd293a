"""How many timed queries/s does one probe process sustain on one core, and at what CPU?

The probe runs its real scheduler and runner (``Prober``) with N series at a 1 s interval,
so N queries/s, pinned to one core while the server gets the other. A rate counts as
sustained when under 0.1% of queries are lost (TIMEOUT), no run is skipped and the
schedule keeps up. The rate climbs (by ``--step``, from ``--start``) until the probe no
longer keeps up, so the figure is where it stops, not a top step; ``--rates`` gives fixed
steps instead. At each sustained rate a second, shorter window (3 s at most) under a
tcpdump capture checks that rtt_ms is still exact (UDP); the CPU window has no capture,
whose tap would charge every packet's copy to the probe's own system calls.

dnsperf (the peer) then runs against the same Knot in the same run, on one core, and its
CPU per query is read from the kernel's accounting of the child (user + system): the
ratio printed is popwatch's CPU per measurement over dnsperf's CPU per query.

``--transport tcp|tls|https`` times the stream transports instead: a new connection per
measurement, as the probe measures them (connect and TLS phases included), TCP against
Knot, DoT and DoH against dnsdist in front of it. dnsperf keeps its connections open, so
no ratio is printed for those; their figure is the CPU per measurement.

UDP measurements reuse pooled sockets (``probe.net.UdpPool``); ``--reuse N`` sets how many
measurements a socket carries before it is replaced (1: a fresh socket each, as before).

    python bench/throughput.py [--transport udp] [--reuse 16] [--start 3000] [--step 1.2] [--seconds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
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


def config(port: int, rate: int, transport: str = "udp", ca: str | None = None) -> ProbeConfig:
    extra: dict[str, object] = {"transports": [transport]}
    if transport in ("tls", "https"):  # ``port`` is dnsdist's DoT or DoH port then
        extra.update(tls_ca=ca, tls_name="localhost")
        extra["tls_port" if transport == "tls" else "doh_port"] = port
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
                **extra,
            },
            Target,
        )
        for i in range(rate)
    ]
    return ProbeConfig(id="bench", concurrency=4096, targets=targets)


async def drive(
    cfg: ProbeConfig, seconds: float, reuse: int = net.UDP_REUSE
) -> tuple[MemorySink, float, float]:
    net.udp_pool().max_uses = reuse
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


def dnsperf(port: int, seconds: int, workdir: Path) -> tuple[float, float]:
    """dnsperf's queries/s against the same Knot, same query, and its CPU µs per query."""
    qfile = workdir / "queries.txt"
    qfile.write_text(f"{QNAME} A\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    assert m, out
    assert sent, out
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(m.group(1)), cpu / max(1, int(sent.group(1))) * 1e6


def rates_of(args: argparse.Namespace) -> list[int]:
    """The fixed ``--rates``, or the climb from ``--start`` by ``--step`` (to 200,000)."""
    if args.rates:
        return [int(x) for x in args.rates.split(",")]
    out, r = [], float(args.start or (3000 if args.transport == "udp" else 200))
    while r <= 200_000:
        out.append(int(round(r, -1)))
        r *= args.step
    return out


def one_run(
    port: int,
    rates: list[int],
    seconds: float,
    workdir: Path,
    transport: str,
    ca: str | None,
    reuse: int,
) -> dict[str, float]:
    best = {"rate": 0.0, "cpu_us": float("nan"), "p50": float("nan"), "p99": float("nan")}
    udp = transport == "udp"
    for rate in rates:
        cfg = config(port, rate, transport, ca)
        # the CPU window runs without a capture: tcpdump's tap copies every packet in the
        # sending process's own system calls, a cost no deployed probe pays
        sink, wall, cpu = asyncio.run(drive(cfg, seconds, reuse))
        recs = sink.records
        lost = sum(r.rcode == "TIMEOUT" or r.rtt_ms is None for r in recs)
        achieved = len(recs) / wall
        ok = cpu >= 0 and lost / max(1, len(recs)) < 0.001 and achieved >= 0.99 * rate
        cpu_us = abs(cpu) / max(1, len(recs)) * 1e6
        errs: list[float] = []
        if udp and ok:  # then accuracy at the same rate, against a capture
            path = workdir / f"tp-{rate}.pcap"
            with pcap.capture(path, f"udp port {port}", cpu=0):  # on the server's core
                sink, _, _ = asyncio.run(drive(cfg, min(seconds, 3.0), reuse))
            errs, _ = errors_us(
                sink.records, pcap.dns_round_trips(pcap.dns(pcap.read(path)), QNAME)
            )
            path.unlink()
        p50, p99 = (pct(errs, 50), pct(errs, 99)) if errs else (float("nan"), float("nan"))
        print(
            f"  {rate:6d} q/s asked: {achieved:7.0f} done, lost {lost} ({lost / max(1, len(recs)):.3%}),"
            f" {cpu_us:6.1f} CPU µs/measurement"
            + (f", |error| p50 {p50:.2f} µs p99 {p99:.2f} µs" if errs else "")
            + f"{'' if cpu >= 0 else ', runs skipped'} -> {'sustained' if ok else 'NOT sustained'}",
            flush=True,
        )
        if not ok:
            break
        best = {"rate": achieved, "cpu_us": cpu_us, "p50": p50, "p99": p99}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--transport", choices=("udp", "tcp", "tls", "https"), default="udp")
    ap.add_argument("--start", type=float, help="first rate (default 3000 for udp, else 200)")
    ap.add_argument("--step", type=float, default=1.2, help="each rate this times the last")
    ap.add_argument("--rates", default="", help="fixed rates instead of the climb: 2000,4000")
    ap.add_argument(
        "--reuse",
        type=int,
        default=net.UDP_REUSE,
        help=f"UDP measurements per pooled socket (default {net.UDP_REUSE}; 1: a fresh socket each)",
    )
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rates = rates_of(args)
    os.sched_setaffinity(0, {1})  # the probe: one core
    net.warm_up()
    udp = args.transport == "udp"
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(tempfile.TemporaryDirectory())
        knot = stack.enter_context(servers.knot())
        servers_pids = [knot.proc.pid] if knot.proc else []
        port, ca = knot.port, None
        if args.transport in ("tls", "https"):
            dd = stack.enter_context(servers.Dnsdist("dnsdist-bench", "dnsdist-bench"))
            dd.start(knot.port)
            servers_pids += [dd.proc.pid] if dd.proc else []
            port = dd.dot_port if args.transport == "tls" else dd.doh_port
            ca = str(dd.cert)
        for pid in servers_pids:  # the servers: the other core
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "0", str(pid)], check=True, capture_output=True
            )
        results, peers = [], []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ({args.transport}, reuse {args.reuse})", flush=True)
            results.append(
                one_run(port, rates, args.seconds, Path(d), args.transport, ca, args.reuse)
            )
            if udp:
                peers.append(dnsperf(knot.port, 5, Path(d)))
                print(
                    f"  dnsperf (1 core, same Knot): {peers[-1][0]:.0f} q/s, "
                    f"{peers[-1][1]:.2f} CPU µs/query",
                    flush=True,
                )
    rate = median([r["rate"] for r in results])
    cpu_us = median([r["cpu_us"] for r in results])
    print()
    print(f"throughput over {args.transport}, median of {args.runs} runs:")
    print(f"  popwatch sustained {rate:.0f} timed q/s on one core (<0.1% loss)")
    print(f"  CPU per measurement {cpu_us:.1f} µs")
    if udp:
        print(
            f"  accuracy at that rate: |error| p50 {median([r['p50'] for r in results]):.2f} µs "
            f"p99 {median([r['p99'] for r in results]):.2f} µs"
        )
        peer_q, peer_cpu = median([q for q, _ in peers]), median([c for _, c in peers])
        print(f"  dnsperf {peer_q:.0f} q/s, {peer_cpu:.2f} CPU µs per query")
        print(f"  ratio, CPU per measurement / dnsperf's CPU per query: {cpu_us / peer_cpu:.1f}x")


if __name__ == "__main__":
    main()

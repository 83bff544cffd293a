"""How exact is rtt_ms? Compare it with the round trip seen on the wire (tcpdump, ns stamps).

For each query the probe reports, the capture gives the instants the query and its answer
crossed the loopback device; the error is ``rtt_ms - (t_answer - t_query)``. The same is
done for Prometheus blackbox_exporter's DNS prober (its ``request`` phase) against the
same Knot in the same run.

Phases: idle, and under load (the probe runs 2,000 other queries/s in the same process
while the timed queries go on). Each run prints p50/p99 of |error| in microseconds; the
summary prints the median over runs.

    python bench/accuracy.py [--runs 3] [--queries 1000] [--load-qps 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import re
import tempfile
from pathlib import Path

import msgspec
from _common import BlackboxExporter, median, pcap, pct, servers

from probe import net
from probe.checks.dns import DnsJob
from probe.config import Target
from probe.runner import run_job
from probe.wire import NS, DnsRecord

PROBE_QNAME = "www.example.test."
BB_QNAME = "mail.example.test."
LOAD_QNAME = "ns1.example.test."


def job(port: int, qname: str, identify: str = "nsid") -> DnsJob:
    t = msgspec.convert(
        {
            "name": "acc",
            "topology": "anycast",
            "server": "127.0.0.1",
            "port": port,
            "identify": identify,
            "queries": [{"qname": qname, "qtype": "A"}],
            "timeout": 1,
        },
        Target,
    )
    return DnsJob(t, "127.0.0.1", "udp", qname, "A")


class Blackbox(BlackboxExporter):
    """blackbox_exporter with a DNS module aimed at Knot."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(
            workdir,
            "  dns_a:\n    prober: dns\n    timeout: 2s\n    dns:\n"
            f"      query_name: {BB_QNAME}\n      query_type: A\n"
            "      transport_protocol: udp\n      preferred_ip_protocol: ip4\n"
            "      recursion_desired: false\n",
        )

    def probe_dns(self, dns_port: int) -> float | None:
        """One probe; the ``request`` phase in ns, or None."""
        body = self.probe("dns_a", f"127.0.0.1:{dns_port}")
        m = re.search(r'probe_dns_duration_seconds\{phase="request"\} (\S+)', body)
        return float(m.group(1)) * NS if m else None


def errors_us(records: list[DnsRecord], wire: list[tuple[int, int]]) -> tuple[list[float], int]:
    """|rtt_ms - wire rtt| in µs for each record, matched to the capture by send time."""
    starts = [w[0] for w in wire]
    out, unmatched = [], 0
    for r in records:
        if r.rtt_ms is None:
            unmatched += 1
            continue
        i = bisect.bisect_left(starts, r.ts)
        best = min(
            (j for j in (i - 1, i) if 0 <= j < len(wire)), key=lambda j: abs(starts[j] - r.ts)
        )
        if abs(starts[best] - r.ts) > 200_000:  # no capture within 200 µs of the send
            unmatched += 1
            continue
        out.append(abs(r.rtt_ms * 1e6 - wire[best][1]) / 1000)
    return out, unmatched


async def timed_queries(port: int, n: int, gap: float) -> list[DnsRecord]:
    j = job(port, PROBE_QNAME)
    out = []
    for _ in range(n):
        out.append(await run_job(j))  # type: ignore[arg-type]
        await asyncio.sleep(gap)
    return out


async def load(port: int, qps: int, stop: asyncio.Event) -> int:
    """Run ``qps`` other measurements per second on this loop until ``stop``."""
    j = job(port, LOAD_QNAME, identify="none")
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    async with asyncio.TaskGroup() as tg:
        while not stop.is_set():
            due = start + sent / qps
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            tg.create_task(run_job(j))
            sent += 1
    return sent


async def loaded_run(port: int, n: int, qps: int) -> tuple[list[DnsRecord], float]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    load_task = asyncio.create_task(load(port, qps, stop))
    await asyncio.sleep(0.5)
    records = await timed_queries(port, n, 0.002)
    stop.set()
    sent = await load_task
    return records, sent / (loop.time() - t0)


def one_run(
    knot: servers.Knot, bb: Blackbox, workdir: Path, args: argparse.Namespace
) -> dict[str, float]:
    path = workdir / "cap.pcap"
    bb_ns: list[float] = []
    with pcap.capture(path, f"udp port {knot.port}"):
        idle = asyncio.run(timed_queries(knot.port, args.queries, 0.002))
        for _ in range(args.bb_queries):
            v = bb.probe_dns(knot.port)
            if v is not None:
                bb_ns.append(v)
        loaded, achieved = asyncio.run(loaded_run(knot.port, args.queries, args.load_qps))
    packets = pcap.dns(pcap.read(path))
    wire = pcap.dns_round_trips(packets, PROBE_QNAME)
    n_idle = len(idle)
    e_idle, u1 = errors_us(idle, wire)
    e_load, u2 = errors_us(loaded, wire)
    bb_wire = [w for _, w in pcap.dns_round_trips(packets, BB_QNAME)]
    e_bb = [abs(a - b) / 1000 for a, b in zip(bb_ns, bb_wire, strict=False)]
    kernel = sum(r.timestamping == "kernel" for r in idle + loaded)
    res = {
        "idle_p50": pct(e_idle, 50),
        "idle_p99": pct(e_idle, 99),
        "load_p50": pct(e_load, 50),
        "load_p99": pct(e_load, 99),
        "bb_p50": pct(e_bb, 50),
        "bb_p99": pct(e_bb, 99),
        "load_qps": achieved,
        "wire_rtt_p50_us": pct([w / 1000 for _, w in wire], 50),
    }
    print(
        f"  idle: p50 {res['idle_p50']:.2f} µs p99 {res['idle_p99']:.2f} µs (n={len(e_idle)}, "
        f"unmatched {u1})  | load {achieved:.0f} q/s: p50 {res['load_p50']:.2f} µs "
        f"p99 {res['load_p99']:.2f} µs (n={len(e_load)}, unmatched {u2})  | blackbox idle: "
        f"p50 {res['bb_p50']:.2f} µs p99 {res['bb_p99']:.2f} µs (n={len(e_bb)})  "
        f"| kernel-stamped {kernel}/{n_idle + len(loaded)}",
        flush=True,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queries", type=int, default=1000, help="timed queries per phase")
    ap.add_argument("--bb-queries", type=int, default=300, help="blackbox probes per run")
    ap.add_argument("--load-qps", type=int, default=2000)
    args = ap.parse_args()
    net.warm_up()
    with tempfile.TemporaryDirectory() as d, servers.knot() as knot:
        bb = Blackbox(Path(d))
        try:
            runs = []
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                runs.append(one_run(knot, bb, Path(d), args))
        finally:
            bb.close()
    m = {k: median([r[k] for r in runs]) for k in runs[0]}
    print()
    print(
        f"accuracy, median of {args.runs} runs (|rtt_ms - wire rtt|, µs; wire rtt p50 "
        f"{m['wire_rtt_p50_us']:.1f} µs):"
    )
    print(
        f"  popwatch idle          p50 {m['idle_p50']:6.2f}  p99 {m['idle_p99']:6.2f}   (goal ≤ 3 / ≤ 10)"
    )
    print(
        f"  popwatch {m['load_qps']:5.0f} q/s load p50 {m['load_p50']:6.2f}  p99 {m['load_p99']:6.2f}   (goal p99 ≤ 25)"
    )
    print(f"  blackbox_exporter idle p50 {m['bb_p50']:6.2f}  p99 {m['bb_p99']:6.2f}")
    print(
        f"  ratio blackbox/popwatch idle: p50 {m['bb_p50'] / m['idle_p50']:.1f}x  "
        f"p99 {m['bb_p99'] / m['idle_p99']:.1f}x"
    )


if __name__ == "__main__":
    main()

"""How exact is a ping's rtt_ms? Compare it with the round trip on the wire (tcpdump, ns stamps).

The yardstick of bench/accuracy.py, for the ping check: for each ping the probe reports,
a nanosecond capture gives the instants the echo request and its reply (icmp), or the SYN
and the SYN-ACK (tcp), crossed the device; the error is ``|rtt_ms - wire rtt|``.

Two paths, both measured in every run:

* **loopback**, to a real Knot (tcp to its DNS port). Here the whole handshake happens
  inside the ``connect()`` call, and the kernel takes its RTT sample only when that call
  releases the socket, so the tcp figure carries the rest of the call with it;
* **the lab path** (tests/support/web.py): a host in a network namespace behind the lab's
  user-space wire between two TUN devices, captured on our TUN device. Replies arrive after ``connect()``
  has returned, as on any real network.

Peers in the same run: blackbox_exporter's ICMP prober (its ``rtt`` phase) on the same
paths; for tcp, which blackbox does not time by phase, the check's own user-space
fallback (``connect()`` -> writable, ``timestamping: user``) on the same server.

Each run prints p50/p99 of |error| in microseconds per phase; the summary prints the
median over runs. Needs root (the captures, the lab's namespace, and
``net.ipv4.ping_group_range``, widened for the run when it leaves our group out and put
back after).

    python bench/ping_accuracy.py [--runs 3] [--pings 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import msgspec
from _common import BlackboxExporter, median, pcap, pct, servers
from support import web  # _common put tests/ on the path

from probe import net
from probe.checks.ping import CHECK, PingJob
from probe.errors import PING_GROUP_RANGE
from probe.targets import PingTarget
from probe.wire import NS, PingRecord


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    method: str  # icmp | tcp | blackbox (its ICMP prober)
    address: str
    port: int  # tcp's
    dev: str  # where the capture runs
    user: bool = False  # tcp: the check's user-space fallback instead of TCP_INFO

    @property
    def bpf(self) -> str:
        return f"tcp port {self.port}" if self.method == "tcp" else "icmp or icmp6"


def phases(knot: servers.Knot, lab: web.WebLab) -> list[Phase]:
    far, tun = lab.address, lab.client_dev
    return [
        Phase("icmp4 lo", "icmp", "127.0.0.1", 0, "lo"),
        Phase("icmp6 lo", "icmp", "::1", 0, "lo"),
        Phase("tcp4 lo", "tcp", "127.0.0.1", knot.port, "lo"),
        Phase("tcp6 lo", "tcp", "::1", knot.port, "lo"),
        Phase("icmp4 lab", "icmp", far, 0, tun),
        Phase("tcp4 lab", "tcp", far, web.PLAIN_PORT, tun),
        Phase("bb icmp4 lo", "blackbox", "127.0.0.1", 0, "lo"),
        Phase("bb icmp6 lo", "blackbox", "::1", 0, "lo"),
        Phase("bb icmp4 lab", "blackbox", far, 0, tun),
        Phase("user tcp4 lo", "tcp", "127.0.0.1", knot.port, "lo", user=True),
        Phase("user tcp4 lab", "tcp", far, web.PLAIN_PORT, tun, user=True),
    ]


def wire_exchanges(path: Path) -> list[tuple[int, int]]:
    """``[(request capture ns, wire rtt ns)]``: echo -> reply, SYN -> SYN-ACK, in order."""
    return sorted((e.start_ns, e.rtt_ns) for e in pcap.exchanges(pcap.read(path)))


def errors_us(records: list[PingRecord], wire: list[tuple[int, int]]) -> tuple[list[float], int]:
    """|rtt_ms - wire rtt| in µs per record, matched to the capture by its send time."""
    starts = [w[0] for w in wire]
    out, unmatched = [], 0
    for r in records:
        if r.rtt_ms is None or not wire:
            unmatched += 1
            continue
        i = bisect.bisect_left(starts, r.ts)
        best = min(
            (j for j in (i - 1, i) if 0 <= j < len(wire)), key=lambda j: abs(starts[j] - r.ts)
        )
        # icmp: ts is the kernel TX stamp (µs from the capture); tcp: the clock just
        # before connect(), some tens of µs before the SYN
        if abs(starts[best] - r.ts) > 500_000:
            unmatched += 1
            continue
        out.append(abs(r.rtt_ms * 1e6 - wire[best][1]) / 1000)
    return out, unmatched


def job(method: str, address: str, port: int) -> PingJob:
    t = msgspec.convert(
        {
            "name": "acc",
            "topology": "unicast",
            "server": address,
            "method": method,
            "port": port or 53,
            "timeout": 1,
        },
        PingTarget,
    )
    [j] = CHECK.jobs(t, [(6 if ":" in address else 4, address)])
    return j


async def timed_pings(j: PingJob, n: int, gap: float) -> list[PingRecord]:
    out = []
    for _ in range(n):
        out.append(await CHECK.measure(j))
        await asyncio.sleep(gap)
    return out


class Blackbox(BlackboxExporter):
    """blackbox_exporter with an ICMP module per family."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(
            workdir,
            "".join(
                f"  icmp{f}:\n    prober: icmp\n    timeout: 2s\n    icmp:\n"
                f"      preferred_ip_protocol: ip{f}\n"
                for f in (4, 6)
            ),
        )

    def probe_icmp(self, address: str) -> float | None:
        """One probe; the ``rtt`` phase in ns, or None."""
        body = self.probe("icmp6" if ":" in address else "icmp4", address)
        m = re.search(r'probe_icmp_duration_seconds\{phase="rtt"\} (\S+)', body)
        return float(m.group(1)) * NS if m else None


def measure_phase(
    ph: Phase, bb: Blackbox, path: Path, args: argparse.Namespace
) -> tuple[list[float], str]:
    """The phase's |errors| in µs, and what else to say about it."""
    if ph.method == "blackbox":
        with pcap.capture(path, ph.bpf, ph.dev):
            got = [bb.probe_icmp(ph.address) for _ in range(args.bb_pings)]
        wire = wire_exchanges(path)
        rtts = [v for v in got if v is not None]
        e = [abs(a - w) / 1000 for a, (_, w) in zip(rtts, wire, strict=False)]
        return e, f"wire {len(wire)}"
    j = job(ph.method, ph.address, ph.port)
    no_tcp_info = mock.patch.object(net, "kernel_connect_ns", return_value=None)
    with no_tcp_info if ph.user else contextlib.nullcontext():
        asyncio.run(timed_pings(j, 3, 0.002))  # neighbour and route caches, not timed
        with pcap.capture(path, ph.bpf, ph.dev):
            records = asyncio.run(timed_pings(j, args.pings, 0.002))
    wire = wire_exchanges(path)
    e, unmatched = errors_us(records, wire)
    kernel = sum(r.timestamping == "kernel" for r in records)
    wire_p50 = pct([w / 1000 for _, w in wire], 50)
    return e, f"unmatched {unmatched}, kernel {kernel}/{len(records)}, wire p50 {wire_p50:.1f} µs"


def one_run(
    all_phases: list[Phase], bb: Blackbox, workdir: Path, args: argparse.Namespace
) -> dict[str, tuple[float, float]]:
    res = {}
    for ph in all_phases:
        e, note = measure_phase(ph, bb, workdir / "ping.pcap", args)
        res[ph.name] = (pct(e, 50), pct(e, 99))
        print(
            f"  {ph.name:<14} p50 {pct(e, 50):7.2f} µs  p99 {pct(e, 99):7.2f} µs  "
            f"(n={len(e)}, {note})",
            flush=True,
        )
    return res


@contextlib.contextmanager
def ping_sockets_allowed() -> Iterator[None]:
    """Our group in ping_group_range for the run, the old value back after it."""
    old = " ".join(Path(PING_GROUP_RANGE).read_text().split())
    low, high = map(int, old.split())
    if any(low <= g <= high for g in {os.getegid(), *os.getgroups()}):
        yield
        return
    gid = os.getegid()
    Path(PING_GROUP_RANGE).write_text(f"{gid} {gid}\n")
    print(f"net.ipv4.ping_group_range was {old!r}: '{gid} {gid}' for this run", flush=True)
    try:
        yield
    finally:
        Path(PING_GROUP_RANGE).write_text(old + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pings", type=int, default=1000, help="timed pings per phase")
    ap.add_argument("--bb-pings", type=int, default=300, help="blackbox probes per phase")
    args = ap.parse_args()
    net.warm_up()
    with (
        ping_sockets_allowed(),
        tempfile.TemporaryDirectory() as d,
        servers.knot() as knot,
        web.WebLab() as lab,
    ):
        lab.start()
        all_phases = phases(knot, lab)
        bb = Blackbox(Path(d))
        try:
            runs = []
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                runs.append(one_run(all_phases, bb, Path(d), args))
        finally:
            bb.close()
    m = {ph.name: [median([r[ph.name][k] for r in runs]) for k in (0, 1)] for ph in all_phases}
    print()
    print(f"ping accuracy, median of {args.runs} runs (|rtt_ms - wire rtt|, µs; goal ≤ 3 / ≤ 10):")
    for ph in all_phases:
        p50, p99 = m[ph.name]
        line = f"  {ph.name:<14} p50 {p50:7.2f}  p99 {p99:7.2f}"
        peer = ph.name.removeprefix("bb ").removeprefix("user ")
        if peer != ph.name:
            line += f"   ratio to popwatch {peer}: p50 {p50 / m[peer][0]:.1f}x  p99 {p99 / m[peer][1]:.1f}x"
        print(line)


if __name__ == "__main__":
    main()

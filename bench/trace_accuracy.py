"""How exact is each hop of a trace? popwatch's trace check and ``mtr --raw`` (Debian's
mtr-tiny) on the same lab paths in the same run, both against a tcpdump capture.

The path is the lab's ap-south to the anycast address (served by sin): the backbone,
sin's edge router, sin; three hops, about 39 ms behind the user-space wire. tcpdump runs
on the region's own link (``bb`` in its namespace), nanosecond stamps, and sees each
query leave and each ICMP time-exceeded (or the destination's answer) come back. Each
reply is matched to its query by what it quotes: the UDP source port and DNS ID, or the
echo's ID and sequence. The wire's round trip is the capture's reply time minus its
query time; a tool's error is its figure minus that.

* popwatch: ``udp`` (a DNS SOA query with NSID) and ``icmp`` (a ping socket), over IPv4
  and IPv6, each trace measured in this process inside the region's namespace (the
  check itself, ``probe.checks.trace``); every query of every hop is compared.
* mtr: its default ICMP mode, ``mtr --raw -n -c COUNT -i 0.2``, over IPv4 and IPv6; each
  ``p`` line (hop, microseconds, sequence) against the echo of that sequence.

Both must name the same hop addresses (the bench says where they differ). Each run
prints p50 and p99 of |error| in microseconds per phase and mtr's ratio to popwatch's
same family; the summary is the median over runs. Needs root and no lab up: it brings
the lab up and takes it down (``--lab-up``: the one that is up, left up).

    python bench/trace_accuracy.py [--runs 3] [--traces 20] [--mtr-count 20] [--lab-up]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from _common import median, pcap, pct

from popwatch_lab import netns
from popwatch_lab.world import ANYCAST_V4, ANYCAST_V6, WORLD
from probe.checks.trace import CHECK, TraceJob
from probe.targets import TraceTarget
from probe.wire import TraceRecord

LAB = str(Path(sys.executable).parent / "popwatch-lab")
REGION = WORLD.region("ap-south")
QNAME = "trace-bench.lab.example."  # marks popwatch's udp queries in the capture
MARK = b"popwatch-trace"  # the payload of popwatch's echo requests
Key = tuple[str, int, int]  # ("udp", source port, DNS id) or ("echo", id, sequence)


def lab(*args: str) -> None:
    proc = subprocess.run([LAB, *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"popwatch-lab {' '.join(args)}: {proc.stderr.strip()}")


# ----------------------------------------------------------------------------- the wire


@dataclass(slots=True)
class Sent:
    key: Key
    ts: int
    popwatch: bool


def _quoted(p: pcap.Packet) -> Key | None:
    """The query an ICMP error quotes (its payload: the IP header, then the start of the
    transport header and data)."""
    q = p.payload
    if p.family == 4:
        if len(q) < 20:
            return None
        head, proto = (q[0] & 0x0F) * 4, q[9]
    else:
        if len(q) < 40:
            return None
        head, proto = 40, q[6]
    rest = q[head:]
    if proto == pcap.UDP and len(rest) >= 10:
        return ("udp", int.from_bytes(rest[0:2], "big"), int.from_bytes(rest[8:10], "big"))
    if proto in (pcap.ICMP, pcap.ICMP6) and len(rest) >= 8:
        return ("echo", int.from_bytes(rest[4:6], "big"), int.from_bytes(rest[6:8], "big"))
    return None


def wire(path: Path, local: set[str]) -> tuple[list[Sent], dict[Key, int]]:
    """The queries ``local`` sent (in order) and each key's first reply time."""
    sent: list[Sent] = []
    replies: dict[Key, int] = {}
    for p in pcap.read(path):
        key: Key | None = None
        if p.src in local:
            if p.proto == pcap.UDP and p.dport == 53 and len(p.payload) >= 2:
                ours = QNAME.encode().split(b".")[0] in p.payload
                key = ("udp", p.sport or 0, int.from_bytes(p.payload[:2], "big"))
                sent.append(Sent(key, p.ts_ns, ours))
            elif p.icmp_type == pcap.ECHO_REQUEST[p.proto] and p.icmp_id is not None:
                key = ("echo", p.icmp_id, p.icmp_seq or 0)
                sent.append(Sent(key, p.ts_ns, MARK in p.payload))
            continue
        if p.dst not in local:
            continue
        if p.proto == pcap.UDP and p.sport == 53 and len(p.payload) >= 2:
            key = ("udp", p.dport or 0, int.from_bytes(p.payload[:2], "big"))
        elif p.proto in (pcap.ICMP, pcap.ICMP6):
            if p.icmp_type == pcap.ECHO_REPLY[p.proto] and p.icmp_id is not None:
                key = ("echo", p.icmp_id, p.icmp_seq or 0)
            else:
                key = _quoted(p)
        if key is not None:
            replies.setdefault(key, p.ts_ns)
    return sent, replies


# ----------------------------------------------------------------------------- popwatch


def traces(method: str, address: str, count: int) -> list[TraceRecord]:
    """``count`` traces from inside the region's namespace, one after another."""
    target = msgspec.convert(
        {
            "name": "bench",
            "topology": "anycast",
            "server": address,
            "method": method,
            "qname": QNAME,
            "max_hops": 6,
            "queries_per_hop": 3,
            "hop_timeout_s": 0.5,
            "interval": 3600,
        },
        TraceTarget,
    )
    job = TraceJob(target, address)

    async def run() -> list[TraceRecord]:
        out = []
        for _ in range(count):
            out.append(await CHECK.measure(job))
            await asyncio.sleep(0.05)
        return out

    with netns.inside(REGION.netns):
        return asyncio.run(run())


def popwatch_errors(
    records: list[TraceRecord], sent: list[Sent], replies: dict[Key, int], kind: str
) -> tuple[list[float], int]:
    """|error| in µs of every query, and how many traces could not be matched (a query
    lost on the way, so the record's and the capture's lists differ)."""
    ours = [s for s in sent if s.popwatch and s.key[0] == kind]
    groups: dict[int, list[Sent]] = {}
    for s in ours:  # one socket per trace: its port (udp) or echo id
        groups.setdefault(s.key[1], []).append(s)
    ordered = sorted(groups.values(), key=lambda g: g[0].ts)
    errors: list[float] = []
    unmatched = 0
    for record, group in zip(records, ordered, strict=False):
        rtts = [ms for h in record.hops for ms in h.rtt_ms]
        answered = [s for s in group if s.key in replies]
        if len(answered) != len(group) or len(rtts) != len(group):
            unmatched += 1
            continue
        for ms, s in zip(rtts, group, strict=True):
            wire_us = (replies[s.key] - s.ts) / 1000
            errors.append(abs(ms * 1000 - wire_us))
    unmatched += abs(len(records) - len(ordered))
    return errors, unmatched


# ----------------------------------------------------------------------------- mtr


def mtr(address: str, count: int) -> tuple[dict[int, set[str]], dict[int, tuple[int, int]]]:
    """``mtr --raw``: the addresses at each hop, and (hop, µs) of each answered
    sequence."""
    out = subprocess.run(
        ["ip", "netns", "exec", REGION.netns, "mtr", "--raw", "-n", "-c", str(count),
         "-i", "0.2", address],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    hosts: dict[int, set[str]] = {}
    pings: dict[int, tuple[int, int]] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "h":
            hosts.setdefault(int(f[1]), set()).add(f[2])
        elif len(f) >= 4 and f[0] == "p":
            pings[int(f[3])] = (int(f[1]), int(f[2]))
    return hosts, pings


def mtr_errors(
    pings: dict[int, tuple[int, int]], sent: list[Sent], replies: dict[Key, int]
) -> list[float]:
    by_seq = {s.key[2]: s for s in sent if s.key[0] == "echo" and not s.popwatch}
    errors = []
    for seq, (_, usec) in pings.items():
        s = by_seq.get(seq)
        if s is None or s.key not in replies:
            continue
        errors.append(abs(usec - (replies[s.key] - s.ts) / 1000))
    return errors


# ----------------------------------------------------------------------------- a run


def one_run(args: argparse.Namespace, tmp: Path) -> dict[str, tuple[float, float, int]]:
    out: dict[str, tuple[float, float, int]] = {}
    for fam, address, local in (
        (4, ANYCAST_V4, {REGION.v4}),
        (6, ANYCAST_V6, {REGION.v6}),
    ):
        path = tmp / f"v{fam}.pcap"
        bpf = "icmp or icmp6 or udp port 53"
        # not --immediate-mode: tcpdump woken on each packet slows every sender down
        with pcap.capture(path, bpf, "bb", netns=REGION.netns, immediate=False) as cap:
            time.sleep(0.5)
            got = {m: traces(m, address, args.traces) for m in ("udp", "icmp")}
            hosts, pings = mtr(address, args.mtr_count)
            time.sleep(0.5)
        if cap.dropped:
            print(f"  the capture dropped {cap.dropped} packets", flush=True)
        sent, replies = wire(path, local)
        for m, records in got.items():
            errs, unmatched = popwatch_errors(
                records, sent, replies, "udp" if m == "udp" else "echo"
            )
            out[f"popwatch {m}{fam}"] = (pct(errs, 50), pct(errs, 99), len(errs))
            if unmatched:
                print(f"  popwatch {m}{fam}: {unmatched} traces not matched", flush=True)
            same_hops(records, hosts, f"{m}{fam}")
        errs = mtr_errors(pings, sent, replies)
        out[f"mtr icmp{fam}"] = (pct(errs, 50), pct(errs, 99), len(errs))
    for name, (p50, p99, n) in out.items():
        print(f"  {name:<16} p50 {p50:8.2f} µs  p99 {p99:8.2f} µs  ({n} queries)", flush=True)
    return out


def same_hops(records: list[TraceRecord], hosts: dict[int, set[str]], what: str) -> None:
    """popwatch's hop addresses against mtr's, up to the destination."""
    for r in records:
        for h in r.hops:
            seen = hosts.get(h.ttl - 1, set())
            if h.addr is not None and h.addr not in seen:
                print(f"  {what}: hop {h.ttl} popwatch {h.addr}, mtr {sorted(seen)}", flush=True)
                return
    addrs = [h.addr for h in records[0].hops] if records else []
    print(f"  {what}: the same hops as mtr: {' -> '.join(str(a) for a in addrs)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--traces", type=int, default=20, help="popwatch traces per method and family")
    ap.add_argument("--mtr-count", type=int, default=20, help="mtr's -c per family")
    ap.add_argument(
        "--lab-up", action="store_true", help="use the lab that is up (and leave it up)"
    )
    args = ap.parse_args()
    if not args.lab_up:
        lab("up", "--quiet")
    try:
        runs = []
        with tempfile.TemporaryDirectory() as d:
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                runs.append(one_run(args, Path(d)))
    finally:
        if not args.lab_up:
            lab("down")
    names = list(runs[0])
    m = {n: (median([r[n][0] for r in runs]), median([r[n][1] for r in runs])) for n in names}
    print()
    print(
        f"trace accuracy, median of {args.runs} runs (|per-hop rtt - wire rtt|, µs; "
        "goal p50 ≤ 5, p99 ≤ 20):"
    )
    for n in names:
        p50, p99 = m[n]
        line = f"  {n:<16} p50 {p50:8.2f}  p99 {p99:8.2f}"
        if n.startswith("mtr"):
            peer = "popwatch " + n.removeprefix("mtr ")
            line += f"   ratio to {peer}: p50 {p50 / m[peer][0]:.1f}x  p99 {p99 / m[peer][1]:.1f}x"
        print(line)


if __name__ == "__main__":
    main()

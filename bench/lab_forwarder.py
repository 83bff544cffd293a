"""What the lab's user-space wire costs, and how close it holds a packet to its delay.

The kernel here has no netem, so the lab delays every path in user space
(popwatch_lab/wire.py). This bench builds two namespaces joined twice: through the wire
(two TUN devices) and, as the peer, through a plain veth pair, which the kernel carries
with no user space at all. A sender in the first namespace sends numbered UDP packets
at a fixed rate over each path; tcpdump captures them on the sending device and on the
receiving device (nanosecond stamps, one clock), and each packet's transit is matched by
its number.

For each asked one-way delay and rate it prints, in microseconds:

* **error**: transit minus the asked delay, through the wire (p50, p99, max): what the
  forwarder adds to, or takes from, the delay it was told;
* **veth**: the transit over the veth pair (p50, p99): the kernel's own cost, the peer;
* **cpu/pkt**: the wire process's CPU time (user + system) per packet forwarded;
* lost packets, if any.

Needs root. ``python bench/lab_forwarder.py [--packets 2000] [--rates 100 1000]
[--delays 0 10 50] [--realtime]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from popwatch_lab.netns import ip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pcap, pct

A, B = "pwlb-a", "pwlb-b"
PORT = 9999
SENDER = """
import socket, struct, sys, time
dst, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.perf_counter()
for i in range(n):
    due = t0 + i / rate
    while time.perf_counter() < due:
        time.sleep(max(0.0, min(0.001, due - time.perf_counter())))
    s.sendto(struct.pack("!Q", i) + bytes(56), (dst, 9999))
"""
SINK = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("ready", flush=True)
while True:
    s.recv(2048)
"""


def build() -> None:
    for ns in (A, B):
        ip("netns", "add", ns)
        ip("link", "set", "lo", "up", netns=ns)
    ip("tuntap", "add", "dev", "wa", "mode", "tun", netns=A)
    ip("tuntap", "add", "dev", "wb", "mode", "tun", netns=B)
    ip("addr", "add", "198.18.10.2/24", "dev", "wa", netns=A)
    ip("addr", "add", "198.18.20.2/24", "dev", "wb", netns=B)
    ip("link", "add", "va", "netns", A, "type", "veth", "peer", "name", "vb", "netns", B)
    ip("addr", "add", "198.18.30.1/24", "dev", "va", netns=A)
    ip("addr", "add", "198.18.30.2/24", "dev", "vb", netns=B)
    for ns, dev in ((A, "wa"), (B, "wb"), (A, "va"), (B, "vb")):
        ip("link", "set", dev, "up", netns=ns)


def routes() -> None:
    ip("route", "add", "198.18.20.0/24", "dev", "wa", netns=A)
    ip("route", "add", "198.18.10.0/24", "dev", "wb", netns=B)


def teardown() -> None:
    for ns in (A, B):
        ip("netns", "del", ns, check=False)


def spec(one_way_ms: float) -> dict[str, object]:
    return {
        "links": {"b": {"outer": [A, "wa"], "inner": [B, "wb"]}},
        "peers": {"a": ["198.18.10.0/24"]},
        "params": {"b": {"paths": {"a": [2 * one_way_ms, 0.0]}}},
    }


def stamps(path: Path) -> dict[int, int]:
    """Packet number -> capture time (ns), from a capture of the sender's packets."""
    return {
        struct.unpack_from("!Q", p.payload)[0]: p.ts_ns
        for p in pcap.read(path)
        if p.proto == pcap.UDP and len(p.payload) >= 8
    }


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def one_run(
    work: Path, dst: str, devs: tuple[str, str], packets: int, rate: float
) -> tuple[list[float], int]:
    """Send over one path; (transits in µs, lost)."""
    pa, pb = work / "a.pcap", work / "b.pcap"
    bpf = f"udp port {PORT}"
    with pcap.capture(pa, bpf, devs[0], netns=A), pcap.capture(pb, bpf, devs[1], netns=B):
        subprocess.run(
            ["ip", "netns", "exec", A, sys.executable, "-c", SENDER, dst, str(packets), str(rate)],
            check=True,
        )
    sa, sb = stamps(pa), stamps(pb)
    transits = [(sb[i] - sa[i]) / 1000 for i in sa if i in sb]
    return transits, len(sa) - len(transits)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--packets", type=int, default=2000)
    ap.add_argument("--rates", type=float, nargs="+", default=[100, 1000])
    ap.add_argument("--delays", type=float, nargs="+", default=[0, 10, 50], help="one way, ms")
    ap.add_argument("--realtime", action="store_true", help="the wire under SCHED_FIFO")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/lab_forwarder.py needs root (namespaces, TUN, tcpdump)")
    teardown()
    work = Path(tempfile.mkdtemp(prefix="popwatch-bench-wire-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        build()
        spec_path = work / "wire.json"
        spec_path.write_text(json.dumps(spec(0)))
        argv = [sys.executable, "-m", "popwatch_lab.wire", str(spec_path)]
        wire = subprocess.Popen(
            [*argv, *(["--realtime"] if args.realtime else [])], stdout=subprocess.PIPE
        )
        procs.append(wire)
        assert wire.stdout is not None
        assert wire.stdout.readline().strip() == b"ready"
        routes()
        sink = subprocess.Popen(
            ["ip", "netns", "exec", B, sys.executable, "-c", SINK], stdout=subprocess.PIPE
        )
        procs.append(sink)
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        hz = os.sysconf("SC_CLK_TCK")
        print(
            f"wire{' (SCHED_FIFO)' if args.realtime else ''}: {args.packets} packets per run, "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; transit error through "
            "the wire vs the plain veth pair (kernel), in microseconds"
        )
        print(
            f"{'delay':>7} {'rate/s':>7} | {'err p50':>8} {'err p99':>8} {'err max':>8} "
            f"{'lost':>4} | {'veth p50':>8} {'veth p99':>8} | {'cpu/pkt':>8}"
        )
        for delay in args.delays:
            spec_path.write_text(json.dumps(spec(delay)))
            wire.send_signal(signal.SIGHUP)
            time.sleep(0.2)
            for rate in args.rates:
                t0 = cpu_ticks(wire.pid)
                through, lost = one_run(work, "198.18.20.2", ("wa", "wb"), args.packets, rate)
                cpu_us = (cpu_ticks(wire.pid) - t0) / hz * 1e6 / max(1, len(through))
                veth, _ = one_run(work, "198.18.30.2", ("va", "vb"), args.packets, rate)
                err = [t - delay * 1000 for t in through]
                print(
                    f"{delay:>5g}ms {rate:>7g} | {pct(err, 50):>8.1f} {pct(err, 99):>8.1f} "
                    f"{max(err):>8.1f} {lost:>4} | {pct(veth, 50):>8.1f} {pct(veth, 99):>8.1f} "
                    f"| {cpu_us:>8.1f}",
                    flush=True,
                )
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(5)
        teardown()
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()

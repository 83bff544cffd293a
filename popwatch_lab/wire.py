"""The wire: a user-space forwarder that gives each lab path its delay, jitter and loss.

The kernel here has no ``tc netem``. So each server's link (a site, or the unicast
server) is two TUN devices, one in the backbone and one in the server's namespace, and
this process carries every packet between them. A packet waits the one-way delay of its
path before it is written on: half the round trip of the path between the region it
comes from or goes to (found by its address) and this server, plus a normal jitter,
plus half of any extra delay the link is degraded by. Packets of one path and direction
leave in the order they came (the jitter never reorders them). A packet toward the
server is dropped with the link's loss probability, so a lost query is ``loss`` of them;
a dark link (a failed site) drops everything.

A link can also hold the TCP SYN-ACKs its server sends from chosen ports for a set time
(``synack_ms``): a server cannot delay its own handshake (the kernel answers the SYN
before ``accept``), so this is how the HTTP tests' web host (``tests/support/web.py``)
gets a slow connect phase, exactly the extra connect time a far server would add. Held
SYN-ACKs wait in a queue of their own: they hold up no other packet of the path.

The spec (JSON): ``links``: name -> ``outer``, ``inner``: [netns or null, TUN device];
``peers``: region -> its /24 and /64 prefixes; ``params``: link name -> ``paths``
(region -> [round trip ms, one-way jitter ms]), and optionally ``extra_ms`` (round
trip), ``loss`` (0 to 1, toward the server), ``dark``, ``synack_ms`` (server port ->
ms). A packet of no known region has no path delay. Every figure is a finite number:
a delay from 0 to ``MAX_MS``, a loss from 0 to 1. A spec that says otherwise is refused
whole: at the start the wire does not start, and on SIGHUP it keeps the parameters it
had (and says why on its standard error). A NaN deadline would never come due, and the
loop would spin on it.

The timing: ``select`` sleeps until a little before the earliest packet is due (timer
slack 1 µs, so the kernel wakes it on time), then the loop spins the last stretch. What
it costs and how close it comes is measured by ``bench/lab_forwarder.py`` with tcpdump
on both sides.

Run by the lab's daemon: ``python -m popwatch_lab.wire SPEC.json``; SIGHUP re-reads the
spec's parameters (not its links), SIGTERM stops.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import heapq
import ipaddress
import json
import os
import random
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from popwatch_lab.netns import open_tun

#: the loop sleeps until this long before a packet is due, then spins
SPIN_S: Final = 0.0002
PR_SET_TIMERSLACK: Final = 29
#: the longest delay a spec may ask for (ms): a minute, more than any probe's timeout
MAX_MS: Final = 60_000.0


@dataclass
class Link:
    """One server's link: ``outer`` in the backbone, ``inner`` in the server's netns."""

    name: str
    outer_fd: int
    inner_fd: int
    #: peer (region) -> (one-way delay s, jitter s)
    paths: dict[str, tuple[float, float]] = field(default_factory=dict)
    extra_s: float = 0.0  # one way: half the extra round trip
    loss: float = 0.0  # toward the server
    dark: bool = False
    #: server port -> seconds its SYN-ACKs are held (on a queue of their own)
    synack_s: dict[int, float] = field(default_factory=dict)
    #: when the last packet of each queue (a path, or its held SYN-ACKs) and direction
    #: (True: toward the server) is due
    last_due: dict[tuple[str, bool], float] = field(default_factory=dict)


def figure(value: object, what: str, top: float = MAX_MS) -> float:
    """``value`` if it is a finite number from 0 to ``top``, as a float; else ValueError
    naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= top:
        raise ValueError(f"{what} must be a number from 0 to {top:g}, not {value!r}")
    return float(value)


def prefix_key(prefix: str) -> bytes:
    """The bytes of a /24 (IPv4) or /64 (IPv6) network that identify its packets."""
    net = ipaddress.ip_network(prefix)
    length = 3 if net.version == 4 else 8
    if net.prefixlen != length * 8:
        raise ValueError(f"{prefix}: the wire knows peers by /24 and /64 prefixes only")
    return net.network_address.packed[:length]


def peer_key(pkt: bytes, toward_server: bool) -> bytes | None:
    """The remote end's prefix key: the source of a packet toward the server, else its
    destination (IPv4 or IPv6)."""
    if len(pkt) < 20:
        return None
    version = pkt[0] >> 4
    if version == 4:
        at = 12 if toward_server else 16
        return pkt[at : at + 3]
    if version == 6 and len(pkt) >= 40:
        at = 8 if toward_server else 24
        return pkt[at : at + 8]
    return None


def synack_port(pkt: bytes) -> int | None:
    """The source port of a TCP SYN-ACK (IPv4, or IPv6 without extension headers)."""
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 4 and len(pkt) >= 20 and pkt[9] == 6:
        tcp = (pkt[0] & 0x0F) * 4
    elif version == 6 and len(pkt) >= 40 and pkt[6] == 6:
        tcp = 40
    else:
        return None
    if len(pkt) < tcp + 14 or pkt[tcp + 13] & 0x12 != 0x12:  # SYN and ACK
        return None
    return int(struct.unpack_from("!H", pkt, tcp)[0])


class Wire:
    """The forwarder over ``links`` (their fds opened), with ``spec``'s parameters."""

    def __init__(
        self, links: dict[str, Link], spec: dict[str, Any], spec_path: Path | None = None
    ) -> None:
        self.spec_path = spec_path
        self.links = links
        #: fd -> (link, True if packets read here go toward the server)
        self.sources: dict[int, tuple[Link, bool]] = {}
        for link in links.values():
            self.sources[link.outer_fd] = (link, True)
            self.sources[link.inner_fd] = (link, False)
        self.peers: dict[bytes, str] = {}
        self.reload_needed = False
        self.stopping = False
        self.apply(spec)
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.rng = random.Random()  # noqa: S311 - delays, not secrets
        # a signal (or stop()) writes a byte here, so a select with no deadline wakes up
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @classmethod
    def open(cls, spec_path: Path) -> Wire:
        """Open the spec's TUN devices, each from inside its namespace."""
        spec = json.loads(spec_path.read_text())
        links = {}
        for name, ends in spec["links"].items():
            outer = open_tun(ends["outer"][1], ends["outer"][0])
            inner = open_tun(ends["inner"][1], ends["inner"][0])
            links[name] = Link(name, outer, inner)
        wire = cls(links, spec, spec_path)
        signal.set_wakeup_fd(wire.wake_w, warn_on_full_buffer=False)
        return wire

    def stop(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b"x")

    def apply(self, spec: dict[str, Any]) -> None:
        """Take the spec's parameters: peers, path delays, extra delay, loss, dark, and
        SYN-ACK holds. All of them or, when one is out of range (ValueError), none."""
        peers = {prefix_key(p): peer for peer, ps in spec["peers"].items() for p in ps}
        new = {}
        for name in self.links:
            params = spec["params"][name]
            paths = {
                peer: (
                    figure(ms, f"{name}: {peer}'s round trip") / 2000.0,
                    figure(jitter, f"{name}: {peer}'s jitter") / 1000.0,
                )
                for peer, (ms, jitter) in params["paths"].items()
            }
            extra_s = figure(params.get("extra_ms", 0.0), f"{name}: extra_ms") / 2000.0
            loss = figure(params.get("loss", 0.0), f"{name}: loss", 1.0)
            dark = params.get("dark", False)
            if not isinstance(dark, bool):
                raise ValueError(f"{name}: dark must be true or false, not {dark!r}")
            synack_s = {
                int(port): figure(ms, f"{name}: synack_ms of port {port}") / 1000.0
                for port, ms in params.get("synack_ms", {}).items()
                if ms
            }
            new[name] = (paths, extra_s, loss, dark, synack_s)
        self.peers = peers
        for name, (paths, extra_s, loss, dark, synack_s) in new.items():
            link = self.links[name]
            link.paths, link.extra_s, link.loss, link.dark = paths, extra_s, loss, dark
            link.synack_s = synack_s

    def reload(self) -> None:
        """Re-read the spec's parameters; when it cannot be taken, keep the ones the wire
        has (a broken spec must not stop the data plane) and say why."""
        assert self.spec_path is not None
        try:
            self.apply(json.loads(self.spec_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{self.spec_path}: {exc}; the wire keeps its parameters", file=sys.stderr)

    def on_hup(self, *_: object) -> None:
        self.reload_needed = True

    def delay(self, link: Link, pkt: bytes, toward: bool) -> tuple[str, float] | None:
        """The packet's queue (its region's path; its held SYN-ACKs apart) and seconds
        to hold it; None to drop it."""
        if link.dark or (toward and link.loss and self.rng.random() < link.loss):
            return None
        key = peer_key(pkt, toward)
        peer = self.peers.get(key, "") if key else ""
        base, jitter = link.paths.get(peer, (0.0, 0.0))
        d = base + link.extra_s
        if jitter:
            d += self.rng.gauss(0.0, jitter)
        d = max(d, 0.0)
        if not toward and link.synack_s:
            hold = link.synack_s.get(synack_port(pkt) or -1)
            if hold:
                return f"{peer} syn-ack", d + hold
        return peer, d

    def read(self, fd: int, now: float) -> None:
        link, toward = self.sources[fd]
        dst = link.inner_fd if toward else link.outer_fd
        for _ in range(256):
            try:
                pkt = os.read(fd, 65535)
            except BlockingIOError:
                return
            held = self.delay(link, pkt, toward)
            if held is None:
                continue
            # FIFO per queue and direction: jitter never reorders a flow's packets, and
            # a far region's packets never hold up a near one's
            path = (held[0], toward)
            due = max(now + held[1], link.last_due.get(path, 0.0))
            link.last_due[path] = due
            if due <= now and not self.heap:
                os.write(dst, pkt)
                continue
            self.seq += 1
            heapq.heappush(self.heap, (due, self.seq, dst, pkt))

    def run(self) -> None:
        fds = [*self.sources, self.wake_r]
        heap = self.heap
        clock = time.perf_counter
        while True:
            if self.stopping:
                return
            if self.reload_needed and self.spec_path is not None:
                self.reload_needed = False
                self.reload()
            now = clock()
            while heap and heap[0][0] <= now:
                _, _, dst, pkt = heapq.heappop(heap)
                try:  # noqa: SIM105 - the hot path: no context manager per packet
                    os.write(dst, pkt)
                except OSError:
                    pass  # the device is going away (the lab is stopping)
                now = clock()
            timeout = None if not heap else max(0.0, heap[0][0] - now - SPIN_S)
            ready, _, _ = select.select(fds, [], [], timeout)
            now = clock()
            for fd in ready:
                if fd == self.wake_r:
                    os.read(fd, 512)
                else:
                    self.read(fd, now)
            if heap and not ready:
                due = heap[0][0]
                while clock() < due:  # the last stretch: timers alone wake up late
                    pass


def tune(realtime: bool) -> None:
    """1 µs timer slack, so select wakes when asked; SCHED_FIFO if ``realtime``."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except PermissionError:
            print("SCHED_FIFO refused: running at normal priority", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("spec", type=Path, help="the JSON spec the lab's daemon writes")
    ap.add_argument("--realtime", action="store_true", help="run under SCHED_FIFO")
    args = ap.parse_args()
    wire = Wire.open(args.spec)
    tune(args.realtime)
    gc.freeze()  # the loop makes no reference cycles: no collector pauses mid-packet
    gc.disable()
    signal.signal(signal.SIGHUP, wire.on_hup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        wire.run()


if __name__ == "__main__":
    main()

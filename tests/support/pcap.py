"""Packet captures for tests and benchmarks: tcpdump started and stopped, pcap files read.

``capture`` runs tcpdump with nanosecond stamps on a device (in a network namespace, or
pinned to a core, if asked), returns once it listens, and on the way out stops it only
after it has written every packet the kernel handed it. ``read`` parses the pcap file
itself (no ``tcpdump -r``): each IPv4 or IPv6 packet with its UDP or TCP ports, TCP flags,
ICMP type, code, echo id and sequence, and its payload. Built on that, for what the
callers match: DNS messages (``dns``), DNS round trips (``dns_round_trips``), and echo
request -> reply and SYN -> SYN-ACK round trips (``exchanges``).
"""

from __future__ import annotations

import contextlib
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from probe.wire import NS

_CAPTURED = re.compile(rb"(\d+) packets? captured")
_DROPPED = re.compile(rb"(\d+) packets? dropped by kernel")


@dataclass
class Capture:
    """A running (then stopped) tcpdump; ``captured`` and ``dropped`` once stopped."""

    path: Path
    proc: subprocess.Popen[bytes]
    captured: int | None = None
    dropped: int | None = None
    report: str = ""  # tcpdump's standard error: its statistics, any complaint

    def _poll_captured(self, timeout: float = 5.0) -> int | None:
        """Ask tcpdump (SIGUSR1) how many packets it has written so far; None if it does
        not answer."""
        assert self.proc.stderr is not None
        self.proc.send_signal(signal.SIGUSR1)
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                return None
            line = self.proc.stderr.readline()
            if not line:
                return None  # it exited
            if m := _CAPTURED.search(line):
                return int(m.group(1))
        return None

    def stop(self, settle: int = 3, every: float = 0.05) -> None:
        """Stop tcpdump once it has caught up: SIGTERM drops what it has not read from the
        kernel yet, so wait until its count of written packets holds for ``settle``
        answers in a row (each answer shows it was awake and reading)."""
        last, still = -1, 0
        while still < settle:
            time.sleep(every)
            n = self._poll_captured()
            if n is None:  # it died, or is stuck: stop it all the same
                break
            still, last = (still + 1 if n == last else 0), n
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        self.report = err.decode(errors="replace").strip()
        # the last statistics are tcpdump's own at exit
        captured, dropped = _CAPTURED.findall(err), _DROPPED.findall(err)
        if captured and dropped:
            self.captured, self.dropped = int(captured[-1]), int(dropped[-1])


@contextlib.contextmanager
def capture(
    path: Path,
    bpf: str,
    dev: str = "lo",
    *,
    netns: str | None = None,
    cpu: int | None = None,
    snaplen: int | None = None,
    buffer_kib: int = 65536,
    immediate: bool = True,
) -> Iterator[Capture]:
    """tcpdump of what ``bpf`` selects on ``dev`` (inside ``netns``; pinned to core
    ``cpu``) into ``path``, nanosecond stamps, each packet written as it comes.

    ``snaplen`` cuts each packet (headers are often enough, and small frames keep a
    burst inside the ring); ``buffer_kib`` is the kernel ring. ``immediate`` (tcpdump's
    ``--immediate-mode``): each packet wakes tcpdump as it passes; without it the kernel
    hands over blocks, and a sender is not slowed by waking tcpdump on its way out (a
    few µs on an idle machine, between the capture's stamp and the driver's). On the way
    out tcpdump is stopped without losing what it still has to write; the yielded
    ``Capture`` then says how many packets it wrote and how many the kernel dropped (a
    warning is printed when that is not 0; callers that need every packet assert on
    ``dropped``).
    """
    argv = ["tcpdump", "-i", dev, "-nn", "-U", "-B", str(buffer_kib)]
    if immediate:
        argv.append("--immediate-mode")
    if snaplen is not None:
        argv += ["-s", str(snaplen)]
    argv += ["--time-stamp-precision=nano", "-w", str(path), bpf]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    # unbuffered: each statistics line is read as it comes (select on the descriptor)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode(errors="replace")
    if "listening" not in line:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"tcpdump did not start: {line}{err.decode(errors='replace')}")
    cap = Capture(path, proc)
    try:
        yield cap
    finally:
        cap.stop()
        if cap.dropped != 0:
            print(f"  tcpdump ({dev}): {cap.report}", file=sys.stderr)


# ----------------------------------------------------------------------------- reading

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01
ECHO_REQUEST = {ICMP: 8, ICMP6: 128}
ECHO_REPLY = {ICMP: 0, ICMP6: 129}

#: link type -> (offset of the EtherType, offset of the IP header); None: raw IP
_LINKS: dict[int, tuple[int, int] | None] = {
    1: (12, 14),  # Ethernet (loopback, veth)
    113: (14, 16),  # Linux cooked (SLL)
    276: (0, 20),  # Linux cooked v2 (SLL2)
    101: None,  # raw IP (TUN devices)
    12: None,
    14: None,
}


@dataclass(slots=True)
class Packet:
    """One IP packet of a capture; ports and flags for UDP and TCP, type, code, id and
    sequence for ICMP (id and sequence only for echo), ``payload`` after the header."""

    ts_ns: int  # capture time, epoch ns
    family: int  # 4 or 6
    proto: int  # TCP, UDP, ICMP, ICMP6, ...
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    flags: int = 0  # TCP
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    payload: bytes = b""
    ttl: int = 0  # the IPv4 TTL or IPv6 hop limit, as captured

    @property
    def syn(self) -> bool:
        return self.proto == TCP and self.flags & (SYN | ACK | RST | FIN) == SYN

    @property
    def syn_ack(self) -> bool:
        return self.proto == TCP and self.flags & (SYN | ACK | RST | FIN) == SYN | ACK


def _packet(ts: int, ip: bytes) -> Packet | None:
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20:
        head = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src, dst = (
            socket.inet_ntop(socket.AF_INET, ip[12:16]),
            socket.inet_ntop(socket.AF_INET, ip[16:20]),
        )
    elif version == 6 and len(ip) >= 40:
        head, proto = 40, ip[6]  # no extension headers: none of ours carries one
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, ip[8:24]),
            socket.inet_ntop(socket.AF_INET6, ip[24:40]),
        )
    else:
        return None
    p = Packet(ts, version, proto, src, dst, ttl=ip[8] if version == 4 else ip[7])
    rest = ip[head:]
    if proto == UDP and len(rest) >= 8:
        p.sport, p.dport = struct.unpack_from("!HH", rest)
        p.payload = rest[8:]
    elif proto == TCP and len(rest) >= 14:
        p.sport, p.dport = struct.unpack_from("!HH", rest)
        p.flags = rest[13]
        p.payload = rest[(rest[12] >> 4) * 4 :]
    elif proto in (ICMP, ICMP6) and len(rest) >= 4:
        p.icmp_type, p.icmp_code = rest[0], rest[1]
        if p.icmp_type in (ECHO_REQUEST[proto], ECHO_REPLY[proto]) and len(rest) >= 8:
            p.icmp_id, p.icmp_seq = struct.unpack_from("!HH", rest, 4)
        p.payload = rest[8:]
    return p


def read(path: Path) -> list[Packet]:
    """Every IPv4 and IPv6 packet of a pcap file (micro- or nanosecond stamps, either
    byte order; Ethernet, Linux cooked or raw IP), in capture order."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\x4d\x3c\xb2\xa1", b"\xd4\xc3\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\x3c\x4d", b"\xa1\xb2\xc3\xd4"):
        order = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    if linktype not in _LINKS:
        raise ValueError(f"{path}: link type {linktype} not handled")
    link = _LINKS[linktype]
    record = struct.Struct(order + "IIII")
    out: list[Packet] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = record.unpack_from(data, off)
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if link is None:
            ip = frame
        else:
            at, start = link
            if len(frame) < start or struct.unpack_from("!H", frame, at)[0] not in (
                0x0800,
                0x86DD,
            ):
                continue
            ip = frame[start:]
        p = _packet(sec * NS + (frac if nano else frac * 1000), ip)
        if p is not None:
            out.append(p)
    return out


# ----------------------------------------------------------------------------- DNS


@dataclass(slots=True)
class DnsPacket:
    ts_ns: int  # capture timestamp (epoch ns)
    src: tuple[str, int]
    dst: tuple[str, int]
    qid: int
    qr: bool
    qname: str
    message: bytes  # the whole DNS message (as far as captured)


def _qname(msg: bytes) -> str:
    labels, i = [], 12
    while i < len(msg) and msg[i]:
        n = msg[i]
        labels.append(msg[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    return ".".join(labels) + "."


def dns(packets: Iterable[Packet]) -> list[DnsPacket]:
    """The DNS messages over UDP among ``packets``: id, QR bit, first question's name."""
    out = []
    for p in packets:
        if p.proto != UDP or len(p.payload) < 12 or p.sport is None or p.dport is None:
            continue
        m = p.payload
        qid = struct.unpack_from("!H", m)[0]
        out.append(
            DnsPacket(
                p.ts_ns, (p.src, p.sport), (p.dst, p.dport), qid, bool(m[2] & 0x80), _qname(m), m
            )
        )
    return out


def dns_round_trips(packets: Iterable[DnsPacket], qname: str) -> list[tuple[int, int]]:
    """``[(query capture ns, wire rtt ns)]`` for each query of ``qname`` that got an answer
    (matched by the querier's address and port and the query id)."""
    pending: dict[tuple[tuple[str, int], int], int] = {}
    out = []
    for p in packets:
        if p.qname != qname:
            continue
        if not p.qr:
            pending[(p.src, p.qid)] = p.ts_ns
        else:
            t0 = pending.pop((p.dst, p.qid), None)
            if t0 is not None:
                out.append((t0, p.ts_ns - t0))
    return out


# ----------------------------------------------------------------------------- ping


@dataclass(frozen=True, slots=True)
class Exchange:
    start_ns: int  # capture time of the echo request or the SYN
    rtt_ns: int  # -> capture time of its echo reply or SYN-ACK


def exchanges(packets: Iterable[Packet]) -> list[Exchange]:
    """Echo request -> reply (by id and sequence) and SYN -> SYN-ACK (by the client's
    address and port), in the order the replies came; a repeated request or SYN counts
    from its last copy."""
    pending: dict[tuple[object, ...], int] = {}
    out = []
    for p in packets:
        if p.icmp_id is not None:
            key: tuple[object, ...] = ("icmp", p.icmp_id, p.icmp_seq)
            start = p.icmp_type == ECHO_REQUEST[p.proto]
        elif p.syn:
            key, start = ("tcp", p.src, p.sport), True
        elif p.syn_ack:
            key, start = ("tcp", p.dst, p.dport), False
        else:
            continue
        if start:
            pending[key] = p.ts_ns
        elif (t0 := pending.pop(key, None)) is not None:
            out.append(Exchange(t0, p.ts_ns - t0))
    return out

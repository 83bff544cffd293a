"""The trace check: the path to a server, hop by hop, Paris-style and unprivileged.

One datagram socket carries the whole trace, so every query of it is one flow (the same
addresses, ports and protocol) and a per-flow load balancer keeps it on one path. Each
query goes out with a TTL (IPv6: hop limit) of 1, 2, ... up to ``max_hops``,
``queries_per_hop`` at each, one at a time. A router that drops it for its TTL sends an
ICMP time-exceeded, which the kernel puts on the socket's error queue (``IP_RECVERR`` /
``IPV6_RECVERR``) with the router's address (``SO_EE_OFFENDER``), as ``tracepath``
reads it: no raw socket, no capability.

* ``udp``: a real DNS query to ``port``: the destination answers it (with ``nsid``, its
  NSID names the site at the end of the path), or says port-unreachable;
* ``icmp``: an echo request on a ping socket (the probe's group must be in
  ``net.ipv4.ping_group_range``); the destination sends the echo reply;
* ``tcp``: a SYN to ``port`` (53), each from a new socket bound to the trace's one
  source port; the destination answers SYN-ACK or RST (:class:`_TcpTracer`).

Round trips are kernel stamps: the query's TX stamp from the error queue (numbered by
``SOF_TIMESTAMPING_OPT_ID``; taken as it enters the device layer, ``TX_SCHED``) to the
RX stamp of the ICMP error or of the answer. Where a stamp is missing (a SYN has no TX
stamp) the hop's figures are the user-space clock's, and the record says
``timestamping: user``. The trace ends when the destination answers (or says it cannot
be reached), or at ``max_hops``. ``path_id`` is a hash of the responding addresses in
order (``*`` for a hop that did not answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import random
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from probe import dnswire, errors, net
from probe.checks import Addresses, Check, Once, fmt_ms, ms, target_from_flags
from probe.targets import TraceTarget
from probe.wire import TraceHop, TraceRecord

# <linux/in.h> IP_RECVERR, <linux/in6.h> IPV6_RECVERR and IPV6_UNICAST_HOPS
_RECVERR: Final = {4: (socket.IPPROTO_IP, 11), 6: (socket.IPPROTO_IPV6, 25)}
_TTL: Final = {4: (socket.IPPROTO_IP, socket.IP_TTL), 6: (socket.IPPROTO_IPV6, 16)}
# <linux/errqueue.h>
_ORIGIN_ICMP: Final = {2, 3}  # SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6
_ORIGIN_TIMESTAMPING: Final = 4
_EE: Final = struct.Struct("IBBBBII")  # struct sock_extended_err
# SOF_TIMESTAMPING_TX_SCHED | RX_SOFTWARE | SOFTWARE | OPT_ID | OPT_TSONLY. The TX stamp
# is the scheduler's (the query entering the device layer, where a capture of it is also
# taken), not the driver's (TX_SOFTWARE): on an idle machine the driver's comes several
# µs after a capture's, the time the capture itself takes over the packet
# (bench/trace_accuracy.py: 5 to 8 µs short with TX_SOFTWARE, 0.2 to 5 µs long with this)
_STAMP_FLAGS: Final = (1 << 8) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 11)
_TCP_STAMP_FLAGS: Final = (1 << 3) | (1 << 4)  # RX_SOFTWARE | SOFTWARE
_IPV6_AUTOFLOWLABEL: Final = 70  # <linux/in6.h>
_ANCBUF: Final = 512
#: messages read from a queue at one go, at most
_MAX_READS: Final = 64
#: ICMP types: time exceeded (v4 11, v6 3); destination unreachable (v4 3, v6 1)
_EXCEEDED: Final = {4: 11, 6: 3}
_UNREACHABLE: Final = {4: 3, 6: 1}
#: family -> (protocol, echo request type, echo reply type)
_ECHO: Final = {4: (socket.IPPROTO_ICMP, 8, 0), 6: (socket.IPPROTO_ICMPV6, 128, 129)}

_random = random.Random()  # noqa: S311 - matching answers, not secrecy


@dataclass(frozen=True, slots=True, eq=False)
class TraceJob:
    """One series: a target's trace to one address."""

    target: TraceTarget
    address: str
    kind: str = field(default="trace", init=False)
    family: int = field(init=False)
    transport: str = field(init=False)  # the method, udp | icmp (the metrics label)
    key: str = field(init=False)
    deadline: float | None = field(init=False)  # the outer bound: every hop timing out
    base: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        t = self.target
        setf = object.__setattr__
        address = ipaddress.ip_address(self.address).compressed
        setf(self, "address", address)
        setf(self, "family", 6 if ":" in address else 4)
        setf(self, "transport", t.method)
        setf(self, "key", f"trace|{t.name}|{address}|{t.method}")
        setf(self, "deadline", t.timeout + 5.0)
        setf(
            self,
            "base",
            {
                "target": t.name,
                "server": address,
                "method": t.method,
                "port": t.port if t.method != "icmp" else None,
                "topology": t.topology,
                "provider": t.provider or None,
                "family": self.family,
            },
        )

    @property
    def interval(self) -> float:
        return self.target.interval


def path_id(hops: Sequence[TraceHop]) -> str:
    """A stable name of the path: a hash of its responding addresses in order."""
    text = "|".join(h.addr or "*" for h in hops)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(slots=True)
class _Heard:
    """What came back for one query: from whom, what, when (RX stamp, or user clock)."""

    addr: str
    kind: str  # time-exceeded | reply | unreachable
    rx_ns: int | None
    user_ns: int
    nsid: str | None = None


class _Tracer:
    """One trace's socket, and what it reads from it."""

    def __init__(self, job: TraceJob) -> None:
        self.job = job
        fam = socket.AF_INET6 if job.family == 6 else socket.AF_INET
        proto = _ECHO[job.family][0] if job.transport == "icmp" else 0
        self.sock = socket.socket(fam, socket.SOCK_DGRAM, proto)
        self.sock.setblocking(False)
        level, opt = _RECVERR[job.family]
        self.sock.setsockopt(level, opt, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, net.SO_TIMESTAMPING, _STAMP_FLAGS)
            self.kernel = True
        except OSError:
            self.kernel = False
        self.dest = (job.address, job.target.port if job.transport == "udp" else 0)
        self.sends = 0  # the kernel's OPT_ID counter: the n-th send's stamp has n
        self.tx: dict[int, int] = {}
        self.query_id = _random.getrandbits(16)
        if job.transport == "udp":
            t = job.target
            q = dnswire.query_wire(t.qname, dnswire.QTYPE_CODES["SOA"], edns=True, nsid=t.nsid)
            self.template = q
        self.readable = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self.readable.set)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def payload(self, seq: int) -> bytes:
        if self.job.transport == "udp":
            return seq.to_bytes(2, "big") + self.template[2:]
        request = _ECHO[self.job.family][1]
        # type, code, checksum and ID (the kernel's), sequence
        return struct.pack("!BBHHH", request, 0, 0, 0, seq) + b"popwatch-trace"

    def send(self, ttl: int, seq: int) -> tuple[int, int]:
        """Send query ``seq`` with ``ttl``; its send index and the user clock."""
        level, opt = _TTL[self.job.family]
        self.sock.setsockopt(level, opt, ttl)
        user_ns = time.time_ns()
        self.sock.sendto(self.payload(seq), self.dest)
        index = self.sends
        self.sends += 1
        return index, user_ns

    def _matches(self, seq: int, data: bytes, quoted: bool) -> bool:
        """Is ``data`` (an answer, or the quoted start of our query) about query ``seq``?"""
        if self.job.transport == "udp":
            if quoted and len(data) < 2:  # a router that quotes no more than the UDP header
                return True
            return data[:2] == seq.to_bytes(2, "big")
        if quoted:  # the quoted echo request: type, code, checksum, id, sequence
            return len(data) < 8 or data[6:8] == seq.to_bytes(2, "big")
        reply = _ECHO[self.job.family][2]
        return data[:1] == bytes((reply,)) and data[6:8] == seq.to_bytes(2, "big")

    def read(self, seq: int) -> _Heard | None:
        """Everything queued now; the answer to ``seq`` if it is among it."""
        heard = None
        for flags in (socket.MSG_ERRQUEUE, 0):
            for _ in range(_MAX_READS):  # bounded: a socket that keeps failing ends it
                try:
                    data, anc, _, addr = self.sock.recvmsg(2048, _ANCBUF, flags)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # a pending socket error (sk_err), reported once
                    continue
                got = self._message(seq, data, anc, addr, flags)
                heard = heard or got
        return heard

    def _message(
        self, seq: int, data: bytes, anc: list[tuple[int, int, bytes]], addr: Any, flags: int
    ) -> _Heard | None:
        rx, err = _ancillary(anc)
        if flags == 0:  # an answer from the destination
            if not self._matches(seq, data, quoted=False):
                return None
            nsid = None
            if self.job.transport == "udp":
                try:
                    answer = dnswire.parse(data)
                except dnswire.MalformedAnswer:
                    return None
                nsid = answer.nsid.decode("utf-8", "replace") if answer.nsid else None
            return _Heard(self.job.address, "reply", rx, time.time_ns(), nsid)
        if err is None:
            return None
        _errno, origin, _type, _code, _pad, _info, ee_data = _EE.unpack_from(err)
        if origin == _ORIGIN_TIMESTAMPING:
            if rx is not None:
                self.tx[ee_data] = rx
            return None
        if origin not in _ORIGIN_ICMP or not self._matches(seq, data, quoted=True):
            return None
        return _icmp_heard(err, rx, self.job.family)

    async def query(self, ttl: int, seq: int, wait_s: float) -> tuple[_Heard | None, int | None]:
        """One query at ``ttl``: what answered it and its round trip in ns (None: none)."""
        index, sent_user = self.send(ttl, seq)
        deadline = self.loop.time() + wait_s
        heard = None
        while heard is None:
            self.readable.clear()
            heard = self.read(seq)
            if heard is not None:
                break
            left = deadline - self.loop.time()
            if left <= 0:
                return None, None
            try:
                await asyncio.wait_for(self.readable.wait(), left)
            except TimeoutError:
                heard = self.read(seq)
                if heard is None:
                    return None, None
        if index not in self.tx:
            self.read(seq)  # a TX stamp late on the queue
        tx = self.tx.pop(index, None)
        if tx is not None and heard.rx_ns is not None:
            return heard, heard.rx_ns - tx
        self.kernel = False
        return heard, heard.user_ns - sent_user


class _TcpTracer:
    """``tcp``: a SYN to ``port`` per query, each from a new socket bound to the same
    source port, with no automatic IPv6 flow label (so the same flow: one 5-tuple, and
    label 0, for the whole trace; a router may hash on the label). A router's
    time-exceeded for a connecting socket reaches its error queue (the kernel queues the
    ICMP errors of a socket in SYN-SENT when ``IP_RECVERR`` is on), with the router's
    address and an RX stamp; the destination answers SYN-ACK (connected) or RST (port
    closed). A SYN carries no data, so it has no TX stamp: its send is the user clock just
    before ``connect()`` (the SYN goes out inside the call), and the record says
    ``timestamping: user``; a SYN-ACK's round trip is the kernel's own SYN -> SYN-ACK
    sample (``TCP_INFO``)."""

    kernel = False  # the sends are the user clock's

    def __init__(self, job: TraceJob) -> None:
        self.job = job
        self.family = socket.AF_INET6 if job.family == 6 else socket.AF_INET
        self.dest = (job.address, job.target.port)
        self.port = 0  # the trace's source port, the first socket's
        self.query_id = 0
        self.loop = asyncio.get_running_loop()

    def close(self) -> None:
        pass  # each query's socket is closed with it

    def _socket(self, ttl: int) -> socket.socket:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            s.setsockopt(*_RECVERR[self.job.family], 1)
            with contextlib.suppress(OSError):  # RX stamps only: OPT_ID needs a connection
                s.setsockopt(socket.SOL_SOCKET, net.SO_TIMESTAMPING, _TCP_STAMP_FLAGS)
            s.setsockopt(*_TTL[self.job.family], ttl)
            if self.family == socket.AF_INET6:  # the flow label is of the flow: 0, not
                with contextlib.suppress(OSError):  # a random one per socket
                    s.setsockopt(socket.IPPROTO_IPV6, _IPV6_AUTOFLOWLABEL, 0)
            s.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", self.port))  # noqa: S104 - our source port, any address
            self.port = self.port or s.getsockname()[1]
        except OSError:
            s.close()
            raise
        return s

    async def query(self, ttl: int, seq: int, wait_s: float) -> tuple[_Heard | None, int | None]:
        """One SYN at ``ttl``: what answered it and its round trip in ns (None: none)."""
        s = self._socket(ttl)
        ready = asyncio.Event()
        fd = s.fileno()
        try:
            sent = time.time_ns()  # the SYN goes out inside connect()
            with contextlib.suppress(BlockingIOError):  # in progress: the SYN is out
                s.connect(self.dest)
            self.loop.add_writer(fd, ready.set)  # an error or the connection: writable
            try:
                await asyncio.wait_for(ready.wait(), wait_s)
            except TimeoutError:
                return None, None
            finally:
                self.loop.remove_writer(fd)
            now = time.time_ns()
            heard = self._icmp(s)
            if heard is not None:
                rx = heard.rx_ns if heard.rx_ns is not None else now
                return heard, rx - sent
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:  # SYN-ACK: connected
                kernel_ns = net.kernel_connect_ns(s)
                heard = _Heard(self.job.address, "reply", None, now)
                return heard, kernel_ns if kernel_ns is not None else now - sent
            if err == errno.ECONNREFUSED:  # RST: the destination, its port closed
                return _Heard(self.job.address, "reply", None, now), now - sent
            return None, None  # a local error: nothing came back
        finally:
            s.close()

    def _icmp(self, s: socket.socket) -> _Heard | None:
        """The ICMP error on the socket's queue, if one is."""
        try:
            _, anc, _, _ = s.recvmsg(512, _ANCBUF, socket.MSG_ERRQUEUE)
        except OSError:
            return None
        rx, err = _ancillary(anc)
        if err is None or _EE.unpack_from(err)[1] not in _ORIGIN_ICMP:
            return None
        return _icmp_heard(err, rx, self.job.family)


def _ancillary(anc: list[tuple[int, int, bytes]]) -> tuple[int | None, bytes | None]:
    """A message's RX stamp (epoch ns) and extended error (``sock_extended_err`` and the
    offender's address after it), where it has them."""
    rx = err = None
    for level, what, value in anc:
        if level == socket.SOL_SOCKET and what == net.SO_TIMESTAMPING and len(value) >= 16:
            sec, nsec = struct.unpack_from("qq", value)
            rx = sec * 1_000_000_000 + nsec or None
        elif (level, what) in _RECVERR.values() and len(value) >= _EE.size:
            err = value
    return rx, err


def _icmp_heard(err: bytes, rx: int | None, family: int) -> _Heard | None:
    """What an ICMP error (origin ICMP) says: time-exceeded or unreachable, and who."""
    icmp_type = _EE.unpack_from(err)[2]
    offender = _offender(err[_EE.size :], family) or ""
    if icmp_type == _EXCEEDED[family]:
        return _Heard(offender, "time-exceeded", rx, time.time_ns())
    if icmp_type == _UNREACHABLE[family]:
        return _Heard(offender, "unreachable", rx, time.time_ns())
    return None


def _offender(raw: bytes, family: int) -> str | None:
    """The address in a ``sockaddr_in`` / ``sockaddr_in6`` (SO_EE_OFFENDER)."""
    if family == 4 and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == 6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


async def measure(job: TraceJob) -> TraceRecord:
    """Trace ``job``'s path once (failures are records too)."""
    started = time.time_ns()
    tracer: _Tracer | _TcpTracer
    try:
        tracer = _TcpTracer(job) if job.transport == "tcp" else _Tracer(job)
    except OSError as exc:  # EACCES: the ping group range leaves our group out
        return failure(job, errors.classify_icmp_socket(exc, "trace"), started)
    try:
        return await _trace(job, tracer, started)
    except OSError as exc:
        return failure(job, exc, started)
    finally:  # a cancelled or timed-out trace too
        tracer.close()


async def _trace(job: TraceJob, tracer: _Tracer | _TcpTracer, started: int) -> TraceRecord:
    """TTL 1, 2, ...: each hop's queries, until the destination (or the end) answers."""
    t = job.target
    hops: list[TraceHop] = []
    reached = False
    site = None
    seq = tracer.query_id
    for ttl in range(1, t.max_hops + 1):
        rtts: list[float] = []
        others: list[str] = []
        addr = None
        kind = None
        for _ in range(t.queries_per_hop):
            seq = (seq + 1) & 0xFFFF
            heard, rtt_ns = await tracer.query(ttl, seq, t.hop_timeout_s)
            if heard is None:
                continue
            addr = addr or heard.addr
            if heard.addr != addr and heard.addr not in others:
                others.append(heard.addr)
            kind = kind or heard.kind
            site = site or heard.nsid
            if rtt_ns is not None and rtt_ns >= 0:
                rtts.append(ms(rtt_ns) or 0.0)
        hops.append(
            TraceHop(
                ttl=ttl,
                addr=addr,
                rtt_ms=rtts,
                sent=t.queries_per_hop,
                kind=kind,  # type: ignore[arg-type]
                others=others,
            )
        )
        if kind in ("reply", "unreachable"):  # the end, or where the path ends
            reached = addr == job.address
            break
    return TraceRecord(
        ts=started,
        timestamping="kernel" if tracer.kernel else "user",
        hops=hops,
        reached=reached,
        path_id=path_id(hops),
        site=site,
        **job.base,
    )


def failure(job: TraceJob, exc: BaseException, ts: int) -> TraceRecord:
    err = errors.classify(exc, "trace")
    return TraceRecord(
        ts=ts,
        timestamping="user",
        hops=[],
        reached=False,
        path_id=path_id([]),
        error=err.error,
        **job.base,
    )


# --------------------------------------------------------------------------- the seam


def jobs(target: TraceTarget, addresses: Addresses) -> list[TraceJob]:
    return [TraceJob(target, addr) for fam, addr in addresses if fam in target.families]


def _host(target: TraceTarget) -> tuple[str, list[int]]:
    return target.server, list(target.families)


def _outcome(r: TraceRecord) -> str:
    if r.error is not None:
        return r.error.split(":", 1)[0]
    return "ok" if r.reached else "unreached"


def _row(r: TraceRecord) -> list[str]:
    """The whole trace as mtr's report prints it: one line per hop."""
    lines = []
    for h in r.hops:
        rtts = sorted(h.rtt_ms)
        loss = 100 * (h.sent - len(h.rtt_ms)) / h.sent
        avg = sum(rtts) / len(rtts) if rtts else None
        lines.append(
            f"{h.ttl:>3}. {h.addr or '???':<39} {loss:5.1f}% {h.sent:>4} "
            f"{fmt_ms(rtts[0] if rtts else None):>9} {fmt_ms(avg):>9} "
            f"{fmt_ms(rtts[-1] if rtts else None):>9}"
        )
    tail = f"  reached, site {r.site}" if r.reached and r.site else ""
    tail = tail or (
        "  reached" if r.reached else f"  not reached{': ' + r.error if r.error else ''}"
    )
    head = f"to {r.server} ({r.method}, IPv{r.family})\n"
    return [head + "\n".join(lines) + f"\n     path {r.path_id} ({r.timestamping} stamps){tail}"]


def _summary(records: Sequence[TraceRecord]) -> str:
    paths = sorted({r.path_id for r in records})
    reached = sum(1 for r in records if r.reached)
    n, k = len(records), len(paths)
    return f"{n} trace{'s' * (n != 1)}, {reached} reached, {k} distinct path{'s' * (k != 1)}"


def _add_arguments(once: argparse.ArgumentParser) -> None:
    g = once.add_argument_group("trace (--trace udp|icmp|tcp ADDRESS)")
    g.add_argument(
        "--trace",
        nargs=2,
        metavar=("METHOD", "SERVER"),
        help="trace the path to SERVER: udp (a DNS query to port 53, with --qname and "
        "--nsid), icmp (echo requests on a ping socket) or tcp (a SYN to port 53); one "
        "line per hop, as mtr's report",
    )
    g.add_argument("--max-hops", type=int, default=30, help="the largest TTL tried (30)")
    g.add_argument("--queries-per-hop", type=int, default=3, help="queries at each TTL (3)")
    g.add_argument("--hop-timeout", type=float, default=1.0, help="seconds per query (1)")


def _once_target(args: argparse.Namespace) -> TraceTarget:
    method, server = args.trace
    spec: dict[str, Any] = {
        "name": "once",
        "topology": "unicast",
        "server": server,
        "method": method,
        "max_hops": args.max_hops,
        "queries_per_hop": args.queries_per_hop,
        "hop_timeout_s": args.hop_timeout,
        "families": args.families,
        "nsid": bool(getattr(args, "nsid", False)),
        "interval": 86400,
    }
    if getattr(args, "qname", None):
        spec["qname"] = args.qname
    return target_from_flags(spec, TraceTarget)


CHECK: Final = Check[TraceTarget, TraceJob, TraceRecord](
    kind="trace",
    target_type=TraceTarget,
    record_type=TraceRecord,
    host=_host,
    jobs=jobs,
    measure=measure,
    failure=failure,
    outcome=_outcome,
    answered=lambda r: r.reached,
    columns=(("trace: hop, address, loss %, sent, rtt_ms min / avg / max", 0),),
    row=_row,
    summary=_summary,
    once=Once(
        add_arguments=_add_arguments,
        wanted=lambda args: getattr(args, "trace", None) is not None,
        target=_once_target,
        hint="--trace udp|icmp|tcp SERVER",
    ),
)

"""The ping check: the network's share of a round trip, without the server's.

A DNS ``rtt_ms`` minus the ping ``rtt_ms`` to the same address is the time the server
itself spent. Two methods, one packet exchange each, no retry:

* ``icmp``: one echo request on an unprivileged ping socket (``SOCK_DGRAM`` with
  ``IPPROTO_ICMP``, or ``IPPROTO_ICMPV6``), kernel-stamped like a DNS query over UDP
  (:class:`probe.net.UdpFlow`): ``rtt_ms`` lies between the request's TX stamp and the
  reply's RX stamp. The kernel picks the echo ID (the socket's "port") and the checksum;
  a reply is ours when it comes from the address pinged with our sequence number and our
  payload. Where ping sockets are forbidden (``net.ipv4.ping_group_range``) the record
  says so, and nothing else is tried in their place.
* ``tcp``: a connect to ``port``. ``rtt_ms`` is the kernel's RTT sample of the handshake
  (``TCP_INFO``): SYN sent -> SYN-ACK received, as TCP stamped them. Without that sample
  (a retransmitted SYN, another OS) it is ``connect()`` -> established timed in user space,
  and the record says ``user``. A RST is ``refused``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import random
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from probe import errors, net
from probe.checks import Addresses, Check, Once, fmt_ms, ms, rtt_summary, target_from_flags
from probe.configfile import parse_hostport
from probe.targets import PingTarget
from probe.wire import PingRecord, Timestamping

#: family -> (socket family, protocol, echo request type, echo reply type)
_ECHO: Final = {
    4: (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0),
    6: (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129),
}
#: what a measurement was doing, named in its error: "timeout: echo timed out"
_PHASE: Final = {"icmp": "echo", "tcp": "connect"}
_MAGIC: Final = b"popwatch"  # the echo payload: this, then 8 random bytes

# sequence numbers and payloads from a PRNG seeded by the OS: a syscall per echo for
# os.urandom would cost more than the rest of building it
_random = random.Random()  # noqa: S311 - matching replies, not secrecy
_new_seq = functools.partial(_random.getrandbits, 16)
_new_token = functools.partial(_random.getrandbits, 64)


@dataclass(frozen=True, slots=True, eq=False)
class PingJob:
    """One series: a target's method (icmp or tcp) to one address."""

    target: PingTarget
    address: str  # IP address pinged
    kind: str = field(default="ping", init=False)
    family: int = field(init=False)  # 4 or 6
    transport: str = field(init=False)  # the method, icmp | tcp (the metrics label)
    key: str = field(init=False)  # stable identity of the series (seeds its start offset)
    # icmp bounds itself (the exchange's own deadline); tcp's connect has ``timeout`` and
    # the runner's outer bound is a second back-stop
    deadline: float | None = field(init=False)
    base: dict[str, Any] = field(init=False)  # the record's constant fields

    def __post_init__(self) -> None:
        t = self.target
        setf = object.__setattr__
        address = ipaddress.ip_address(self.address).compressed  # as the kernel reports it
        setf(self, "address", address)
        setf(self, "family", 6 if ":" in address else 4)
        setf(self, "transport", t.method)
        tcp = t.method == "tcp"
        setf(self, "key", f"ping|{t.name}|{address}|{t.method}" + (f"|{t.port}" if tcp else ""))
        setf(self, "deadline", t.timeout + 1.0 if tcp else None)
        setf(
            self,
            "base",
            {
                "target": t.name,
                "server": address,
                "method": t.method,
                "port": t.port if tcp else None,
                "topology": t.topology,
                "provider": t.provider or None,
                "family": self.family,
            },
        )

    @property
    def interval(self) -> float:
        return self.target.interval


def _stamping(job: PingJob) -> Timestamping:
    """How this job's figure is taken when all goes well: "kernel" or "user"."""
    if job.transport == "tcp":
        return "kernel" if hasattr(socket, "TCP_INFO") else "user"
    return "kernel" if net.kernel_timestamping_available() else "user"


def failure(job: PingJob, exc: BaseException, ts: int) -> PingRecord:
    """The record of a ping that got no reply: ``error``, and no ``rtt_ms``."""
    err = errors.classify(exc, _PHASE[job.transport])
    return PingRecord(ts=ts, error=err.error, timestamping=_stamping(job), **job.base)


def _is_reply(reply_type: int, seq: bytes, payload: bytes, data: bytes) -> bool:
    """Is ``data`` (an ICMP message, header first) the echo reply to our request?"""
    return data[:1] == bytes((reply_type,)) and data[6:8] == seq and data[8:] == payload


async def _echo(job: PingJob) -> PingRecord:
    """One ICMP echo request and its reply, kernel-stamped at both ends."""
    family, proto, request, reply = _ECHO[job.family]
    payload = _MAGIC + _new_token().to_bytes(8, "big")
    seq = _new_seq().to_bytes(2, "big")
    wire = struct.pack("!BBHH", request, 0, 0, 0) + seq + payload  # ID, checksum: the kernel's
    started = time.time_ns()
    try:
        flow = net.UdpFlow(family, (job.address, 0), proto)
    except OSError as exc:  # EACCES: net.ipv4.ping_group_range leaves our group out
        return failure(job, errors.classify_icmp_socket(exc, _PHASE["icmp"]), started)
    try:
        deadline = asyncio.get_running_loop().time() + job.target.timeout
        accept = functools.partial(_is_reply, reply, seq, payload)
        ex = await flow.exchange(wire, accept, deadline)
    except Exception as exc:  # every failure is still a measurement
        return failure(job, exc, started)
    finally:
        flow.close()
    return PingRecord(
        ts=ex.sent_ns,
        rtt_ms=ms(ex.rtt_ns),  # request's TX stamp -> reply's RX stamp
        timestamping="kernel" if ex.kernel else "user",
        **job.base,
    )


async def _handshake(job: PingJob) -> PingRecord:
    """One TCP connect: the kernel's SYN -> SYN-ACK sample, or user-space connect time."""
    t = job.target
    family = socket.AF_INET6 if job.family == 6 else socket.AF_INET
    loop = asyncio.get_running_loop()
    started = time.time_ns()
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return failure(job, exc, started)
    try:
        sock.setblocking(False)
        t0 = time.perf_counter_ns()
        async with asyncio.timeout(t.timeout):
            await loop.sock_connect(sock, (job.address, t.port))
        t1 = time.perf_counter_ns()  # connect() called -> established, seen from here
        kernel_ns = net.kernel_connect_ns(sock)  # SYN sent -> SYN-ACK received
    except Exception as exc:  # every failure is still a measurement
        return failure(job, exc, started)
    finally:
        sock.close()
    return PingRecord(
        ts=started,
        rtt_ms=ms(kernel_ns if kernel_ns is not None else t1 - t0),
        timestamping="kernel" if kernel_ns is not None else "user",
        **job.base,
    )


async def measure(job: PingJob) -> PingRecord:
    """Ping ``job``'s address once and return its record (failures are records too)."""
    return await (_echo(job) if job.transport == "icmp" else _handshake(job))


# --------------------------------------------------------------------------- the seam


def jobs(target: PingTarget, addresses: Addresses) -> list[PingJob]:
    """Every series of a target: one per address of a wanted family."""
    return [PingJob(target, addr) for fam, addr in addresses if fam in target.families]


def _unresolved(target: PingTarget, error: str, ts: int) -> list[PingRecord]:
    """A run of a target whose server name has no address: one failure, no family."""
    return [
        PingRecord(
            ts=ts,
            target=target.name,
            server=target.server,
            method=target.method,
            port=target.port if target.method == "tcp" else None,
            error=f"resolve: {error}",
            timestamping="user",
            topology=target.topology,
            provider=target.provider or None,
        )
    ]


def _host(target: PingTarget) -> tuple[str, list[int]]:
    return target.server, list(target.families)


def _outcome(r: PingRecord) -> str:
    return "ok" if r.error is None else r.error.split(":", 1)[0]


def _row(r: PingRecord) -> list[str]:
    server = r.server if r.family == 4 else f"[{r.server}]"
    return [
        server if r.port is None else f"{server}:{r.port}",
        r.method,
        fmt_ms(r.rtt_ms),
        r.timestamping + (f"  {r.error}" if r.error else ""),
    ]


def _summary(records: Sequence[PingRecord]) -> str:
    return rtt_summary("pings", [r.rtt_ms for r in records])


def _add_arguments(once: argparse.ArgumentParser) -> None:
    g = once.add_argument_group("ping (--ping icmp|tcp)")
    g.add_argument(
        "--ping",
        choices=["icmp", "tcp"],
        help="ping --server: icmp echo (the group must be in net.ipv4.ping_group_range), "
        "or tcp: the handshake, SYN -> SYN-ACK, to --port",
    )
    g.add_argument(
        "--port", type=int, help="TCP port for --ping tcp (default 53, or the one in --server)"
    )


def _once_target(args: argparse.Namespace) -> PingTarget:
    """The target ``once --ping`` describes."""
    if not args.server:
        raise ValueError("--ping needs --server HOST")
    host, port = parse_hostport(args.server, 0)
    if args.ping == "icmp" and (port or args.port is not None):
        raise ValueError("--ping icmp has no port: drop it from --server, or use --ping tcp")
    if port and args.port is not None and port != args.port:
        raise ValueError(f"--server says port {port} and --port says {args.port}")
    spec: dict[str, Any] = {
        "name": "once",
        "topology": "unicast",
        "server": host,
        "method": args.ping,
        "port": port or (53 if args.port is None else args.port),
        "families": args.families,
        "interval": args.run_interval,
        "timeout": args.timeout,
    }
    return target_from_flags(spec, PingTarget)


CHECK: Final = Check[PingTarget, PingJob, PingRecord](
    kind="ping",
    target_type=PingTarget,
    record_type=PingRecord,
    host=_host,
    jobs=jobs,
    measure=measure,
    failure=failure,
    outcome=_outcome,
    answered=lambda r: r.rtt_ms is not None,
    columns=(("server", 24), ("method", 6), ("rtt_ms", 9), ("stamp", 6)),
    row=_row,
    summary=_summary,
    once=Once(
        add_arguments=_add_arguments,
        wanted=lambda args: args.ping is not None,
        target=_once_target,
        hint="--ping icmp|tcp",
    ),
    unresolved=_unresolved,
)

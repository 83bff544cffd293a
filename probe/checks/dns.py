"""The DNS check: one query, one packet (or one connection), timed and identified.

``measure(job)`` does only the protocol: build the query, run it over the job's
transport, read the answer. Socket timing lives in :mod:`probe.net`; errors are mapped in
:mod:`probe.errors`; the runner owns deadlines and turns surprises into records.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import random
import re
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from probe import dnswire, doh, errors, net
from probe.checks import Addresses, Check, Once, fmt_ms, ms, rtt_summary, target_from_flags
from probe.configfile import is_ip, parse_hostport
from probe.targets import QTYPES, DnsTarget
from probe.wire import DnsRecord

_CHAOS_NAMES: Final = ("id.server.", "hostname.bind.")


_PORT_KEY: Final = {"udp": "port", "tcp": "port", "tls": "tls_port", "https": "doh_port"}
_PHASES: Final = {"udp": 1, "tcp": 2, "tls": 3, "https": 3}


@dataclass(frozen=True, slots=True, eq=False)
class DnsJob:
    """One series: a target's query, over one transport, to one server address.

    Everything that does not change between runs (the query's wire form, the record's
    constant fields) is worked out here once, so a measurement only patches in an ID.
    """

    target: DnsTarget
    address: str  # IP address of the server
    transport: str  # udp | tcp | tls | https
    qname: str
    qtype: str
    #: a site's unicast address, measured for the target's ``sites`` (the site's id), at
    #: one in ``every`` of the target's intervals; "" for the target's own server
    site: str = ""
    every: int = 1
    site_port: int | None = None  # the site's own DNS port there (UDP and TCP)
    kind: str = field(default="dns", init=False)
    family: int = field(init=False)  # 4 or 6
    port: int = field(init=False)
    key: str = field(init=False)  # stable identity of the series (seeds its start offset)
    # outer bound for the runner: each phase has ``timeout`` of its own. None for UDP: one
    # datagram exchange (two with CHAOS), each under its own hard deadline, where an outer
    # asyncio.timeout would only add cost on the probe's hottest path
    deadline: float | None = field(init=False)
    template: bytes = field(init=False)  # the query with ID 0
    question: tuple[bytes, bytes] = field(init=False)  # (qname lowercased, qtype+qclass)
    base: dict[str, Any] = field(init=False)  # the record's constant fields

    def __post_init__(self) -> None:
        t = self.target
        setf = object.__setattr__
        address = ipaddress.ip_address(self.address).compressed  # as the kernel reports it
        setf(self, "address", address)
        setf(self, "family", 6 if ":" in address else 4)
        port = getattr(t, _PORT_KEY[self.transport])
        if self.site_port is not None and self.transport in ("udp", "tcp"):
            port = self.site_port
        setf(self, "port", port)
        key = f"{t.name}|{address}|{self.transport}|{self.qname}|{self.qtype}"
        if self.site:
            key += f"|site={self.site}"
        setf(self, "key", key)
        phases = _PHASES[self.transport] + (2 if t.identify == "chaos" else 0)
        setf(self, "deadline", None if self.transport == "udp" else t.timeout * phases + 1.0)
        template = _template(
            self.qname,
            self.qtype,
            t.recursion,
            t.dnssec,
            t.edns,
            t.edns_bufsize,
            t.identify == "nsid",
        )
        setf(self, "template", template)
        setf(self, "question", _qparts(template))
        setf(
            self,
            "base",
            {
                "target": t.name,
                "server": address,
                "port": self.port,
                "transport": self.transport,
                "qname": self.qname,
                "qtype": self.qtype,
                "topology": "site" if self.site else t.topology,
                "provider": t.provider or None,
                "family": self.family,
            },
        )

    @property
    def interval(self) -> float:
        return self.target.interval * self.every


@functools.lru_cache(maxsize=65536)
def _template(
    qname: str, qtype: str, rd: bool, dnssec: bool, edns: bool, bufsize: int, nsid: bool
) -> bytes:
    """The query's wire form with ID 0; each measurement patches in a fresh ID."""
    return dnswire.query_wire(
        qname,
        dnswire.QTYPE_CODES[qtype],
        rd=rd,
        edns=edns,
        bufsize=bufsize,
        dnssec=dnssec,
        nsid=nsid,
    )


def _chaos_template(qname: str) -> bytes:
    return dnswire.query_wire(qname, dnswire.QTYPE_CODES["TXT"], dnswire.CLASS_CH)


# Query IDs: a PRNG seeded from the OS, not a syscall per query (os.urandom costs more
# than the rest of building a query). Source ports rotate with the pooled flows (net.UdpPool).
_new_id = functools.partial(random.Random().getrandbits, 16)  # noqa: S311


def _with_id(template: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + template[2:]


def _question_end(wire: bytes) -> int:
    """Offset just past the first question (``wire`` is our own query)."""
    i = 12
    while wire[i]:
        i += 1 + wire[i]
    return i + 5


def _matcher(query: bytes) -> functools.partial[bool]:
    """``accept`` for a UDP exchange of ``query``."""
    return functools.partial(_is_answer, query[:2], *_qparts(query))


def _is_answer(qid: bytes, qname: bytes, qtail: bytes, data: bytes) -> bool:
    """Does ``data`` answer our query? Same ID, QR set, and the same question.

    An answer without a question is taken only with an error rcode (FORMERR, NOTIMP...),
    which some servers send that way.
    """
    if len(data) < 12 or data[:2] != qid or not data[2] & 0x80:
        return False
    qdcount = data[4] << 8 | data[5]
    if qdcount == 0:
        return data[3] & 0x0F != 0
    end = 12 + len(qname)
    return qdcount == 1 and data[12:end].lower() == qname and data[end : end + 4] == qtail


#: the longest site identity a record carries: NSID and CHAOS TXT can be up to 64 KB,
#: which no tag store should hold; a longer one is cut and ends in SITE_CUT
SITE_MAX: Final = 255
SITE_CUT: Final = "…"


#: a backslash InfluxDB's line protocol cannot carry in a tag value: at the end, or before
#: a comma, an equals sign or a space (see collector/store/lineproto.py)
_BARE_BACKSLASH: Final = re.compile(r"\\(?=[ ,=]|$)")


def _text(raw: bytes) -> str:
    """:func:`_identity_text`, remembered for the short identities a fleet's sites send
    again with every answer (a long one, which a hostile server could vary, is not)."""
    return _short_text(raw) if len(raw) <= 64 else _identity_text(raw)


def _identity_text(raw: bytes) -> str:
    """Server identity bytes as text: UTF-8 when printable, else hex; a backslash line
    protocol could not carry written ``\\x5c``; at most SITE_MAX characters, a longer
    one cut and marked with a trailing SITE_CUT. A DNS server chooses these bytes: what
    it sends must never make the collector reject the measurement."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.hex()
    else:
        if not text.isprintable():
            text = raw.hex()
    text = _BARE_BACKSLASH.sub(r"\\x5c", text)
    return text if len(text) <= SITE_MAX else text[: SITE_MAX - 1] + SITE_CUT


_short_text: Final = functools.lru_cache(maxsize=1024)(_identity_text)


def _tcp_frame(buf: bytes) -> int | None:
    return 2 + (buf[0] << 8 | buf[1]) if len(buf) >= 2 else None


def _read(data: bytes) -> dnswire.Answer:
    try:
        return dnswire.parse(data)
    except dnswire.MalformedAnswer as exc:
        raise errors.CheckError(errors.NETERR, "malformed", f"answer: {exc}") from None


async def _identify_chaos(
    flow: net.UdpFlow | net.StreamConn, job: DnsJob, https: bool
) -> tuple[str | None, bool]:
    """Ask the server who it is, on the same flow (same 5-tuple or connection) as the
    query: the identity (None if it gives none), and whether every exchange ended in an
    answer (a pooled flow is given back only then)."""
    for name in _CHAOS_NAMES:
        qid = 0 if https else _fresh_id(flow) if isinstance(flow, net.UdpFlow) else _new_id()
        query = _with_id(_chaos_template(name), qid)
        try:
            data = await _exchange_on(flow, job, query, _qparts(query))
        except (errors.CheckError, OSError, TimeoutError, EOFError, ssl.SSLError):
            return None, False
        txt = _read(data.data).txt
        if txt:
            return _text(txt), True
    return None, True


async def _exchange_on(
    flow: net.UdpFlow | net.StreamConn, job: DnsJob, query: bytes, question: tuple[bytes, bytes]
) -> net.Exchange:
    t = job.target
    if isinstance(flow, net.UdpFlow):
        deadline = asyncio.get_running_loop().time() + t.timeout
        accept = functools.partial(_is_answer, query[:2], *question)  # question: precomputed
        return await flow.exchange(query, accept, deadline)
    if job.transport == "https":
        host = t.tls_name or (t.server if not is_ip(t.server) else _url_host(job.address))
        # HTTP/2 or HTTP/1.1 as the server chose by ALPN; the first query on a connection
        # also sets up HTTP/2 (preface, SETTINGS), within this timeout but outside rtt_ms
        async with asyncio.timeout(t.timeout):
            ex = await doh.exchange(flow, query, host, t.doh_path)
        data = ex.data
    else:
        async with asyncio.timeout(t.timeout):
            ex = await flow.exchange(struct.pack("!H", len(query)) + query, _tcp_frame)
        data = ex.data[2:]
    if not _is_answer(query[:2], *question, data):
        raise errors.CheckError(errors.NETERR, "malformed", "answer does not match the query")
    return net.Exchange(data, ex.sent_ns, ex.rtt_ns, ex.kernel, ex.ignored)


def _qparts(query: bytes) -> tuple[bytes, bytes]:
    end = _question_end(query)
    return query[12 : end - 4].lower(), query[end - 4 : end]


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def failure(
    job: DnsJob,
    exc: BaseException,
    ts: int,
    *,
    phase: str = "",
    connect_ns: int | None = None,
    tls_ns: int | None = None,
) -> DnsRecord:
    """The record of a measurement that got no usable answer: rcode and error, no rtt_ms."""
    err = errors.classify(exc, phase)
    return DnsRecord(
        ts=ts,
        rcode=err.rcode,
        error=err.error,
        connect_ms=ms(connect_ns),
        tls_ms=ms(tls_ns),
        timestamping="kernel" if net.kernel_timestamping_available() else "user",
        site=job.site or None,
        **job.base,
    )


async def measure(job: DnsJob) -> DnsRecord:
    """Time one query of ``job`` and return its record (failures are records too)."""
    if job.transport == "udp":
        return await _measure_udp(job)
    t = job.target
    https = job.transport == "https"
    # RFC 8484 asks DoH clients for ID 0; elsewhere a fresh random ID per query
    query = _with_id(job.template, 0 if https else _new_id())
    family = socket.AF_INET6 if job.family == 6 else socket.AF_INET
    addr = (job.address, job.port)
    started = time.time_ns()
    connect_ns = tls_ns = None
    phase = "connect"
    try:
        async with net.StreamConn(family) as flow:
            async with asyncio.timeout(t.timeout):
                await flow.connect(addr)
            connect_ns = flow.connect_ns
            if https or job.transport == "tls":
                phase = "tls"
                name = t.tls_name or (t.server if not is_ip(t.server) else job.address)
                alpn = ("dot",) if job.transport == "tls" else doh.ALPN
                ctx = net.tls_context(t.tls_ca, t.tls_verify, alpn)
                async with asyncio.timeout(t.timeout):
                    await flow.start_tls(ctx, name)
                tls_ns = flow.tls_ns
            phase = "query"
            ex = await _exchange_on(flow, job, query, job.question)
            answer = _read(ex.data)
            site = _text(answer.nsid) if answer.nsid else None
            if t.identify == "chaos":
                site, _ = await _identify_chaos(flow, job, https)
    except Exception as exc:  # every failure is still a measurement
        return failure(job, exc, started, phase=phase, connect_ns=connect_ns, tls_ns=tls_ns)
    return _record(
        job, ex, answer, site, connect_ns, tls_ns, doh.http_version(flow) if https else None
    )


async def _measure_udp(job: DnsJob) -> DnsRecord:
    """One query on a pooled UDP flow (:class:`probe.net.UdpPool`), given back only when
    it ended in an answer. The query ID differs from every ID the flow carried before,
    so a late answer to an earlier query can never be taken for this one's."""
    started = time.time_ns()
    pool = net.udp_pool()
    clean = False
    try:
        flow = pool.acquire(
            socket.AF_INET6 if job.family == 6 else socket.AF_INET, (job.address, job.port)
        )
        try:
            ex = await _exchange_on(
                flow, job, _with_id(job.template, _fresh_id(flow)), job.question
            )
            answer = _read(ex.data)
            site = _text(answer.nsid) if answer.nsid else None
            clean = True
            if job.target.identify == "chaos":
                site, clean = await _identify_chaos(flow, job, False)
        finally:
            pool.release(flow, clean)
    except Exception as exc:  # every failure is still a measurement
        return failure(job, exc, started, phase="query")
    return _record(job, ex, answer, site, None, None, None)


def _fresh_id(flow: net.UdpFlow) -> int:
    """A random query ID that ``flow`` has not carried before (and now has)."""
    qid = _new_id()
    while qid in flow.ids:
        qid = _new_id()
    flow.ids.add(qid)
    return qid


def _record(
    job: DnsJob,
    ex: net.Exchange,
    answer: dnswire.Answer,
    site: str | None,
    connect_ns: int | None,
    tls_ns: int | None,
    http_version: str | None,
) -> DnsRecord:
    error = None
    if job.site:  # a site's unicast address: its record names the site it was asked of
        if site is not None and site != job.site:
            error = f"identity: site {job.site}'s unicast {job.address} answered as {site}"
        site = job.site
    return DnsRecord(
        ts=ex.sent_ns,
        rcode=answer.rcode,
        rtt_ms=ms(ex.rtt_ns),
        connect_ms=ms(connect_ns),
        tls_ms=ms(tls_ns),
        http_version=http_version,
        timestamping="kernel" if ex.kernel else "user",
        site=site,
        answers=answer.answers,
        size=len(ex.data),
        ttl=answer.ttl,
        serial=answer.serial,
        truncated=answer.truncated,
        error=error,
        **job.base,
    )


# --------------------------------------------------------------------------- the seam


def jobs(target: DnsTarget, addresses: Addresses) -> list[DnsJob]:
    """Every series of a target: address x transport x query; and for each of its
    ``sites``, the same at each of the site's unicast addresses of the target's
    families, every ``site_every`` intervals (records with ``topology: site``)."""
    out = [
        DnsJob(target, addr, transport, q.qname, q.qtype)
        for fam, addr in addresses
        if fam in target.families
        for transport in target.transports
        for q in target.queries
    ]
    for s in target.sites:
        out += [
            DnsJob(
                target,
                addr,
                transport,
                q.qname,
                q.qtype,
                site=s.id,
                every=target.site_every,
                site_port=s.port,
            )
            for addr in s.unicast
            if (6 if ":" in addr else 4) in target.families
            for transport in target.transports
            for q in target.queries
        ]
    return out


def _unresolved(target: DnsTarget, error: str, ts: int) -> list[DnsRecord]:
    """A run of every transport and query of a target whose server name has no address."""
    return [
        DnsRecord(
            ts=ts,
            target=target.name,
            server=target.server,
            port=getattr(target, _PORT_KEY[transport]),
            transport=transport,
            qname=q.qname,
            qtype=q.qtype,
            rcode=errors.NETERR,
            error=f"resolve: {error}",
            timestamping="user",
            topology=target.topology,
            provider=target.provider or None,
        )
        for transport in target.transports
        for q in target.queries
    ]


def _host(target: DnsTarget) -> tuple[str, list[int]]:
    return target.server, list(target.families)


def _row(r: DnsRecord) -> list[str]:
    return [
        f"{r.server}:{r.port}" if r.family == 4 else f"[{r.server}]:{r.port}",
        r.transport + (" TC" if r.truncated else ""),
        r.rcode,
        fmt_ms(r.rtt_ms),
        fmt_ms(r.connect_ms),
        fmt_ms(r.tls_ms),
        r.site or "-",
        "-" if r.size is None else str(r.size),
        "-" if r.ttl is None else str(r.ttl),
        "-" if r.serial is None else str(r.serial),
        r.timestamping + (f"  {r.error}" if r.error else ""),
    ]


def _summary(records: Sequence[DnsRecord]) -> str:
    return rtt_summary("queries", [r.rtt_ms for r in records])


def _add_arguments(once: argparse.ArgumentParser) -> None:
    g = once.add_argument_group("DNS queries (--qname)")
    g.add_argument(
        "--qname",
        help="name to query, e.g. example.com (omit with --https URL to fetch the page instead)",
    )
    g.add_argument(
        "--qtype",
        default="SOA",
        type=str.upper,
        choices=QTYPES,
        metavar="QTYPE",
        help=f"query type, one of {', '.join(QTYPES)} (default SOA; any case)",
    )
    proto = g.add_mutually_exclusive_group()
    proto.add_argument("--tcp", action="store_true", help="DNS over TCP (default UDP)")
    proto.add_argument("--tls", action="store_true", help="DNS over TLS (default port 853)")
    proto.add_argument(
        "--https",
        metavar="URL",
        help="with --qname: DNS over HTTPS to URL (RFC 8484 POST, HTTP/2 or HTTP/1.1); "
        "without: fetch URL and time its phases",
    )
    ident = g.add_mutually_exclusive_group()
    ident.add_argument(
        "--nsid", action="store_true", help="ask for NSID on the timed query itself (site = NSID)"
    )
    ident.add_argument(
        "--chaos",
        action="store_true",
        help="after each query ask CHAOS TXT id.server/hostname.bind on the same "
        "flow (site = that answer)",
    )
    g.add_argument("--rd", action="store_true", help="set RD (ask a resolver to recurse)")
    g.add_argument("--dnssec", action="store_true", help="set the DO bit")
    g.add_argument("--no-edns", action="store_true", help="send no OPT record")
    g.add_argument("--bufsize", type=int, default=1232, help="EDNS UDP buffer size (default 1232)")
    g.add_argument("--tls-name", help="name to verify the TLS certificate against (and SNI)")


def _once_target(args: argparse.Namespace) -> DnsTarget:
    """The target ``once`` flags describe (one transport, one query)."""
    transport = "udp"
    doh_port, doh_path, tls_name = 443, "/dns-query", args.tls_name
    if args.https:
        url = urllib.parse.urlsplit(args.https)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"--https {args.https!r}: expected https://HOST[:PORT]/PATH")
        transport = "https"
        doh_port = url.port or 443
        doh_path = url.path or "/dns-query"
        if url.query:
            doh_path += "?" + url.query
        tls_name = tls_name or url.hostname
    elif args.tls:
        transport = "tls"
    elif args.tcp:
        transport = "tcp"
    default_port = {"udp": 53, "tcp": 53, "tls": 853, "https": doh_port}[transport]
    if args.server:
        host, port = parse_hostport(args.server, default_port)
    elif args.https:
        host, port = urllib.parse.urlsplit(args.https).hostname or "", doh_port
    else:
        raise ValueError("--server is required (or --https URL)")
    spec: dict[str, Any] = {
        "name": "once",
        "topology": "resolver" if args.rd else "unicast",
        "server": host,
        "queries": [{"qname": args.qname, "qtype": args.qtype}],
        "port": port if transport in ("udp", "tcp") else 53,
        "tls_port": port if transport == "tls" else 853,
        "doh_port": port if transport == "https" else doh_port,
        "doh_path": doh_path,
        "tls_name": tls_name,
        "tls_ca": args.tls_ca,
        "tls_verify": not args.insecure,
        "transports": [transport],
        "families": args.families,
        "interval": args.run_interval,
        "timeout": args.timeout,
        "identify": "chaos" if args.chaos else "nsid" if args.nsid else "none",
        "rd": args.rd,
        "dnssec": args.dnssec,
        "edns": not args.no_edns,
        "edns_bufsize": args.bufsize,
    }
    return target_from_flags(spec, DnsTarget)


CHECK: Final = Check[DnsTarget, DnsJob, DnsRecord](
    kind="dns",
    target_type=DnsTarget,
    record_type=DnsRecord,
    host=_host,
    jobs=jobs,
    measure=measure,
    failure=failure,
    outcome=lambda r: r.rcode,
    answered=lambda r: r.rtt_ms is not None,
    columns=(
        ("server", 24),
        ("proto", 6),
        ("rcode", 9),
        ("rtt_ms", 9),
        ("conn_ms", 8),
        ("tls_ms", 8),
        ("site", 16),
        ("size", 5),
        ("ttl", 6),
        ("serial", 11),
        ("stamp", 6),
    ),
    row=_row,
    summary=_summary,
    once=Once(
        add_arguments=_add_arguments,
        wanted=lambda args: args.qname is not None,
        target=_once_target,
        hint="--qname NAME",
    ),
    unresolved=_unresolved,
)

"""The DNS check: one query, one packet (or one connection), timed and identified.

``measure(job)`` does only the protocol: build the query, run it over the job's
transport, read the answer. Socket timing lives in :mod:`probe.net`; errors are mapped in
:mod:`probe.errors`; the runner owns deadlines and turns surprises into records.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any, Final

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from probe import errors, net
from probe.config import Target, is_ip
from probe.wire import DnsRecord

_NS_PER_MS: Final = 1_000_000
_CHAOS_NAMES: Final = ("id.server.", "hostname.bind.")
_USER_AGENT: Final = "popwatch-probe"


@dataclass(frozen=True, slots=True, eq=False)
class DnsJob:
    """One series: a target's query, over one transport, to one server address."""

    target: Target
    address: str  # IP address of the server
    transport: str  # udp | tcp | tls | https
    qname: str
    qtype: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def port(self) -> int:
        t = self.target
        return {"udp": t.port, "tcp": t.port, "tls": t.tls_port, "https": t.doh_port}[
            self.transport
        ]

    kind = "dns"

    @property
    def interval(self) -> float:
        return self.target.interval

    @property
    def deadline(self) -> float:
        """Outer bound for the whole measurement: each phase has ``timeout`` of its own."""
        phases = {"udp": 1, "tcp": 2, "tls": 3, "https": 3}[self.transport]
        if self.target.identify == "chaos":
            phases += 2
        return self.target.timeout * phases + 1.0

    @property
    def key(self) -> str:
        """Stable identity of the series (used to spread start offsets)."""
        return f"{self.target.name}|{self.address}|{self.transport}|{self.qname}|{self.qtype}"


@functools.lru_cache(maxsize=65536)
def _template(
    qname: str, qtype: str, rd: bool, dnssec: bool, edns: bool, bufsize: int, nsid: bool
) -> bytes:
    """The query's wire form with ID 0; each measurement patches in a fresh ID."""
    options: list[dns.edns.Option] = (
        [dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")] if nsid else []
    )
    msg = dns.message.make_query(
        qname,
        dns.rdatatype.from_text(qtype),
        use_edns=0 if edns else False,
        payload=bufsize,
        want_dnssec=dnssec,
        options=options,
        id=0,
    )
    msg.flags = dns.flags.RD if rd else dns.flags.Flag(0)
    return msg.to_wire()


def _chaos_template(qname: str) -> bytes:
    msg = dns.message.make_query(qname, dns.rdatatype.TXT, dns.rdataclass.CH, id=0)
    msg.flags = dns.flags.Flag(0)
    return msg.to_wire()


def _with_id(template: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + template[2:]


def _question_end(wire: bytes) -> int:
    """Offset just past the first question (``wire`` is our own query)."""
    i = 12
    while wire[i]:
        i += 1 + wire[i]
    return i + 5


def _matcher(query: bytes) -> functools.partial[bool]:
    end = _question_end(query)
    return functools.partial(
        _is_answer, query[:2], query[12 : end - 4].lower(), query[end - 4 : end]
    )


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


def _text(raw: bytes) -> str:
    """Server identity bytes as text: UTF-8 when printable, else hex."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()
    return text if text.isprintable() else raw.hex()


def _nsid(msg: dns.message.Message) -> str | None:
    for opt in msg.options:
        if opt.otype == dns.edns.OptionType.NSID:
            raw = opt.nsid if isinstance(opt, dns.edns.NSIDOption) else opt.to_wire()
            return _text(raw) if raw else None
    return None


def _chaos_site(data: bytes) -> str | None:
    try:
        msg = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            for rd in rrset:
                strings = b"".join(rd.strings)
                if strings:
                    return _text(strings)
    return None


@functools.lru_cache(maxsize=256)
def tls_context(ca: str | None, verify: bool, alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def _tcp_frame(buf: bytes) -> int | None:
    return 2 + (buf[0] << 8 | buf[1]) if len(buf) >= 2 else None


def _http_frame(buf: bytes) -> int | None:
    """Length of one HTTP/1.1 response with a Content-Length or chunked body."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    body = head_end + 4
    headers = buf[:head_end].lower()
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return body + int(value.strip())
    if b"transfer-encoding: chunked" in headers:
        end = buf.find(b"\r\n0\r\n\r\n", body - 2)
        return None if end < 0 else end + 7
    raise errors.CheckError(errors.NETERR, "http", "response has no Content-Length")


def _http_body(resp: bytes) -> bytes:
    head_end = resp.find(b"\r\n\r\n")
    status_line, *lines = resp[:head_end].split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise errors.CheckError(
            errors.NETERR, "http", f"not an HTTP response: {status_line[:60]!r}"
        )
    status = int(parts[1])
    body = resp[head_end + 4 :]
    if any(
        line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        for line in lines
    ):
        out = bytearray()
        i = 0
        while True:
            j = body.index(b"\r\n", i)
            size = int(body[i:j].split(b";")[0], 16)
            if size == 0:
                break
            out += body[j + 2 : j + 2 + size]
            i = j + 4 + size
        body = bytes(out)
    if status != 200:
        raise errors.CheckError(errors.NETERR, "http", f"status {status}")
    return body


class _Answer:
    """What is read off a DNS answer for the record."""

    __slots__ = ("answers", "rcode", "serial", "site", "truncated", "ttl")

    def __init__(self, data: bytes, qtype: str) -> None:
        try:
            msg = dns.message.from_wire(data)
        except dns.exception.DNSException as exc:
            raise errors.CheckError(errors.NETERR, "malformed", f"answer: {exc}") from None
        self.rcode = dns.rcode.to_text(msg.rcode())
        self.truncated = bool(msg.flags & dns.flags.TC)
        self.answers = sum(len(r) for r in msg.answer)
        self.ttl = min((r.ttl for r in msg.answer), default=None)
        self.serial: int | None = None
        if qtype == "SOA":
            for r in msg.answer:
                if r.rdtype == dns.rdatatype.SOA:
                    self.serial = r[0].serial
                    break
        self.site = _nsid(msg)


async def _identify_chaos(
    flow: net.UdpFlow | net.StreamConn, job: DnsJob, https: bool
) -> str | None:
    """Ask the server who it is, on the same flow (same 5-tuple or connection) as the query."""
    for name in _CHAOS_NAMES:
        query = _with_id(_chaos_template(name), 0 if https else secrets.randbits(16))
        try:
            data = await _exchange_on(flow, job, query)
        except (errors.CheckError, OSError, TimeoutError, EOFError, ssl.SSLError):
            return None
        site = _chaos_site(data.data)
        if site:
            return site
    return None


async def _exchange_on(
    flow: net.UdpFlow | net.StreamConn, job: DnsJob, query: bytes
) -> net.Exchange:
    t = job.target
    if isinstance(flow, net.UdpFlow):
        async with asyncio.timeout(t.timeout):
            return await flow.exchange(query, _matcher(query))
    if job.transport == "https":
        host = t.tls_name or (t.server if not _is_literal(t.server) else _url_host(job.address))
        request = (
            f"POST {t.doh_path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {_USER_AGENT}\r\n"
            "Content-Type: application/dns-message\r\nAccept: application/dns-message\r\n"
            f"Content-Length: {len(query)}\r\n\r\n"
        ).encode() + query
        async with asyncio.timeout(t.timeout):
            ex = await flow.exchange(request, _http_frame)
        body = _http_body(ex.data)
        data = body
    else:
        async with asyncio.timeout(t.timeout):
            ex = await flow.exchange(struct.pack("!H", len(query)) + query, _tcp_frame)
        data = ex.data[2:]
    if not _is_answer(query[:2], *_qparts(query), data):
        raise errors.CheckError(errors.NETERR, "malformed", "answer does not match the query")
    return net.Exchange(data, ex.sent_ns, ex.rtt_ns, ex.kernel, ex.ignored)


def _qparts(query: bytes) -> tuple[bytes, bytes]:
    end = _question_end(query)
    return query[12 : end - 4].lower(), query[end - 4 : end]


def _is_literal(server: str) -> bool:
    return is_ip(server)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / _NS_PER_MS, 6)


def _base(job: DnsJob) -> dict[str, Any]:
    t = job.target
    return {
        "target": t.name,
        "server": job.address,
        "port": job.port,
        "transport": job.transport,
        "qname": job.qname,
        "qtype": job.qtype,
        "topology": t.topology,
        "provider": t.provider or None,
        "family": job.family,
    }


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
        connect_ms=_ms(connect_ns),
        tls_ms=_ms(tls_ns),
        timestamping="kernel" if net.kernel_timestamping_available() else "user",
        **_base(job),
    )


async def measure(job: DnsJob) -> DnsRecord:
    """Time one query of ``job`` and return its record (failures are records too)."""
    t = job.target
    https = job.transport == "https"
    nsid = t.identify == "nsid"
    template = _template(job.qname, job.qtype, t.recursion, t.dnssec, t.edns, t.edns_bufsize, nsid)
    # RFC 8484 asks DoH clients for ID 0; elsewhere a fresh random ID per query
    query = _with_id(template, 0 if https else secrets.randbits(16))
    family = socket.AF_INET6 if job.family == 6 else socket.AF_INET
    addr = (job.address, job.port)
    started = time.time_ns()
    connect_ns = tls_ns = None
    phase = "query"
    flow: net.UdpFlow | net.StreamConn
    try:
        flow = net.UdpFlow(family, addr) if job.transport == "udp" else net.StreamConn(family)
        async with flow:
            if isinstance(flow, net.StreamConn):
                phase = "connect"
                async with asyncio.timeout(t.timeout):
                    await flow.connect(addr)
                connect_ns = flow.connect_ns
                if job.transport in ("tls", "https"):
                    phase = "tls"
                    name = t.tls_name or (t.server if not _is_literal(t.server) else job.address)
                    alpn = "dot" if job.transport == "tls" else "http/1.1"
                    ctx = tls_context(t.tls_ca, t.tls_verify, alpn)
                    async with asyncio.timeout(t.timeout):
                        await flow.start_tls(ctx, name)
                    tls_ns = flow.tls_ns
                phase = "query"
            ex = await _exchange_on(flow, job, query)
            answer = _Answer(ex.data, job.qtype)
            site = answer.site
            if t.identify == "chaos":
                site = await _identify_chaos(flow, job, https)
    except Exception as exc:  # every failure is still a measurement
        return failure(job, exc, started, phase=phase, connect_ns=connect_ns, tls_ns=tls_ns)
    return DnsRecord(
        ts=ex.sent_ns,
        rcode=answer.rcode,
        rtt_ms=_ms(ex.rtt_ns),
        connect_ms=_ms(connect_ns),
        tls_ms=_ms(tls_ns),
        timestamping="kernel" if ex.kernel else "user",
        site=site,
        answers=answer.answers,
        size=len(ex.data),
        ttl=answer.ttl,
        serial=answer.serial,
        truncated=answer.truncated,
        **_base(job),
    )

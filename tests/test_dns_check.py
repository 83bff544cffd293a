"""The DNS check against real Knot, NSD and dnsdist on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.rrset
import pytest
from support import servers

from probe.checks.dns import DnsJob, measure
from probe.runner import run_job

JobFor = Callable[..., DnsJob]
ADDRS = ["127.0.0.1", "::1"]


@pytest.mark.parametrize("address", ADDRS)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_udp_tcp_soa_with_nsid(
    knot: servers.Knot, job_for: JobFor, address: str, transport: str
) -> None:
    """UDP and TCP over IPv4 and IPv6 give the SOA serial, the NSID site and kernel stamps;
    rtt_ms lies within the wall-clock time the measurement took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await measure(job_for(address, transport, port=knot.port))
    took_ms = (loop.time() - t0) * 1000
    assert r.rcode == "NOERROR", r
    assert r.serial == servers.SERIAL
    assert r.site == "knot-fra1"
    assert r.timestamping == "kernel"
    assert r.rtt_ms is not None and 0 < r.rtt_ms < took_ms
    assert r.family == (6 if ":" in address else 4)
    assert r.answers == 1 and r.ttl == 3600 and r.size and r.size > 12
    assert (r.connect_ms is not None) == (transport == "tcp")
    assert r.tls_ms is None and r.error is None and not r.truncated


@pytest.mark.parametrize("address", ADDRS)
@pytest.mark.parametrize("transport", ["tls", "https"])
async def test_dot_doh_through_dnsdist(
    dnsdist: servers.Dnsdist, job_for: JobFor, address: str, transport: str
) -> None:
    """DoT and DoH (dnsdist, self-signed cert) report connect, TLS and query time apart."""
    job = job_for(
        address,
        transport,
        tls_port=dnsdist.dot_port,
        doh_port=dnsdist.doh_port,
        tls_ca=str(dnsdist.cert),
    )
    r = await measure(job)
    assert r.rcode == "NOERROR", r
    assert r.serial == servers.SERIAL
    assert r.site == "knot-behind-dnsdist"  # NSID rides through dnsdist to Knot and back
    assert r.connect_ms is not None and r.connect_ms > 0
    assert r.tls_ms is not None and r.tls_ms > 0
    assert r.rtt_ms is not None and r.rtt_ms > 0
    assert r.timestamping == "kernel"
    assert r.port == (dnsdist.dot_port if transport == "tls" else dnsdist.doh_port)


async def test_tls_bad_certificate_is_neterr(dnsdist: servers.Dnsdist, job_for: JobFor) -> None:
    """A certificate that does not verify is NETERR 'tls: certificate: ...' (the kind said
    once, not 'tls: tls: ...') with connect_ms kept."""
    r = await measure(job_for("127.0.0.1", "tls", tls_port=dnsdist.dot_port))  # system CAs
    assert r.rcode == "NETERR"
    assert r.error and r.error.startswith("tls: certificate: "), r.error
    assert r.connect_ms is not None and r.tls_ms is None and r.rtt_ms is None


@pytest.mark.parametrize(
    ("qname", "qtype", "rdtext"),
    [
        ("www.example.test.", "A", "192.0.2.80"),
        ("www.example.test.", "AAAA", "2001:db8::80"),
        ("example.test.", "NS", "ns1.example.test."),
        ("example.test.", "SOA", str(servers.SERIAL)),
        ("example.test.", "TXT", "v=spf1 -all"),
        ("alias.example.test.", "CNAME", "www.example.test."),
        ("example.test.", "MX", "mail.example.test."),
        ("example.test.", "CAA", "ca.example.net"),
        ("www.example.test.", "HTTPS", "alpn"),
        ("example.test.", "DNSKEY", "257 3 13"),
    ],
)
async def test_every_query_type(
    knot: servers.Knot, job_for: JobFor, qname: str, qtype: str, rdtext: str
) -> None:
    """Every listed query type is answered, counted and timed (answer checked by hand)."""
    r = await measure(job_for("127.0.0.1", qname=qname, qtype=qtype, port=knot.port))
    assert r.rcode == "NOERROR", r
    assert r.qtype == qtype and r.answers == 1 and r.rtt_ms is not None
    # and the server really answered that: ask it ourselves
    import dns.query

    ans = dns.query.udp(
        dns.message.make_query(qname, qtype), "127.0.0.1", port=knot.port, timeout=2
    )
    assert rdtext in ans.answer[0].to_text()
    assert r.ttl == ans.answer[0].ttl


@pytest.mark.parametrize("server", ["knot", "nsd"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_nsid_and_chaos_identity(
    request: pytest.FixtureRequest, job_for: JobFor, server: str, transport: str
) -> None:
    """NSID and CHAOS id.server identify the site, for Knot and NSD alike."""
    srv = request.getfixturevalue(server)
    nsid = await measure(job_for("::1", transport, port=srv.port, identify="nsid"))
    chaos = await measure(job_for("::1", transport, port=srv.port, identify="chaos"))
    none = await measure(job_for("::1", transport, port=srv.port, identify="none"))
    assert nsid.site == srv.nsid
    assert chaos.site == srv.identity
    assert none.site is None
    assert nsid.rcode == chaos.rcode == none.rcode == "NOERROR"


async def test_a_long_nsid_is_cut_to_the_bound_and_says_so(job_for: JobFor) -> None:
    """A real Knot with a 1,000-character NSID: the record's site is cut to SITE_MAX
    characters, its end marked, so the collector can store it (a 64 KB NSID used to be
    shipped whole and dropped by InfluxDB)."""
    from probe.checks.dns import SITE_CUT, SITE_MAX

    long_nsid = "pop-" + "x" * 996
    with servers.Knot(long_nsid, "id-long") as knot:
        knot.start()
        r = await measure(job_for("127.0.0.1", "udp", port=knot.port, identify="nsid"))
    assert r.rcode == "NOERROR"
    assert r.site is not None
    assert len(r.site) == SITE_MAX
    assert r.site == long_nsid[: SITE_MAX - 1] + SITE_CUT


async def test_chaos_through_dnsdist_on_same_connection(
    dnsdist: servers.Dnsdist, job_for: JobFor
) -> None:
    """With identify: chaos over DoH, the CHAOS query goes on the same connection."""
    r = await measure(
        job_for(
            "127.0.0.1",
            "https",
            doh_port=dnsdist.doh_port,
            tls_ca=str(dnsdist.cert),
            identify="chaos",
        )
    )
    assert r.site == "knot-id-behind"


async def test_nxdomain_and_refused(knot: servers.Knot, job_for: JobFor) -> None:
    """A missing name is NXDOMAIN; a zone the server does not serve is REFUSED."""
    nx = await measure(job_for("127.0.0.1", qname="nope.example.test.", qtype="A", port=knot.port))
    assert nx.rcode == "NXDOMAIN" and nx.answers == 0 and nx.rtt_ms is not None
    ref = await measure(job_for("127.0.0.1", qname="example.org.", qtype="A", port=knot.port))
    assert ref.rcode == "REFUSED" and ref.rtt_ms is not None and ref.error is None


@pytest.fixture
def swallower() -> Iterator[tuple[int, int]]:
    """A UDP port and a TCP port (accepting, via the backlog) that never answer."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    t.listen(16)
    yield u.getsockname()[1], t.getsockname()[1]
    u.close()
    t.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_timeout(swallower: tuple[int, int], job_for: JobFor, transport: str) -> None:
    """No answer within the timeout is TIMEOUT with no rtt_ms, after exactly one send."""
    port = swallower[0] if transport == "udp" else swallower[1]
    r = await run_job(job_for("127.0.0.1", transport, port=port, timeout=0.3))
    assert r.rcode == "TIMEOUT"
    assert r.rtt_ms is None
    assert r.error == "timeout: query timed out"
    if transport == "tcp":
        assert r.connect_ms is not None  # the phase that did complete is kept


@pytest.mark.parametrize("address", ADDRS)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_closed_port_is_neterr(job_for: JobFor, address: str, transport: str) -> None:
    """A closed port is NETERR 'refused' (ICMP port unreachable / TCP RST), at once."""
    port = servers.free_port()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await run_job(job_for(address, transport, port=port, timeout=10.0))
    assert r.rcode == "NETERR"
    assert r.error is not None and r.error.startswith("refused: ")
    assert "ECONNREFUSED" in r.error
    assert r.rtt_ms is None
    # not a timeout in disguise: a refusal takes milliseconds, the timeout 10 s
    assert loop.time() - t0 < 5.0


async def test_truncation_is_reported_not_retried(knot: servers.Knot, job_for: JobFor) -> None:
    """A truncated UDP answer is reported with truncated=true; no TCP retry is made."""
    before = knot.queries()
    r = await measure(
        job_for(
            "127.0.0.1",
            qname="big.example.test.",
            qtype="TXT",
            port=knot.port,
            edns=False,
            identify="none",
        )
    )
    assert r.truncated is True
    assert r.rcode == "NOERROR" and r.rtt_ms is not None
    assert r.size is not None and r.size <= 512
    assert knot.queries() - before == 1
    full = await measure(
        job_for("127.0.0.1", "tcp", qname="big.example.test.", qtype="TXT", port=knot.port)
    )
    assert full.truncated is False and full.answers == 1 and full.size and full.size > 512


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_server_sees_exactly_the_queries_reported(
    knot: servers.Knot, job_for: JobFor, transport: str
) -> None:
    """N measurements are N queries on the server: no retry, no cache, no extra lookup."""
    job = job_for("127.0.0.1", transport, port=knot.port, qname="www.example.test.", qtype="A")
    before = knot.queries()
    records = [await run_job(job) for _ in range(50)]
    # concurrently too, 10 at a time: Knot's TCP listen backlog is 10, and a SYN it drops
    # is retransmitted after 1 s, which this test's 1 s timeout would report, rightly, as
    # a connect TIMEOUT
    for _ in range(5):
        records += await asyncio.gather(*(run_job(job) for _ in range(10)))
    assert [r for r in records if r.rcode != "NOERROR"] == []
    assert knot.queries() - before == len(records) == 100


async def test_nsd_sees_exactly_the_queries_reported(nsd: servers.Nsd, job_for: JobFor) -> None:
    """The same count holds on NSD (its own statistics)."""
    job = job_for("::1", port=nsd.port)
    before = nsd.queries()
    records = await asyncio.gather(*(run_job(job) for _ in range(40)))
    assert all(r.site == "nsd-ams1" for r in records)
    assert nsd.queries() - before == 40


async def test_dot_doh_queries_counted_at_backend(
    dnsdist: servers.Dnsdist, backend: servers.Knot, job_for: JobFor
) -> None:
    """Each DoT/DoH measurement reaches the backend exactly once (dnsdist has no cache)."""
    jobs = [
        job_for(
            "127.0.0.1",
            tr,
            tls_port=dnsdist.dot_port,
            doh_port=dnsdist.doh_port,
            tls_ca=str(dnsdist.cert),
        )
        for tr in ("tls", "https")
    ]
    before = backend.queries()
    records = [await run_job(j) for j in jobs for _ in range(10)]
    assert all(r.rcode == "NOERROR" for r in records)
    assert backend.queries() - before == 20


class Spoofer:
    """Stand-in server that answers first with forgeries, then correctly.

    A stand-in because no real server (Knot, NSD) can be made to send an answer with the
    wrong ID or question; that is exactly the attack a stub resolver must shrug off.
    Answers sent: one from another source port, one with a wrong ID, one with the right
    ID but another question, then the real answer (A 192.0.2.1).
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def _answer(self, q: dns.message.Message, addr: str) -> dns.message.Message:
        resp = dns.message.make_response(q)
        resp.flags |= dns.flags.AA
        resp.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", addr))
        return resp

    def serve(self) -> None:
        data, peer = self.sock.recvfrom(4096)
        q = dns.message.from_wire(data)
        self.other.sendto(self._answer(q, "198.51.100.1").to_wire(), peer)
        wrong_id = self._answer(q, "198.51.100.2")
        wrong_id.id = (q.id + 1) % 65536
        self.sock.sendto(wrong_id.to_wire(), peer)
        other_q = dns.message.make_query("evil.example.test.", "A", id=q.id)
        self.sock.sendto(self._answer(other_q, "198.51.100.3").to_wire(), peer)
        self.sock.sendto(self._answer(q, "192.0.2.1").to_wire(), peer)

    def close(self) -> None:
        self.thread.join(2)
        self.sock.close()
        self.other.close()


async def test_forged_answers_are_ignored(job_for: JobFor) -> None:
    """Answers from another port, with another ID or question are ignored; the real one wins."""
    spoofer = Spoofer()
    try:
        r = await measure(
            job_for(
                "127.0.0.1",
                port=spoofer.port,
                qname="www.example.test.",
                qtype="A",
                identify="none",
            )
        )
    finally:
        spoofer.close()
    assert r.rcode == "NOERROR"
    assert r.ttl == 60 and r.answers == 1
    assert r.rtt_ms is not None and r.timestamping == "kernel"


async def test_forged_answer_content_not_taken(job_for: JobFor) -> None:
    """The record describes the real answer: forged ones are never parsed into it."""
    from probe import net
    from probe.checks.dns import _matcher, _template, _with_id

    spoofer = Spoofer()
    try:
        query = _with_id(_template("www.example.test.", "A", False, False, True, 1232, False), 4242)
        async with net.UdpFlow(socket.AF_INET, ("127.0.0.1", spoofer.port)) as flow:
            ex = await flow.exchange(query, _matcher(query), asyncio.get_running_loop().time() + 2)
    finally:
        spoofer.close()
    answer = dns.message.from_wire(ex.data)
    assert answer.answer[0][0].address == "192.0.2.1"
    assert ex.ignored == 2  # wrong ID and wrong question; the kernel dropped the other port's


def test_rd_off_by_default_for_authoritative_targets(job_for: JobFor) -> None:
    """RD is off for unicast/anycast targets unless asked, on for resolvers."""
    from probe.checks.dns import _template

    auth = job_for("127.0.0.1").target
    res = job_for("127.0.0.1", topology="resolver").target
    assert auth.recursion is False and res.recursion is True
    wire_off = _template("example.test.", "SOA", auth.recursion, False, True, 1232, True)
    wire_on = _template("example.test.", "SOA", res.recursion, True, True, 4096, True)
    off, on = dns.message.from_wire(wire_off), dns.message.from_wire(wire_on)
    assert not off.flags & dns.flags.RD and on.flags & dns.flags.RD
    assert not off.ednsflags & dns.flags.DO and on.ednsflags & dns.flags.DO
    assert off.payload == 1232 and on.payload == 4096


async def test_dnssec_do_bit_brings_no_signatures_from_unsigned_zone(
    knot: servers.Knot, job_for: JobFor
) -> None:
    """The DO bit is sent (the answer's OPT echoes it) and the zone answers normally."""
    r = await measure(job_for("127.0.0.1", port=knot.port, dnssec=True, edns_bufsize=4096))
    assert r.rcode == "NOERROR" and r.serial == servers.SERIAL

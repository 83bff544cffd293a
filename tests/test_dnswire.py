"""The fast answer reader agrees with dnspython on real answers and refuses garbage."""

from __future__ import annotations

import contextlib
import socket

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import servers

from probe.dnswire import MalformedAnswer, parse

CASES = [
    ("www.example.test.", "A"),
    ("www.example.test.", "AAAA"),
    ("example.test.", "NS"),
    ("example.test.", "SOA"),
    ("example.test.", "TXT"),
    ("alias.example.test.", "CNAME"),
    ("example.test.", "MX"),
    ("example.test.", "CAA"),
    ("www.example.test.", "HTTPS"),
    ("example.test.", "DNSKEY"),
    ("nope.example.test.", "A"),
    ("example.org.", "A"),
    ("big.example.test.", "TXT"),
    ("www.example.test.", "SOA"),
]


@pytest.mark.parametrize(("qname", "qtype"), CASES)
@pytest.mark.parametrize("edns", [True, False])
def test_agrees_with_dnspython_on_knot_answers(
    knot: servers.Knot, qname: str, qtype: str, edns: bool
) -> None:
    """rcode, TC, counts, TTL, serial, NSID and TXT match dnspython's full parse."""
    opts = [dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")] if edns else None
    q = dns.message.make_query(qname, qtype, use_edns=0 if edns else False, options=opts)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q.to_wire(), ("127.0.0.1", knot.port))
        wire, _ = s.recvfrom(65535)
    ours = parse(wire)
    ref = dns.message.from_wire(wire)
    assert ours.rcode == dns.rcode.to_text(ref.rcode())
    assert ours.truncated == bool(ref.flags & dns.flags.TC)
    assert ours.answers == sum(len(r) for r in ref.answer)
    assert ours.ttl == min((r.ttl for r in ref.answer), default=None)
    soa = [r for r in ref.answer if r.rdtype == dns.rdatatype.SOA]
    assert ours.serial == (soa[0][0].serial if soa else None)
    nsid = [o for o in ref.options if o.otype == dns.edns.OptionType.NSID]
    assert ours.nsid == (nsid[0].nsid if nsid else None)
    if edns:
        assert ours.nsid == b"knot-fra1"
    txt = [r for r in ref.answer if r.rdtype == dns.rdatatype.TXT]
    assert ours.txt == (b"".join(txt[0][0].strings) if txt else None)


def test_extended_rcode_from_opt() -> None:
    """The OPT record's upper rcode bits are read (BADVERS is 16)."""
    q = dns.message.make_query("example.test.", "SOA", use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.BADVERS)
    assert parse(r.to_wire()).rcode == "BADVERS"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_malformed_never_a_crash(data: bytes) -> None:
    """Random bytes either parse or raise MalformedAnswer: nothing else escapes."""
    with contextlib.suppress(MalformedAnswer):
        parse(data)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=12, max_value=200))
def test_truncated_real_answer_is_malformed(cut: int) -> None:
    """A real answer cut short anywhere after the header is refused, not misread."""
    q = dns.message.make_query("example.test.", "SOA", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(
        dns.rrset.from_text(
            "example.test.", 60, "IN", "SOA", "ns1.example.test. hostmaster.example.test. 7 1 1 1 1"
        )
    )
    wire = r.to_wire()
    if cut >= len(wire):
        assert parse(wire).serial == 7
        return
    with pytest.raises(MalformedAnswer):
        parse(wire[:cut])

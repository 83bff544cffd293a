"""The fast answer reader agrees with dnspython on real answers and refuses garbage; the
query writer writes what dnspython writes."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import subprocess
import sys
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import servers

from probe.checks.dns import _chaos_template, _template
from probe.dnswire import MalformedAnswer, absolute_name, name_wire, parse, rcode_name
from probe.targets import QTYPES

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


# --------------------------------------------------------------------------- the writer


def _dnspython_query(
    qname: str, qtype: str, rd: bool, dnssec: bool, edns: bool, bufsize: int, nsid: bool
) -> bytes:
    """The query as the probe built it with dnspython before it wrote its own."""
    options = [dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")] if nsid else []
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


NAMES = [
    "example.com.",
    "example.com",
    ".",
    "a.b-c_d.*.x.",
    "Ex\\.ample.com.",
    "b\\195\\188cher.x.",
]


@pytest.mark.parametrize("qname", NAMES)
@pytest.mark.parametrize("qtype", QTYPES)
def test_queries_are_byte_for_byte_what_dnspython_writes(qname: str, qtype: str) -> None:
    for rd, dnssec, edns, nsid in itertools.product((False, True), repeat=4):
        for bufsize in (512, 1232, 4096):
            want = _dnspython_query(qname, qtype, rd, dnssec, edns, bufsize, nsid)
            got = _template(absolute_name(qname), qtype, rd, dnssec, edns, bufsize, nsid)
            assert got == want, (rd, dnssec, edns, nsid, bufsize)


def test_chaos_queries_are_what_dnspython_writes() -> None:
    for name in ("id.server.", "hostname.bind."):
        msg = dns.message.make_query(name, dns.rdatatype.TXT, dns.rdataclass.CH, id=0)
        msg.flags = dns.flags.Flag(0)
        assert _chaos_template(name) == msg.to_wire()


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abcXYZ019-_*.\\$@() ü", min_size=1, max_size=80))
def test_names_read_as_dnspython_reads_them(text: str) -> None:
    """Plain names are read here, others by dnspython; either way the same name, or a
    ValueError where dnspython refuses the text."""
    try:
        want = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            absolute_name(text)
        return
    got = absolute_name(text)
    assert got == want.to_text()
    assert name_wire(got) == want.to_wire()


def test_long_plain_names_are_refused_as_dnspython_refuses_them() -> None:
    for text, why in (("a" * 64 + ".x.", "label is > 63"), (".".join(["abcdefghi"] * 26), "> 255")):
        with pytest.raises(dns.exception.DNSException, match=why):
            dns.name.from_text(text)
        with pytest.raises(ValueError, match=why):
            absolute_name(text)


def test_the_longest_plain_name_is_dnspythons_longest() -> None:
    """253 characters (255 bytes on the wire) is a name; 254 is not, read by either path."""
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(longest) == 253
    assert absolute_name(longest) == dns.name.from_text(longest).to_text()
    assert len(name_wire(absolute_name(longest))) == 255
    with pytest.raises(ValueError, match="> 255"):
        absolute_name(longest + "b")
    with pytest.raises(dns.exception.DNSException, match="> 255"):
        dns.name.from_text(longest + "b")


def test_rcode_names_are_dnspythons() -> None:
    for code in range(24):
        assert rcode_name(code) == dns.rcode.to_text(dns.rcode.Rcode(code))


def test_a_running_probe_does_not_import_dnspython(tmp_path: Path) -> None:
    """The probe's hot modules build and read DNS without dnspython (its resident memory
    is part of the probe's budget); a name with an escape still gets it, lazily."""
    code = (
        "import sys\n"
        "import probe.cli, probe.runner, probe.checks.dns as d, probe.targets as t\n"
        "d._template(t.Query(qname='www.example.test').qname, 'A', 0, 0, 1, 1232, 1)\n"
        "assert not [m for m in sys.modules if m == 'dns' or m.startswith('dns.')], 'dnspython'\n"
        "t.Query(qname='a\\\\.b.example.')\n"
        "assert 'dns.name' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)

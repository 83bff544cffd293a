"""The fast dns line equals the generic line-protocol encoding of the DESIGN.md schema."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.lineproto import Unrepresentable, line
from collector.points import Identity, to_line
from probe.wire import DnsRecord

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
opt_ms = st.none() | st.floats(min_value=0, max_value=3_600_000)
opt_int = st.none() | st.integers(min_value=0, max_value=2**31)


@st.composite
def dns_records(draw: st.DrawFn) -> DnsRecord:
    return DnsRecord(
        ts=draw(st.integers(min_value=1, max_value=2**62)),
        target=draw(text.filter(bool)),
        server=draw(text.filter(bool)),
        port=draw(st.integers(0, 65535)),
        transport=draw(st.sampled_from(["udp", "tcp"])),
        qname=draw(text.filter(bool)),
        qtype=draw(text.filter(bool)),
        rcode=draw(st.sampled_from(["NOERROR", "NXDOMAIN", "SERVFAIL", "TIMEOUT"])),
        timestamping=draw(st.sampled_from(["kernel", "user"])),
        rtt_ms=draw(opt_ms),
        connect_ms=draw(opt_ms),
        tls_ms=draw(opt_ms),
        site=draw(st.none() | text),
        answers=draw(opt_int),
        size=draw(opt_int),
        ttl=draw(opt_int),
        serial=draw(st.none() | st.integers(0, 2**32 - 1)),
        truncated=draw(st.booleans()),
        error=draw(st.none() | text),
        topology=draw(st.none() | st.sampled_from(["unicast", "anycast"])),
        provider=draw(st.none() | text),
        family=draw(st.none() | st.sampled_from([4, 6])),
    )


def generic(r: DnsRecord, who: Identity) -> str:
    """DESIGN.md's dns measurement, spelled out through the generic encoder."""
    tags = {
        "probe": who.probe,
        "region": who.region,
        "country": who.country,
        "target": r.target,
        "topology": r.topology or "",
        "provider": r.provider or "",
        "server": r.server,
        "family": "" if r.family is None else str(r.family),
        "transport": r.transport,
        "qtype": r.qtype,
        "rcode": r.rcode,
        "site": r.site or "",
        "timestamping": r.timestamping,
    }
    fields = {
        "ok": r.rcode in ("NOERROR", "NXDOMAIN"),
        "truncated": r.truncated,
        "rtt_ms": r.rtt_ms,
        "connect_ms": r.connect_ms,
        "tls_ms": r.tls_ms,
        "answers": r.answers,
        "size": r.size,
        "ttl": r.ttl,
        "serial": r.serial,
        "error": r.error,
    }
    return line("dns", tags, {k: v for k, v in fields.items() if v is not None}, r.ts)


@settings(max_examples=500, deadline=None)
@given(dns_records(), st.sampled_from([Identity("p", "eu", "DE"), Identity("q,1", "us west")]))
def test_fast_dns_line_matches_the_generic_encoding(r: DnsRecord, who: Identity) -> None:
    """Same line (or the same refusal) as the generic encoder, for any record."""
    try:
        expected: str | Exception = generic(r, who)
    except Unrepresentable as exc:
        expected = exc
    if isinstance(expected, Exception):
        with pytest.raises(Unrepresentable, match=f"^{re.escape(str(expected))}$"):
            to_line(r, who)
    else:
        assert to_line(r, who) == expected

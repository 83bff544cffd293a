"""Wire records: recorded samples of every schema version still decode, forever."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.wire import SCHEMA_VERSION, Batch, DnsRecord, decode_batch, decode_record, encode

WIRE = Path(__file__).parent / "data" / "wire"
VALID = {
    "kind": "dns",
    "ts": 1,
    "target": "t",
    "server": "s",
    "port": 53,
    "transport": "udp",
    "qname": "a.",
    "qtype": "A",
    "rcode": "NOERROR",
    "timestamping": "kernel",
}


@pytest.mark.parametrize("path", sorted(WIRE.glob("v*.json")), ids=lambda p: p.name)
def test_recorded_samples_decode(path: Path) -> None:
    """Every recorded batch decodes, and re-encodes to the same records."""
    batch = decode_batch(path.read_bytes())
    assert batch.schema == int(path.name[1:].split("-")[0])
    assert batch.measurements
    for rec in batch.measurements:
        assert decode_record(encode(rec)) == rec


def test_v1_sample_contents() -> None:
    """The v1 sample keeps what docs/design.md promises: failures carry no rtt_ms."""
    batch = decode_batch((WIRE / "v1-batch.json").read_bytes())
    assert SCHEMA_VERSION == 1
    by_rcode = {r.rcode: r for r in batch.measurements}
    assert by_rcode["TIMEOUT"].rtt_ms is None and by_rcode["TIMEOUT"].error
    assert by_rcode["NETERR"].rtt_ms is None
    assert any(r.truncated for r in batch.measurements)
    assert any(r.serial == 2026112501 for r in batch.measurements)
    tls = next(r for r in batch.measurements if r.transport == "tls")
    assert tls.connect_ms and tls.tls_ms and tls.rtt_ms


def test_absent_fields_are_absent_not_zero() -> None:
    """A failure record encodes without rtt_ms, site, size...: absent, never 0."""
    r = DnsRecord(
        ts=1,
        target="t",
        server="127.0.0.1",
        port=53,
        transport="udp",
        qname="a.",
        qtype="A",
        rcode="TIMEOUT",
        timestamping="kernel",
        error="timeout: query timed out",
    )
    text = encode(r).decode()
    for absent in ("rtt_ms", "site", "size", "answers", "truncated", "serial"):
        assert absent not in text


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"rtt_ms": -1.0}, "$.rtt_ms"),
        ({"transport": "quic"}, "$.transport"),
        ({"port": 70000}, "$.port"),
        ({"ts": "yesterday"}, "$.ts"),
        ({"timestamping": "ntp"}, "$.timestamping"),
    ],
)
def test_invalid_record_names_the_field(patch: dict[str, object], where: str) -> None:
    """A bad record is refused with the path of the bad field."""
    base = {**VALID, **patch}
    with pytest.raises(msgspec.ValidationError, match=rf"at `\{where}`"):
        decode_record(msgspec.json.encode(base))


def test_nan_is_not_a_number_on_the_wire() -> None:
    """NaN and infinity are refused, never stored as a latency."""
    for bad in (math.nan, math.inf):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({**VALID, "rtt_ms": bad}, DnsRecord)


@given(st.floats(min_value=0, max_value=3_600_000), st.integers(min_value=1, max_value=2**63 - 1))
def test_roundtrip(rtt: float, ts: int) -> None:
    """Any valid record survives encode/decode unchanged."""
    r = DnsRecord(
        ts=ts,
        target="t",
        server="::1",
        port=53,
        transport="udp",
        qname="a.",
        qtype="A",
        rcode="NOERROR",
        timestamping="user",
        rtt_ms=rtt,
    )
    b = Batch(schema=1, batch="x", sent_at=ts, measurements=[r])
    assert decode_batch(encode(b)) == b


def test_a_trace_hop_cannot_claim_more_round_trips_than_queries() -> None:
    """A hop's ``rtt_ms`` holds one figure per query answered: more than it sent is a
    record the collector rejects with the reason, not a negative loss."""
    bad = (
        b'{"kind":"trace","ts":1,"target":"a","server":"192.0.2.1","method":"udp",'
        b'"timestamping":"kernel","reached":false,"path_id":"p",'
        b'"hops":[{"ttl":1,"sent":1,"rtt_ms":[1.0,2.0]}]}'
    )
    with pytest.raises(msgspec.ValidationError, match=r"2 round trips of 1 queries sent"):
        decode_record(bad)
    good = bad.replace(b'"sent":1', b'"sent":2')
    assert decode_record(good).hops[0].rtt_ms == [1.0, 2.0]  # type: ignore[union-attr]

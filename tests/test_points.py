"""Wire records to points: the fast dns line equals the generic line-protocol encoding
of the docs/design.md schema, and every column of the schema reaches a real InfluxDB 1.6.7
through the collector with its type."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from support.influx import InfluxDB
from test_collector import auth, batch, dns_record

from collector.app import CollectorState, create_app
from collector.ingest.points import Identity, to_line
from collector.ingest.registry import Registry
from collector.store.lineproto import Unrepresentable, line
from collector.store.sink import InfluxV1Sink
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
        http_version=draw(st.none() | st.sampled_from(["1.1", "2"]) | text),
    )


def generic(r: DnsRecord, who: Identity) -> str:
    """docs/design.md's dns measurement, spelled out through the generic encoder."""
    tags = {
        "probe": who.probe,
        "region": who.region,
        "country": who.country,
        "target": r.target,
        "topology": r.topology or "",
        "provider": r.provider or "",
        "server": r.server,
        "qname": r.qname,
        "family": "" if r.family is None else str(r.family),
        "transport": r.transport,
        "qtype": r.qtype,
        "rcode": r.rcode,
        "site": r.site or "",
        "timestamping": r.timestamping,
    }
    fields = {
        "ok": r.rcode in ("NOERROR", "NXDOMAIN") and r.error is None,
        "truncated": r.truncated,
        "rtt_ms": r.rtt_ms,
        "connect_ms": r.connect_ms,
        "tls_ms": r.tls_ms,
        "answers": r.answers,
        "size": r.size,
        "ttl": r.ttl,
        "serial": r.serial,
        "http_version": r.http_version,
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


def test_each_name_a_target_asks_is_its_own_series() -> None:
    """Two names asked by one target give two series (qname is in the cached head's key):
    the second record does not reuse the first one's head."""
    who = Identity("p", "eu", "DE")
    a = msgspec.convert(dns_record(qname="a.example."), DnsRecord)
    b = msgspec.structs.replace(a, qname="b.example.")
    assert ",qname=a.example.," in to_line(a, who)
    assert ",qname=b.example.," in to_line(b, who)
    assert ",qname=a.example.," in to_line(a, who)


def http_record(**kw: Any) -> dict[str, Any]:
    r = {
        "kind": "http",
        "ts": time.time_ns(),
        "target": "www",
        "url": "https://www.example.com/",
        "topology": "anycast",
        "provider": "acme",
        "family": 6,
        "ip": "2001:db8::80",
        "status": 200,
        "dns_ms": 5.0,
        "connect_ms": 10.0,
        "tls_ms": 20.0,
        "ttfb_ms": 50.0,
        "total_ms": 60.0,
        "bytes": 1000,
        "redirects": 2,
        "http_version": "1.1",
        "cert_days": 30,  # an integer on the wire: still a float field
    }
    r.update(kw)
    return r


def field_types(influx: InfluxDB, db: str, measurement: str) -> dict[str, str]:
    rows = influx.query(f"SHOW FIELD KEYS FROM {measurement}", db=db)
    return {r["fieldKey"]: r["fieldType"] for r in rows}


async def test_schema_additions_reach_influxdb(
    influx: InfluxDB, registry: Registry, tmp_path: Path
) -> None:
    """Through the real collector into InfluxDB 1.6.7 and back: the dns ``qname`` tag
    (two names at the same instant are two points) and DoH's ``http_version`` field; the
    http ``provider`` and ``family`` tags and the ``redirects`` (integer),
    ``http_version`` (string) and ``cert_days`` (float, even when sent as 30) fields."""
    db = "t_" + uuid.uuid4().hex[:12]
    state = CollectorState(registry=registry, sink=InfluxV1Sink(influx.url, db))
    client = TestClient(TestServer(create_app(state, tmp_path), host="127.0.0.1"))
    await client.start_server()
    try:
        token = registry.add("p-fra", region="eu-central", country="DE")
        ts = time.time_ns()
        records = [
            dns_record(ts=ts, qname="a.example.", rtt_ms=1.0),
            dns_record(ts=ts, qname="b.example.", rtt_ms=2.0),
            dns_record(
                ts=ts,
                qname="a.example.",
                transport="https",
                port=443,
                http_version="2",
                connect_ms=0.5,
                tls_ms=3.0,
                rtt_ms=4.0,
            ),
            http_record(ts=ts - 1),
            http_record(ts=ts, cert_days=29.5, http_version="2", redirects=0, family=4),
        ]
        r = await client.post("/api/v1/measurements", json=batch(*records), headers=auth(token))
        assert await r.json() == {"accepted": 5, "rejected": [], "duplicate": False}

        dns = influx.query("SELECT rtt_ms, http_version FROM dns GROUP BY qname, transport", db=db)
        assert sorted(
            (d["qname"], d["transport"], d["rtt_ms"], d["http_version"]) for d in dns
        ) == [
            ("a.example.", "https", 4.0, "2"),
            ("a.example.", "udp", 1.0, None),
            ("b.example.", "udp", 2.0, None),
        ]
        assert field_types(influx, db, "dns")["http_version"] == "string"

        http = influx.query("SELECT * FROM http ORDER BY time", db=db)
        got = [
            (h["provider"], h["family"], h["redirects"], h["http_version"], h["cert_days"])
            for h in http
        ]
        assert got == [("acme", "6", 2, "1.1", 30.0), ("acme", "4", 0, "2", 29.5)]
        types = field_types(influx, db, "http")
        assert (types["redirects"], types["http_version"], types["cert_days"]) == (
            "integer",
            "string",
            "float",
        )
    finally:
        await client.close()

"""Generated bodies against the ingest API: never a 5xx, always a reason.

Besides shapeless JSON and random bytes, the bodies are built from what once broke the
collector: NUL in strings, integers past int64, tags over 1 KiB, strings over 64 KiB,
JSON nested deeper than the decoder follows, bytes that are not UTF-8, and bodies that
claim a gzip or deflate encoding they do not have. The sink is InfluxDB 1.6.7 itself,
with no spool in between: a line it refuses would be a 503, so "never a 5xx" also says
that every record the collector accepts is one InfluxDB stores.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.influx import InfluxDB

from collector.app import CollectorState, Limits, create_app
from collector.ingest.registry import Registry
from collector.store.sink import InfluxV1Sink

# strings InfluxDB or line protocol cannot carry as they are
hostile_text = st.one_of(
    st.builds(lambda a, b: a + "\x00" + b, st.text(max_size=8), st.text(max_size=8)),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["x", "ü", "\\", " ", ",", '"']),
        st.integers(1000, 1100),
    ),
    st.builds(lambda c, n: c * n, st.sampled_from(["y", "\n"]), st.integers(65_000, 70_000)),
)
huge_ints = st.one_of(
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1]),
    st.integers(min_value=2**63, max_value=10**30),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    huge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = [
    "kind",
    "ts",
    "target",
    "server",
    "port",
    "transport",
    "qname",
    "qtype",
    "rcode",
    "timestamping",
    "rtt_ms",
    "site",
    "url",
    "status",
    "error",
    "truncated",
    "http_version",
    "redirects",
    "cert_days",
    "provider",
    "family",
    "method",
]


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Mostly record-shaped objects with hostile or wrong values, sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    rec: dict[str, Any] = {
        "kind": draw(st.sampled_from(["dns", "http", "ping", "probe", "x"])),
        "ts": time.time_ns(),
    }
    for name in draw(st.lists(st.sampled_from(field_names), max_size=12, unique=True)):
        rec[name] = draw(json_values)
    return rec


def dns_record() -> dict[str, Any]:
    """A record the collector takes as it is."""
    return {
        "kind": "dns",
        "ts": time.time_ns(),
        "target": "t",
        "server": "192.0.2.53",
        "port": 53,
        "transport": "udp",
        "qname": "example.com.",
        "qtype": "SOA",
        "rcode": "NOERROR",
        "timestamping": "kernel",
        "rtt_ms": 1.5,
        "site": "fra1",
    }


HOSTILE_FIELDS = [
    *("target", "qname", "site", "provider", "server", "error", "http_version"),
    *("answers", "size", "ttl", "serial"),
]


@st.composite
def hostile_dns(draw: st.DrawFn) -> dict[str, Any]:
    """A valid dns record with one to three of its values made hostile."""
    rec = dns_record()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(HOSTILE_FIELDS))
        if name in ("answers", "size", "ttl", "serial"):
            rec[name] = draw(huge_ints | st.integers(0, 2**32))
        else:
            rec[name] = draw(hostile_text | st.text(min_size=1, max_size=20))
    return rec


@st.composite
def flood(draw: st.DrawFn) -> list[dict[str, Any]]:
    """What one probe sends to hurt the others: invented targets and sites (a
    cardinality burst), a serial storm on one target, or sites a DNS server chose to
    end in a backslash."""
    n = draw(st.integers(1, 40))
    shape = draw(st.sampled_from(["invent", "storm", "backslash"]))
    tag = uuid.uuid4().hex[:6]
    if shape == "invent":
        return [{**dns_record(), "target": f"x{tag}-{i}", "site": f"s{tag}-{i}"} for i in range(n)]
    if shape == "storm":
        return [
            {**dns_record(), "serial": draw(st.integers(0, 2**32 - 1)), "site": ("a", "b")[i % 2]}
            for i in range(n)
        ]
    return [{**dns_record(), "site": draw(st.text(max_size=8)) + "\\"} for _ in range(n)]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def batch_json(draw: st.DrawFn) -> bytes:
    """A batch envelope (sometimes broken) around generated records."""
    body: dict[str, Any] = {
        "schema": draw(st.sampled_from([1, 1, 1, 0, 2, "1", None])),
        "batch": draw(st.one_of(st.just(str(uuid.uuid4())), st.text(max_size=80))),
        "sent_at": time.time_ns(),
        "measurements": draw(st.lists(records() | hostile_dns(), max_size=6))
        + (draw(flood()) if draw(st.integers(0, 4)) == 0 else []),
    }
    for k in draw(st.lists(st.sampled_from(list(body)), max_size=2, unique=True)):
        del body[k]
    raw = json.dumps(body)
    if draw(st.integers(0, 9)) == 0:  # a record, or the whole body, nested past any limit
        depth = draw(st.integers(500, 5000))
        raw = (
            raw.replace('"measurements": [', f'"measurements": [{nested(depth)}, ', 1)
            if draw(st.booleans()) and '"measurements": [' in raw
            else nested(depth)
        )
    data = raw.encode()
    if draw(st.integers(0, 9)) == 0:  # bytes that are not UTF-8, inside a string
        bad = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        at = data.find(b'"', 1)
        data = data[: at + 1] + bad + data[at + 1 :] if at > 0 else bad + data
    return data


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A body and the headers it is sent with (its Content-Encoding, true or not)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        data = draw(st.binary(max_size=200))
    elif kind == 1:
        data = json.dumps(draw(json_values)).encode()
    else:
        data = draw(batch_json())
    encoding = draw(st.sampled_from([None] * 6 + ["gzip", "deflate", "gzip-lie", "deflate-lie"]))
    if encoding is None:
        return data, {}
    if encoding == "gzip":
        packed = gzip.compress(data)
        if draw(st.integers(0, 4)) == 0:  # cut short, or followed by junk
            packed = draw(st.sampled_from([packed[: len(packed) // 2], packed + b"junk"]))
        return packed, {"Content-Encoding": "gzip"}
    if encoding == "deflate":
        return zlib.compress(data), {"Content-Encoding": "deflate"}
    # a plain body labelled as compressed (curl -H 'Content-Encoding: gzip' -d xx)
    return data, {"Content-Encoding": encoding.removesuffix("-lie")}


def test_generated_bodies_never_5xx_always_a_reason(influx: InfluxDB, tmp_path: Path) -> None:
    """2,000 generated bodies: each answer is 200, 400 or 413, with a reason or a count;
    never a 5xx, whatever the body holds or claims to be."""
    registry = Registry(tmp_path / "registry.sqlite")
    token = registry.add("fuzz", region="eu")
    loop = asyncio.new_event_loop()
    state = CollectorState(
        registry=registry,
        sink=InfluxV1Sink(influx.url, "fuzz"),
        # one client posts everything: lift the per-probe rates, which are not under test
        limits=Limits(records_per_second=1e9, burst_records=1e9, requests_per_second=1e9),
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(state, tmp_path), host="127.0.0.1"), loop=loop
    )
    loop.run_until_complete(client.start_server())
    seen: dict[int, int] = {}

    async def post(body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        resp = await client.post(
            "/api/v1/measurements",
            data=io.BytesIO(body),  # aiohttp warns of large raw bytes bodies
            headers={"Authorization": f"Bearer {token}", **headers},
        )
        return resp.status, await resp.json()

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(bodies())
    def check(sent: tuple[bytes, dict[str, str]]) -> None:
        status, answer = loop.run_until_complete(post(*sent))
        seen[status] = seen.get(status, 0) + 1
        assert status in (200, 400, 413), (status, answer)
        if status == 200:
            assert set(answer) == {"accepted", "rejected", "duplicate"}
            assert all(isinstance(r["error"], str) and r["error"] for r in answer["rejected"])
            reasons = [r["error"] for r in answer["rejected"]]
        else:
            assert isinstance(answer["error"], str) and answer["error"]
            reasons = [answer["error"]]
        for why in reasons:  # our words (with the values sent), never the decoder's
            assert " - at `$" not in why and "Expected `" not in why, why
            assert "Object missing" not in why and "Invalid enum" not in why, why

    try:
        check()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
        registry.close()
    assert sum(seen.values()) >= 2000
    assert seen.get(200, 0) > 100 and seen.get(400, 0) > 100  # both paths were exercised

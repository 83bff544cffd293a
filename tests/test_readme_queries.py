"""The README's "What is in InfluxDB" holds against the real InfluxDB: its schema table
is what the collector writes, and its InfluxQL queries run and return rows, none empty.

Points are seeded through the collector's real ingest path (registry tags, line protocol),
so the README is held to the schema the collector writes, not to one written by hand.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support.influx import InfluxDB
from test_collector import auth, batch, dns_record

from collector.app import CollectorState, create_app
from collector.ingest.registry import Registry
from collector.store.sink import InfluxV1Sink

README = Path(__file__).parent.parent / "README.md"
DB = "readme"


def section() -> str:
    text = README.read_text()
    part = text[text.index("## What is in InfluxDB") :]
    return part[: part.index("\n## ", 1)]


def readme_queries() -> list[str]:
    return re.findall(r"`(SELECT [^`]+)`", section())


def readme_schema() -> dict[str, tuple[set[str], set[str]]]:
    """measurement -> (tags, fields), from the section's table."""
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", section(), re.MULTILINE)
    return {m: (set(tags.split(", ")), set(fields.split(", "))) for m, tags, fields in rows}


#: an ask's id: what the records answering an ask carry in their ``ask`` tag
ASK = "0123456789abcdef"


def records(now: int) -> list[dict[str, Any]]:
    """Every tag and field of the schema at least once: two names of one target, DoH
    over HTTP/2, a timeout, a page over IPv4 and IPv6 with redirects, a failed fetch,
    echoes and a failed TCP ping, a heartbeat; one of each kind answering an ask."""
    dns = {"provider": "acme", "answers": 1, "size": 94, "ttl": 300}
    http = {
        "kind": "http",
        "target": "www",
        "url": "https://www.example.com/",
        "topology": "anycast",
        "provider": "acme",
        "ip": "192.0.2.80",
        "status": 200,
        "dns_ms": 5.0,
        "connect_ms": 10.0,
        "tls_ms": 20.0,
        "bytes": 1000,
        "redirects": 1,
        "http_version": "1.1",
        "cert_days": 42.5,
    }
    ping = {
        "kind": "ping",
        "target": "anycast-ns",
        "server": "192.0.2.53",
        "method": "icmp",
        "timestamping": "kernel",
        "topology": "anycast",
        "provider": "acme",
        "family": 4,
    }
    trace = {
        "kind": "trace",
        "target": "anycast-ns",
        "server": "192.0.2.53",
        "method": "udp",
        "port": 53,
        "timestamping": "kernel",
        "reached": False,
        "path_id": "0123456789abcdef",
        "topology": "anycast",
        "provider": "acme",
        "family": 4,
    }
    s = 10**9
    return [
        *(dns_record(ts=now - i * s, rtt_ms=10.0 + i, **dns) for i in range(5)),
        *(dns_record(ts=now - i * s, qname="www.example.com.", rtt_ms=20.0 + i) for i in range(3)),
        *(
            dns_record(
                ts=now - i * s,
                transport="https",
                port=443,
                http_version="2",
                connect_ms=0.4,
                tls_ms=2.0,
                rtt_ms=15.0 + i,
                **dns,
            )
            for i in range(3)
        ),
        dns_record(ts=now - 7 * s, rcode="TIMEOUT", rtt_ms=None, error="timeout: no answer"),
        dns_record(ts=now - 8 * s, rtt_ms=11.0, ask=ASK, **dns),  # an ask's answer
        *(
            {
                **http,
                "ts": now - i * s,
                "family": 4 + 2 * (i % 2),
                "ttfb_ms": 50.0 + i,
                "total_ms": 60.0 + i,
            }
            for i in range(4)
        ),
        {**http, "ts": now - 9 * s, "family": 4, "error": "status: 503", "status": 503},
        {**http, "ts": now - 10 * s, "family": 4, "ttfb_ms": 51.0, "ask": ASK},
        *({**ping, "ts": now - i * s, "rtt_ms": 9.0 + i} for i in range(3)),
        {**ping, "ts": now - 8 * s, "method": "tcp", "error": "timeout: connect timed out"},
        {**ping, "ts": now - 9 * s, "rtt_ms": 9.5, "ask": ASK},
        {  # a trace that reached the server, and an asked one that did not
            **trace,
            "ts": now - 11 * s,
            "reached": True,
            "site": "fra1",
            "hops": [
                {
                    "ttl": 1,
                    "addr": "198.51.100.1",
                    "rtt_ms": [0.5, 0.6],
                    "sent": 2,
                    "kind": "time-exceeded",
                },
                {"ttl": 2, "sent": 2},
                {"ttl": 3, "addr": "192.0.2.53", "rtt_ms": [9.0], "sent": 2, "kind": "reply"},
            ],
        },
        {**trace, "ts": now - 12 * s, "hops": [], "error": "forbidden: ping", "ask": ASK},
        {
            "kind": "probe",
            "ts": now,
            "version": "0.1.0",
            "uptime_s": 60.0,
            "spool_depth": 0,
            "dropped": 0,
            "rejected": 0,
        },
    ]


async def seed(influx: InfluxDB, data: Path) -> None:
    registry = Registry(data / "registry.sqlite")
    state = CollectorState(registry=registry, sink=InfluxV1Sink(influx.url, DB))
    client = TestClient(TestServer(create_app(state, data), host="127.0.0.1"))
    await client.start_server()
    try:
        now = time.time_ns()
        for probe, region in (("p-fra", "eu-central"), ("p-iad", "us-east")):
            token = registry.add(probe, region=region, country="DE", lat=50.1, lon=8.7)
            recs = [{k: v for k, v in r.items() if v is not None} for r in records(now)]
            r = await client.post("/api/v1/measurements", json=batch(*recs), headers=auth(token))
            body = await r.json()
            assert body["rejected"] == [] and body["accepted"] == len(recs), body
    finally:
        await client.close()
        registry.close()


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """A real InfluxDB holding the seeded points, in database ``DB``."""
    with InfluxDB() as i:
        i.start()
        asyncio.run(seed(i, tmp_path_factory.mktemp("collector")))
        yield i


def test_the_readme_has_queries_and_a_schema() -> None:
    """The section is found: its queries, and a table row per measurement."""
    assert len(readme_queries()) >= 6
    assert {"dns", "http", "ping", "probe"} <= set(readme_schema())


@pytest.mark.parametrize("measurement", sorted(readme_schema()))
def test_readme_schema_is_what_the_collector_writes(influx: InfluxDB, measurement: str) -> None:
    """The table's tags and fields of a measurement are exactly the tag and field keys
    InfluxDB holds after the seeded records went through the collector."""
    tags, fields = readme_schema()[measurement]
    held_tags = {r["tagKey"] for r in influx.query(f"SHOW TAG KEYS FROM {measurement}", db=DB)}
    held_fields = {
        r["fieldKey"] for r in influx.query(f"SHOW FIELD KEYS FROM {measurement}", db=DB)
    }
    assert (held_tags, held_fields) == (tags, fields)


@pytest.mark.parametrize("query", readme_queries())
def test_readme_query_runs(influx: InfluxDB, query: str) -> None:
    """Each query returns rows, and no row without a value (no empty time buckets)."""
    rows = influx.query(query, db=DB)
    assert rows, f"no rows for {query}"
    for row in rows:
        values = {k: v for k, v in row.items() if k not in ("time", "name")}
        assert None not in values.values(), f"{query}: a row without a value: {row}"

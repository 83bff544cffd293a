"""The InfluxQL queries the README shows run against the real InfluxDB and return rows.

Points are seeded through the collector's real ingest path (registry tags, line protocol),
so the queries are held to the schema the collector writes, not to one written by hand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from influx import InfluxDB
from test_collector import auth, batch, dns_record

from collector.app import CollectorState, create_app
from collector.registry import Registry
from collector.sink import InfluxV1Sink

README = Path(__file__).parent.parent / "README.md"


def readme_queries() -> list[str]:
    text = README.read_text()
    section = text[text.index("## What is in InfluxDB") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"`(SELECT [^`]+)`", section)


@pytest.fixture(scope="module")
def influx() -> Iterator[InfluxDB]:
    with InfluxDB() as i:
        yield i.start()


def test_the_readme_has_queries() -> None:
    assert len(readme_queries()) >= 3


@pytest.mark.parametrize("query", readme_queries())
async def test_readme_query_runs(query: str, influx: InfluxDB, tmp_path: Path) -> None:
    db = "readme"
    registry = Registry(tmp_path / "registry.sqlite")
    state = CollectorState(registry=registry, sink=InfluxV1Sink(influx.url, db))
    client = TestClient(TestServer(create_app(state, tmp_path), host="127.0.0.1"))
    await client.start_server()
    try:
        now = time.time_ns()
        for probe, region in (("p-fra", "eu-central"), ("p-iad", "us-east")):
            token = registry.add(probe, region=region, lat=50.1, lon=8.7)
            records = [
                *(dns_record(ts=now - i * 10**9, rtt_ms=10.0 + i) for i in range(5)),
                *(
                    {
                        "kind": "http",
                        "ts": now - i * 10**9,
                        "target": "www",
                        "url": "https://www.example.com/",
                        "topology": "anycast",
                        "ip": "192.0.2.80",
                        "status": 200,
                        "dns_ms": 5.0,
                        "connect_ms": 10.0,
                        "tls_ms": 20.0,
                        "ttfb_ms": 50.0 + i,
                        "total_ms": 60.0 + i,
                        "bytes": 1000,
                    }
                    for i in range(3)
                ),
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
            r = await client.post("/api/v1/measurements", json=batch(*records), headers=auth(token))
            body = await r.json()
            assert body["rejected"] == [] and body["accepted"] == len(records), body
        rows = influx.query(query, db=db)
        assert rows, f"no rows for {query}"
    finally:
        await client.close()
        registry.close()

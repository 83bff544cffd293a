"""The collector's store path: the v2 sink, and the spool that makes "accepted" durable.

Real InfluxDB 1.6.7 throughout. The v2 sink writes through ``tests/support/v2shim.py``, a test-only
stand-in for InfluxDB 1.8's ``/api/v2/write`` (no InfluxDB 1.8, 2 or 3 can be installed
here); the shim also shows which points each write carried, and in what order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from support import v2shim
from support.influx import InfluxDB
from test_collector import auth, batch, dns_record

from collector.app import CollectorState, create_admin_app, create_app
from collector.ingest.registry import Registry
from collector.store.sink import GroupCommit, InfluxV2Sink
from collector.store.spool import Spool, SpoolingSink


@pytest.fixture
def influx() -> Iterator[InfluxDB]:
    """An InfluxDB of the test's own: these tests stop and start it."""
    with InfluxDB() as i:
        yield i.start()


@pytest.fixture
async def shim(influx: InfluxDB) -> AsyncIterator[TestServer]:
    server = TestServer(v2shim.make_app(influx.url), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


class Stack:
    """A collector app over shim -> InfluxDB, with its spool under ``data``."""

    def __init__(
        self,
        shim: TestServer,
        registry: Registry,
        data: Path,
        max_bytes: int,
        db: str = "",
        **spooling: Any,
    ) -> None:
        self.db = db or "s_" + uuid.uuid4().hex[:10]
        self.spool = Spool(data / "spool", max_bytes)
        store = InfluxV2Sink(str(shim.make_url("")), self.db, token="user:pw", timeout=10)  # noqa: S106
        sink = GroupCommit(SpoolingSink(store, self.spool, **spooling))
        self.state = CollectorState(registry=registry, sink=sink, spool=self.spool)
        self.client = TestClient(TestServer(create_app(self.state, data), host="127.0.0.1"))

    async def __aenter__(self) -> Stack:
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def post(self, token: str, records: list[dict[str, Any]]) -> tuple[int, Any]:
        r = await self.client.post(
            "/api/v1/measurements", json=batch(*records), headers=auth(token)
        )
        return r.status, await r.json()


async def wait_for(cond: Any, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def create_db(influx: InfluxDB, db: str) -> None:
    """InfluxDB 1.8 has no "create the bucket"; the v2 path needs the database to exist."""
    influx.query(f'CREATE DATABASE "{db}"')


async def test_v2_sink_writes_through_api_v2_write(
    influx: InfluxDB, shim: TestServer, registry: Registry, tmp_path: Path
) -> None:
    """With the v2 API, points go through /api/v2/write and land under the schema."""
    token = registry.add("probe-v2", region="sa-east", country="BR")
    async with Stack(shim, registry, tmp_path, 10**6) as stack:
        create_db(influx, stack.db)
        records = [dns_record(ts=time.time_ns() - i, rtt_ms=float(i)) for i in range(20)]
        timed = "popwatch_collector_ingest_seconds_count"
        before = REGISTRY.get_sample_value(timed, {"status": "200"}) or 0.0
        status, body = await stack.post(token, records)
        assert (status, body["accepted"]) == (200, 20)
        assert REGISTRY.get_sample_value(timed, {"status": "200"}) == before + 1
        assert len(_forwarded_ts(shim)) == 20  # every point went the v2 way
        rows = influx.query("SELECT * FROM dns", db=stack.db)
        assert sorted(r["rtt_ms"] for r in rows) == [float(i) for i in range(20)]
        assert {(r["probe"], r["region"], r["country"]) for r in rows} == {
            ("probe-v2", "sa-east", "BR")
        }
        assert len(stack.spool) == 0


async def test_influxdb_down_spools_then_full_is_503_then_replays_in_order(
    influx: InfluxDB, shim: TestServer, registry: Registry, tmp_path: Path
) -> None:
    """InfluxDB down: batches are accepted into the fsync'd spool until it is full, then
    503 (nothing dropped). When InfluxDB returns the spool replays, oldest first, and
    every accepted point is stored once."""
    token = registry.add("probe-s", region="eu")
    async with Stack(shim, registry, tmp_path, 8_000) as stack:
        create_db(influx, stack.db)
        influx.pause()
        accepted: list[int] = []
        full_before = metric("popwatch_collector_spool_full_total")
        t0 = time.time_ns() - 10**9
        status = 200
        while status == 200:
            n = len(accepted)
            records = [dns_record(ts=t0 + n * 100 + i, rtt_ms=float(n * 100 + i)) for i in range(5)]
            status, body = await stack.post(token, records)
            if status == 200:
                assert body["accepted"] == 5
                accepted.extend(r["ts"] for r in records)
        assert status == 503 and "collector spool full" in body["error"]
        assert metric("popwatch_collector_spool_full_total") == full_before + 1
        assert len(accepted) >= 10  # at least two batches were taken into the spool
        segments = sorted((tmp_path / "spool").glob("*.lp"))
        assert len(segments) == len(stack.spool) == len(accepted) // 5
        assert metric("popwatch_collector_spool_bytes") == stack.spool.bytes > 0
        admin = TestClient(TestServer(create_admin_app(stack.state), host="127.0.0.1"))
        await admin.start_server()
        try:  # /readyz is on the admin listener: not ready, and it says why
            ready = await admin.get("/readyz")
            answer = await ready.json()
        finally:
            await admin.close()
        assert ready.status == 503
        ping, writes, room = answer["problems"]
        assert ping == "InfluxDB does not answer /ping"
        assert writes.startswith("InfluxDB writes failing: InfluxDB write: HTTP 503")
        assert room == f"spool nearly full: {stack.spool.bytes} of 8000 bytes"
        assert (answer["ready"], answer["influxdb"]) == (False, "unreachable")
        assert (answer["spool_bytes"], answer["spool_max_bytes"]) == (stack.spool.bytes, 8_000)

        influx.start()
        await wait_for(lambda: len(stack.spool) == 0)
        written = _forwarded_ts(shim)
        assert written == sorted(written) == accepted  # in the order they were accepted
        rows = influx.query("SELECT rtt_ms FROM dns", db=stack.db)
        assert len(rows) == len(accepted)
        assert list((tmp_path / "spool").glob("*.lp")) == []
        status, body = await stack.post(token, [dns_record()])  # direct again
        assert status == 200 and len(stack.spool) == 0


async def test_slow_influxdb_is_hedged_by_the_spool(
    influx: InfluxDB, shim: TestServer, registry: Registry, tmp_path: Path
) -> None:
    """A write InfluxDB has not confirmed within spool_after is made durable in the spool
    and the probe answered; when the write then lands, its segment is deleted, not
    replayed (one write reaches InfluxDB)."""
    token = registry.add("probe-h", region="eu")
    async with Stack(shim, registry, tmp_path, 10**6) as stack:
        create_db(influx, stack.db)
        # 3 s against spool_after's 25 ms: a loaded machine's fsync or scheduling delay
        # cannot let the write land before the answer
        shim.app[v2shim.DELAY][0] = 3.0
        status, body = await stack.post(token, [dns_record(rtt_ms=float(i)) for i in range(4)])
        assert (status, body["accepted"]) == (200, 4)
        assert _forwarded_ts(shim) == []  # answered before InfluxDB confirmed...
        assert len(list((tmp_path / "spool").glob("*.lp"))) == 1  # ...because it is here
        await wait_for(lambda: len(stack.spool) == 0)
        assert len(_forwarded_ts(shim)) == 4
        assert len(shim.app[v2shim.BODIES]) == 1  # the hedged write, never replayed
        assert len(influx.query("SELECT rtt_ms FROM dns", db=stack.db)) == 4


async def test_hedged_writes_hold_bounded_memory(
    influx: InfluxDB, shim: TestServer, registry: Registry, tmp_path: Path
) -> None:
    """While hedged writes (spooled, still being written) hold max_hedged_bytes, the next
    request waits for one to land (its answer is delayed: backpressure); if none lands
    within MAX_HEDGE_WAIT_S its points go to the spool without a write attempt. Nothing
    is lost either way: every point is stored once."""
    from collector.store import spool as spool_mod

    token = registry.add("probe-m", region="eu")
    untried = REGISTRY.get_sample_value("popwatch_collector_spooled_untried_total") or 0.0
    async with Stack(shim, registry, tmp_path, 10**6, max_hedged_bytes=1) as stack:
        create_db(influx, stack.db)
        shim.app[v2shim.DELAY][0] = spool_mod.MAX_HEDGE_WAIT_S + 1.5
        status, _ = await stack.post(token, [dns_record(rtt_ms=1.0)])  # hedged: 1 byte cap
        landed = len(shim.app[v2shim.BODIES])  # answered once spooled: not written yet
        t0 = time.monotonic()
        status2, _ = await stack.post(token, [dns_record(rtt_ms=2.0)])
        second = time.monotonic() - t0
        assert (status, status2) == (200, 200)
        assert landed == 0
        assert second >= spool_mod.MAX_HEDGE_WAIT_S  # held back while the first was out
        after = REGISTRY.get_sample_value("popwatch_collector_spooled_untried_total")
        assert after == untried + 1
        shim.app[v2shim.DELAY][0] = 0.0
        await wait_for(lambda: len(stack.spool) == 0)
        assert len(influx.query("SELECT rtt_ms FROM dns", db=stack.db)) == 2


async def test_spool_survives_a_collector_restart(
    influx: InfluxDB, shim: TestServer, registry: Registry, tmp_path: Path
) -> None:
    """Points spooled by a collector that then stops are replayed by the next one."""
    token = registry.add("probe-r", region="us")
    async with Stack(shim, registry, tmp_path, 10**6) as first:
        db = first.db
        create_db(influx, db)
        influx.pause()
        status, body = await first.post(token, [dns_record(rtt_ms=float(i)) for i in range(7)])
        assert (status, body["accepted"]) == (200, 7)
        assert len(first.spool) == 1
    influx.start()
    assert len(list((tmp_path / "spool").glob("*.lp"))) == 1
    async with Stack(shim, registry, tmp_path, 10**6, db) as second:
        await wait_for(lambda: len(second.spool) == 0)
    assert len(influx.query("SELECT rtt_ms FROM dns", db=db)) == 7


def _forwarded_ts(shim: TestServer) -> list[int]:
    """The timestamps of every point the shim forwarded, in the order it forwarded them."""
    return [
        int(line.rsplit(b" ", 1)[1])
        for body in shim.app[v2shim.BODIES]
        for line in body.splitlines()
        if line
    ]


async def test_v2_sink_with_nothing_listening_is_unavailable() -> None:
    """No InfluxDB at all (connection refused): the v2 sink says unavailable, not a crash,
    and /readyz would say unreachable."""
    from support.servers import free_port

    from collector.store.sink import SinkUnavailable

    sink = InfluxV2Sink(f"http://127.0.0.1:{free_port()}", "db", timeout=2)
    await sink.start()
    try:
        with pytest.raises(SinkUnavailable, match="InfluxDB write"):
            await sink.write(b"dns,probe=p rtt_ms=1.0 1\n")
        assert await sink.ready() is False
    finally:
        await sink.close()

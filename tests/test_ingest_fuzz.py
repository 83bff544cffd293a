"""Generated bodies against the ingest API: never a 5xx, always a reason."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influx import InfluxDB

from collector.app import CollectorState, create_app
from collector.registry import Registry
from collector.sink import InfluxV1Sink


@pytest.fixture(scope="module")
def influx() -> Iterator[InfluxDB]:
    with InfluxDB() as i:
        yield i.start()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
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
]


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Mostly record-shaped objects with hostile or wrong values, sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    rec: dict[str, Any] = {
        "kind": draw(st.sampled_from(["dns", "http", "probe", "x"])),
        "ts": time.time_ns(),
    }
    for name in draw(st.lists(st.sampled_from(field_names), max_size=12, unique=True)):
        rec[name] = draw(json_values)
    return rec


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    body: dict[str, Any] = {
        "schema": draw(st.sampled_from([1, 1, 1, 0, 2, "1", None])),
        "batch": draw(st.one_of(st.just(str(uuid.uuid4())), st.text(max_size=80))),
        "sent_at": time.time_ns(),
        "measurements": draw(st.lists(records(), max_size=6)),
    }
    for k in draw(st.lists(st.sampled_from(list(body)), max_size=2, unique=True)):
        del body[k]
    return json.dumps(body).encode()


def test_generated_bodies_never_5xx_always_a_reason(influx: InfluxDB, tmp_path: Path) -> None:
    """2,000 generated bodies: each answer is 200, 400 or 413, with a reason or a count."""
    registry = Registry(tmp_path / "registry.sqlite")
    token = registry.add("fuzz", region="eu")
    loop = asyncio.new_event_loop()
    state = CollectorState(registry=registry, sink=InfluxV1Sink(influx.url, "fuzz"))
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(state, tmp_path), host="127.0.0.1"), loop=loop
    )
    loop.run_until_complete(client.start_server())
    seen: dict[int, int] = {}

    async def post(body: bytes) -> tuple[int, Any]:
        resp = await client.post(
            "/api/v1/measurements", data=body, headers={"Authorization": f"Bearer {token}"}
        )
        return resp.status, await resp.json()

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(bodies())
    def check(body: bytes) -> None:
        status, answer = loop.run_until_complete(post(body))
        seen[status] = seen.get(status, 0) + 1
        assert status in (200, 400, 413), (status, answer)
        if status == 200:
            assert set(answer) == {"accepted", "rejected", "duplicate"}
            assert all(isinstance(r["error"], str) and r["error"] for r in answer["rejected"])
        else:
            assert isinstance(answer["error"], str) and answer["error"]

    try:
        check()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
        registry.close()
    assert sum(seen.values()) >= 2000
    assert seen.get(200, 0) > 100 and seen.get(400, 0) > 100  # both paths were exercised

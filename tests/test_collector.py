"""The collector's ingest API against a real InfluxDB 1.6.7 (v1 sink), on loopback."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support.influx import InfluxDB
from support.servers import free_port

from collector.app import CollectorState, create_admin_app, create_app
from collector.ingest.registry import Registry
from collector.store.sink import InfluxV1Sink


@pytest.fixture
def db() -> str:
    return "t_" + uuid.uuid4().hex[:12]


async def _client(state: CollectorState, data_dir: Path) -> TestClient[Any, Any]:
    client = TestClient(TestServer(create_app(state, data_dir), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def api(
    influx: InfluxDB, registry: Registry, db: str, tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    state = CollectorState(registry=registry, sink=InfluxV1Sink(influx.url, db))
    client = await _client(state, tmp_path)
    yield client
    await client.close()


def now_ns() -> int:
    return time.time_ns()


def dns_record(**kw: Any) -> dict[str, Any]:
    r = {
        "kind": "dns",
        "ts": now_ns(),
        "target": "anycast-ns",
        "server": "192.0.2.53",
        "port": 53,
        "transport": "udp",
        "qname": "example.com.",
        "qtype": "SOA",
        "rcode": "NOERROR",
        "timestamping": "kernel",
        "rtt_ms": 12.345,
        "site": "fra1",
        "topology": "anycast",
        "family": 4,
        "serial": 2026112501,
    }
    r.update(kw)
    return r


def batch(*records: dict[str, Any], batch_id: str | None = None) -> dict[str, Any]:
    return {
        "schema": 1,
        "batch": batch_id or str(uuid.uuid4()),
        "sent_at": now_ns(),
        "measurements": list(records),
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_accepted_records_land_with_registry_tags(
    api: TestClient[Any, Any], registry: Registry, influx: InfluxDB, db: str
) -> None:
    """Accepted records are in InfluxDB, tagged with the region the registry holds."""
    token = registry.add("probe-fra-1", region="eu-central", country="DE")
    records = [dns_record(ts=now_ns() - i * 1000, rtt_ms=10.0 + i) for i in range(5)]
    resp = await api.post("/api/v1/measurements", json=batch(*records), headers=auth(token))
    assert resp.status == 200
    assert await resp.json() == {"accepted": 5, "rejected": [], "duplicate": False}
    rows = influx.query("SELECT * FROM dns", db=db)
    assert len(rows) == 5
    assert {r["region"] for r in rows} == {"eu-central"}
    assert {r["probe"] for r in rows} == {"probe-fra-1"}
    assert {r["country"] for r in rows} == {"DE"}
    assert sorted(r["rtt_ms"] for r in rows) == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert all(r["ok"] is True and r["site"] == "fra1" and r["serial"] == 2026112501 for r in rows)


async def test_body_cannot_claim_another_probe(
    api: TestClient[Any, Any], registry: Registry, influx: InfluxDB, db: str
) -> None:
    """A record saying probe/region of another probe still gets the sender's tags."""
    token = registry.add("probe-a", region="eu")
    registry.add("probe-b", region="us")
    rec = dns_record(probe="probe-b", region="us")
    resp = await api.post("/api/v1/measurements", json=batch(rec), headers=auth(token))
    assert (await resp.json())["accepted"] == 1
    (row,) = influx.query("SELECT * FROM dns", db=db)
    assert (row["probe"], row["region"]) == ("probe-a", "eu")


async def test_bad_and_revoked_tokens_get_401(
    api: TestClient[Any, Any], registry: Registry
) -> None:
    """No token, a wrong one, and a revoked one are each refused with a reason."""
    token = registry.add("p", region="eu")
    body = batch(dns_record())
    r = await api.post("/api/v1/measurements", json=body)
    assert r.status == 401 and "Bearer" in (await r.json())["error"]
    r = await api.post("/api/v1/measurements", json=body, headers=auth(token[:-1] + "x"))
    assert r.status == 401
    assert (await api.post("/api/v1/measurements", json=body, headers=auth(token))).status == 200
    registry.revoke("p")
    r = await api.post("/api/v1/measurements", json=batch(dns_record()), headers=auth(token))
    assert r.status == 401 and (await r.json())["error"] == "unknown or revoked token"


async def test_invalid_records_rejected_one_by_one(
    api: TestClient[Any, Any], registry: Registry, influx: InfluxDB, db: str
) -> None:
    """Each bad record is rejected with its index and reason; the good ones are kept."""
    token = registry.add("p", region="eu")
    records = [
        dns_record(rtt_ms=1.0),
        dns_record(rtt_ms=-5.0),  # negative latency
        {"kind": "ftp", "ts": now_ns()},  # unknown kind
        dns_record(transport="carrier-pigeon"),
        {k: v for k, v in dns_record().items() if k != "qname"},  # missing field
        dns_record(rtt_ms="fast"),  # wrong type
        dns_record(rtt_ms="__INF__"),  # 1e999 on the wire: infinity once parsed
        dns_record(ts=now_ns() + 3600 * 10**9),  # an hour in the future
        dns_record(ts=now_ns() - 30 * 86400 * 10**9),  # a month old
        dns_record(rtt_ms=2.0),
    ]
    raw = json.dumps(batch(*records)).replace('"__INF__"', "1e999")
    resp = await api.post("/api/v1/measurements", data=raw, headers=auth(token))
    body = await resp.json()
    assert resp.status == 200 and body["accepted"] == 2
    reasons = {r["index"]: r["error"] for r in body["rejected"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8]
    # in our words, with the key: never the decoder's text
    assert reasons[1] == "rtt_ms: expected a number >= 0, got -5"
    assert reasons[2] == "kind: 'ftp' is not one of dns, http, ping, trace, probe"
    assert reasons[3] == "transport: 'carrier-pigeon' is not one of https, tcp, tls, udp"
    assert reasons[4] == "qname: required key is missing"
    assert reasons[5] == "rtt_ms: expected a number from 0 to 3600000 or null, got a string"
    assert reasons[6] == "rtt_ms: expected a finite number, got inf"
    assert "in the future" in reasons[7] and "in the past" in reasons[8]
    assert sorted(r["rtt_ms"] for r in influx.query("SELECT * FROM dns", db=db)) == [1.0, 2.0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not a batch"),
        (b"[1, 2]", "not a batch"),
        (
            json.dumps({"schema": 2, "batch": "x", "sent_at": 1, "measurements": []}).encode(),
            "schema 2 is not supported",
        ),
        (
            json.dumps({"schema": "1", "batch": "x", "sent_at": 1, "measurements": []}).encode(),
            'schema "1" is not supported (this collector knows 1)',
        ),
        (b'{"schema": 2, "batch": "x", "sent_at": 1, "measurements": [nonsense', "not a batch"),
        (
            json.dumps({"schema": 1, "batch": "", "sent_at": 1, "measurements": []}).encode(),
            "batch id must be a string of 1-64 characters",
        ),
        (
            json.dumps(
                {"schema": 1, "batch": "x" * 65, "sent_at": 1, "measurements": [dns_record()]}
            ).encode(),
            "batch id must be a string of 1-64 characters",
        ),
        (
            json.dumps({"schema": 1, "batch": "x", "sent_at": 0, "measurements": []}).encode(),
            "not a batch: sent_at: expected an integer > 0, got 0",
        ),
        (
            json.dumps({"schema": 1, "batch": "x", "sent_at": 1, "measurements": {}}).encode(),
            "not a batch: measurements: expected a list, got a mapping",
        ),
    ],
)
async def test_not_a_batch_is_400(
    api: TestClient[Any, Any], registry: Registry, body: bytes, reason: str
) -> None:
    """A body that is not a wire.Batch is 400 with a reason: not JSON, not an object, an
    unknown schema (named), a batch id that is not 1-64 characters, a sent_at that is not
    a positive epoch, records that are not a list."""
    token = registry.add("p", region="eu")
    r = await api.post("/api/v1/measurements", data=body, headers=auth(token))
    assert r.status == 400 and reason in (await r.json())["error"]


async def test_duplicate_batch_written_once(
    api: TestClient[Any, Any], registry: Registry, influx: InfluxDB, db: str
) -> None:
    """The same batch id twice: acknowledged as duplicate, stored once."""
    token = registry.add("p", region="eu")
    b = batch(dns_record(), dns_record(ts=now_ns() - 5))
    first = await (await api.post("/api/v1/measurements", json=b, headers=auth(token))).json()
    again = await (await api.post("/api/v1/measurements", json=b, headers=auth(token))).json()
    assert first == {"accepted": 2, "rejected": [], "duplicate": False}
    assert again == {"accepted": 0, "rejected": [], "duplicate": True}
    assert len(influx.query("SELECT * FROM dns", db=db)) == 2


async def test_oversized_body_and_gzip_bomb_are_413(
    api: TestClient[Any, Any], registry: Registry
) -> None:
    """A 10 MB body and a small gzip that inflates past the limit are both 413."""
    token = registry.add("p", region="eu")
    big = b'{"schema":1,"batch":"x","sent_at":1,"measurements":[' + b" " * 10_000_000 + b"]}"
    r = await api.post("/api/v1/measurements", data=io.BytesIO(big), headers=auth(token))
    assert r.status == 413
    bomb = gzip.compress(b" " * 50_000_000)  # ~50 kB on the wire
    assert len(bomb) < 100_000
    r = await api.post(
        "/api/v1/measurements", data=bomb, headers={**auth(token), "Content-Encoding": "gzip"}
    )
    assert r.status == 413 and "decoded" in (await r.json())["error"]
    ok = gzip.compress(json.dumps(batch(dns_record())).encode())
    r = await api.post(
        "/api/v1/measurements", data=ok, headers={**auth(token), "Content-Encoding": "gzip"}
    )
    assert r.status == 200 and (await r.json())["accepted"] == 1


HOSTILE = ["a,b", "k=v", "with space", 'q"uote', "back\\slash", "x,region=us y=1", "ü-ñ"]


async def test_hostile_tag_values_stored_intact(
    api: TestClient[Any, Any], registry: Registry, influx: InfluxDB, db: str
) -> None:
    """Commas, equals, spaces, quotes and backslashes in tags are stored as sent."""
    token = registry.add("p", region="eu")
    recs = [dns_record(target=v, site=v, ts=now_ns() - i) for i, v in enumerate(HOSTILE)]
    resp = await api.post("/api/v1/measurements", json=batch(*recs), headers=auth(token))
    assert (await resp.json())["accepted"] == len(HOSTILE)
    rows = influx.query("SELECT * FROM dns", db=db)
    assert sorted(r["target"] for r in rows) == sorted(HOSTILE)
    assert all(r["target"] == r["site"] and r["region"] == "eu" for r in rows)
    assert influx.query("SHOW TAG VALUES FROM dns WITH KEY = region", db=db) == [
        {"key": "region", "value": "eu", "name": "dns"}
    ]


@pytest.mark.parametrize("value", ["line\nbreak", "ends with\\", "back\\,comma"])
async def test_unrepresentable_tag_rejects_the_record(
    api: TestClient[Any, Any], registry: Registry, influx: InfluxDB, db: str, value: str
) -> None:
    """A tag line protocol cannot carry rejects its record (with the reason), not the line."""
    token = registry.add("p", region="eu")
    recs = [dns_record(target=value), dns_record(target="fine", ts=now_ns() - 1)]
    body = await (
        await api.post("/api/v1/measurements", json=batch(*recs), headers=auth(token))
    ).json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 0
    assert "tag target" in body["rejected"][0]["error"]
    assert [r["target"] for r in influx.query("SELECT * FROM dns", db=db)] == ["fine"]


async def test_influxdb_down_is_503_and_nothing_is_acknowledged(
    registry: Registry, tmp_path: Path
) -> None:
    """When InfluxDB cannot be reached the batch is not accepted: 503 with Retry-After."""
    state = CollectorState(
        registry=registry, sink=InfluxV1Sink(f"http://127.0.0.1:{free_port()}", "x", timeout=2)
    )
    client = await _client(state, tmp_path)
    try:
        token = registry.add("p", region="eu")
        b = batch(dns_record())
        r = await client.post("/api/v1/measurements", json=b, headers=auth(token))
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert "cannot store now" in (await r.json())["error"]
        admin = TestClient(TestServer(create_admin_app(state), host="127.0.0.1"))
        await admin.start_server()
        try:  # /readyz is on the admin listener
            assert (await admin.get("/readyz")).status == 503
        finally:
            await admin.close()
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_config_endpoint_with_etag(
    influx: InfluxDB, registry: Registry, tmp_path: Path
) -> None:
    """GET /api/v1/config serves the targets file; If-None-Match gives 304."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n  - {name: a, topology: anycast, server: 192.0.2.1, "
        "queries: [{qname: example.com}]}\n"
    )
    state = CollectorState(
        registry=registry, sink=InfluxV1Sink(influx.url, "cfg"), targets_file=targets
    )
    client = await _client(state, tmp_path)
    try:
        token = registry.add("p", region="eu")
        r = await client.get("/api/v1/config", headers=auth(token))
        assert r.status == 200
        body = await r.json()
        assert body["targets"][0]["name"] == "a" and body["targets"][0]["kind"] == "dns"
        etag = r.headers["ETag"]
        r2 = await client.get("/api/v1/config", headers={**auth(token), "If-None-Match": etag})
        assert r2.status == 304
        assert (await client.get("/api/v1/config")).status == 401
    finally:
        await client.close()


COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")
PROBE = str(Path(sys.executable).parent / "popwatch-probe")


def test_probe_records_through_a_collector_process(influx: InfluxDB, tmp_path: Path) -> None:
    """Records from a real `popwatch-probe once --json` against Knot, posted to a real
    `popwatch-collector run`, are in InfluxDB under the registry's tags."""
    from support import servers

    data = tmp_path / "collector"
    add = subprocess.run(
        [
            COLLECTOR,
            "probes",
            "add",
            "probe-ams-1",
            "--region",
            "eu-west",
            "--country",
            "NL",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = add.stdout.strip()
    assert token.startswith("pw1_") and "shown once" in add.stderr
    port = free_port()
    env = {
        **os.environ,
        "POPWATCH_LISTEN": f"127.0.0.1:{port}",
        # not the default 8081, which the compose stack test publishes meanwhile
        "POPWATCH_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "POPWATCH_DATA_DIR": str(data),
        "POPWATCH_INFLUXDB_URL": influx.url,
        "POPWATCH_INFLUXDB_API": "v1",
        "POPWATCH_INFLUXDB_BUCKET": "e2e",
    }
    proc = subprocess.Popen([COLLECTOR, "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        servers.wait_http(f"http://127.0.0.1:{port}/healthz")
        with servers.Knot("knot-ams", "id-ams") as knot:
            knot.start()
            out = subprocess.run(
                [
                    PROBE,
                    "once",
                    "--server",
                    f"127.0.0.1:{knot.port}",
                    "--qname",
                    "example.test",
                    "--nsid",
                    "--count",
                    "20",
                    "--interval",
                    "0",
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        records = [json.loads(x) for x in out.stdout.splitlines()]
        body = json.dumps(batch(*records)).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/measurements",
            data=gzip.compress(body),
            headers={**auth(token), "Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp) == {"accepted": 20, "rejected": [], "duplicate": False}
        rows = influx.query("SELECT * FROM dns", db="e2e")
        assert len(rows) == 20
        assert {(r["probe"], r["region"], r["country"]) for r in rows} == {
            ("probe-ams-1", "eu-west", "NL")
        }
        assert {r["site"] for r in rows} == {"knot-ams"}
        assert {r["timestamping"] for r in rows} == {"kernel"}
        assert sorted(r["time"] for r in rows) == sorted(r["ts"] for r in records)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "collector listening on http://127.0.0.1" in err


def test_collector_cli_errors_are_one_line(tmp_path: Path) -> None:
    """Registry and config mistakes are one line naming what is wrong, exit status 2."""
    data = str(tmp_path / "c")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COLLECTOR, *args], capture_output=True, text=True, timeout=30)

    assert run("probes", "add", "p1", "--region", "eu", "--data-dir", data).returncode == 0
    again = run("probes", "add", "p1", "--region", "eu", "--data-dir", data)
    assert again.returncode == 2
    assert again.stderr.strip() == (
        "popwatch-collector probes add: probe p1 exists; revoke it first to issue a new token"
    )
    bad = run("probes", "add", "p2", "--region", "eu", "--country", "Germany", "--data-dir", data)
    assert bad.stderr.strip() == (
        "popwatch-collector probes add: country 'Germany': use a two-letter ISO 3166 code like DE"
    )
    assert run("probes", "revoke", "p1", "--data-dir", data).returncode == 0
    listed = run("probes", "list", "--data-dir", data).stdout
    assert "p1" in listed and "revoked" in listed
    conf = tmp_path / "collector.yaml"
    conf.write_text("influxdb_api: v3\n")
    out = run("run", "--config", str(conf))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"popwatch-collector: {conf}: influxdb_api: 'v3' is not one of auto, v1, v2"
    )


async def test_probe_over_its_rate_gets_429(
    influx: InfluxDB, registry: Registry, db: str, tmp_path: Path
) -> None:
    """Past its records/s budget a probe gets 429 with Retry-After; others are unaffected."""
    from collector.app import Limits

    state = CollectorState(
        registry=registry,
        sink=InfluxV1Sink(influx.url, db),
        limits=Limits(records_per_second=10, burst_records=20),
    )
    client = await _client(state, tmp_path)
    try:
        noisy = registry.add("noisy", region="eu")
        calm = registry.add("calm", region="eu")
        recs = [dns_record(ts=now_ns() - i) for i in range(15)]
        first = await client.post("/api/v1/measurements", json=batch(*recs), headers=auth(noisy))
        assert first.status == 200
        second = await client.post("/api/v1/measurements", json=batch(*recs), headers=auth(noisy))
        assert second.status == 429
        assert int(second.headers["Retry-After"]) >= 1
        assert "records/s" in (await second.json())["error"]
        other = await client.post("/api/v1/measurements", json=batch(*recs), headers=auth(calm))
        assert other.status == 200
    finally:
        await client.close()

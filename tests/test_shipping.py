"""Probes ship to a collector through their spool: every measurement arrives, once.

Real processes: InfluxDB 1.6.7, Knot, one `popwatch-collector run`, three
`popwatch-probe run`. "Sent" is counted on Knot: each measurement is one query.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from support import servers
from support.influx import InfluxDB
from support.procs import (
    PROBE,
    Collector,
    probe_env,
    register,
    start_probes,
    stop_probes,
    stored,
    targets_file,
    wait_stored,
)

from probe.wire import DnsRecord

REGIONS = {"probe-fra": "eu-central", "probe-iad": "us-east", "probe-sin": "ap-southeast"}


def test_every_measurement_arrives_once_across_a_collector_crash(
    influx: InfluxDB, tmp_path: Path
) -> None:
    """Collector SIGKILLed mid-stream and restarted: stored == sent, tags right, no dupes.

    Mid-stream, as measured: the probes had shipped (rows stored) when it was killed, and
    measured on while it was down and after it was back (Knot's count grew each time)."""
    db = "ship"
    data = tmp_path / "collector"
    tokens = register(data, REGIONS)
    collector = Collector(influx, data, db)
    probes: list[subprocess.Popen[bytes]] = []
    with servers.Knot("knot-ship", "id-ship") as knot:
        knot.start()
        targets = targets_file(tmp_path / "targets.yaml", knot.port, 5)
        collector.start()
        before = knot.queries()
        try:
            probes = start_probes(tmp_path, collector, tokens, targets)
            shipping = until(lambda: len(stored(influx, db)) >= 3 * 5, 60)  # a round each
            time.sleep(1)
            collector.kill()  # mid-stream: probes keep measuring into their spools
            at_kill = knot.queries() - before
            time.sleep(2.5)
            at_restart = knot.queries() - before
            collector.start()
            time.sleep(2.5)
        finally:
            codes = stop_probes(probes, 30)
        sent = knot.queries() - before
    try:
        assert codes == [0, 0, 0]
        assert shipping, "nothing was stored before the kill"
        assert 0 < at_kill < at_restart < sent, (at_kill, at_restart, sent)
        rows = wait_stored(influx, db, sent, 20)
        assert len(rows) == sent
        keys = {(r["probe"], r["target"], r["time"]) for r in rows}
        assert len(keys) == len(rows)  # no duplicates
        assert {(r["probe"], r["region"]) for r in rows} == set(REGIONS.items())
        assert all(isinstance(r["rtt_ms"], float) for r in rows)
        for probe in REGIONS:  # every spool is empty: all was delivered
            assert list((tmp_path / probe / "spool").glob("*.json.gz")) == []
    finally:
        collector.stop()


def test_probe_config_errors_for_shipping(tmp_path: Path) -> None:
    """collector_url without a token is one line naming the key."""
    conf = tmp_path / "probe.yaml"
    conf.write_text("collector_url: http://127.0.0.1:1\n")
    out = subprocess.run(
        [
            PROBE,
            "run",
            "--config",
            str(conf),
            "--targets",
            str(Path(__file__).parent.parent / "probe" / "example.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"popwatch-probe: {conf}: token: required with collector_url (set POPWATCH_TOKEN or "
        "POPWATCH_TOKEN_FILE)"
    )


def test_probe_killed_and_restarted_loses_nothing(influx: InfluxDB, tmp_path: Path) -> None:
    """A probe SIGKILLed mid-stream, then restarted on the same data dir: stored == sent.

    What it had gathered but not yet batched is in its journal; the restart spools it.
    """
    db = "probekill"
    data = tmp_path / "collector"
    (token,) = register(data, {"probe-kill": "eu"}).values()
    collector = Collector(influx, data, db)
    collector.start()
    try:
        with servers.Knot("knot-kill", "id-kill") as knot:
            knot.start()
            targets = targets_file(tmp_path / "targets.yaml", knot.port, 10)
            conf = tmp_path / "probe.yaml"
            # long batches: a kill always finds records gathered but not yet batched
            conf.write_text("id: probe-kill\nbatch_s: 30\nbatch_records: 100000\n")
            env = probe_env(collector, token, tmp_path / "probe", targets)
            before = knot.queries()
            first = subprocess.Popen(
                [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.DEVNULL
            )
            # two rounds of the ten series measured (not a fixed sleep: a slow start)
            until(lambda: knot.queries() - before >= 20, 60)
            first.kill()
            first.wait()
            at_kill = knot.queries() - before
            journal = tmp_path / "probe" / "spool" / "journal.jsonl"
            assert journal.stat().st_size > 0  # the kill caught records unbatched
            second = subprocess.Popen(
                [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.PIPE, text=True
            )
            until(lambda: knot.queries() - before >= at_kill + 20, 60)  # two rounds more
            second.send_signal(signal.SIGTERM)
            _, err = second.communicate(timeout=30)
            sent = knot.queries() - before
        assert second.returncode == 0, err
        assert "records from before a crash, spooled now" in err
        rows = wait_stored(influx, db, sent, 20)
        assert at_kill >= 20 and sent >= at_kill + 20, (at_kill, sent)
        assert len(rows) == sent
        assert len({(r["target"], r["time"]) for r in rows}) == len(rows)
    finally:
        collector.stop()


def test_targets_from_the_collector_and_heartbeats(influx: InfluxDB, tmp_path: Path) -> None:
    """A probe with no targets of its own measures what the collector serves, picks up a
    changed list without a restart, and sends heartbeats with the registry's tags."""
    db = "remote"
    data = tmp_path / "collector"
    (token,) = register(data, {"probe-r": "sa-east"}, "--lat", "-23.5", "--lon", "-46.6").values()
    with servers.Knot("knot-r", "id-r") as knot:
        knot.start()

        def targets_yaml(n: int) -> str:
            return "targets:\n" + "".join(
                f"  - {{name: served{i}, topology: unicast, server: 127.0.0.1, "
                f"port: {knot.port}, interval: 1, timeout: 0.5, "
                f"queries: [{{qname: example.test}}]}}\n"
                for i in range(n)
            )

        served = tmp_path / "served.yaml"
        served.write_text(targets_yaml(1))
        collector = Collector(influx, data, db)
        collector.env["POPWATCH_TARGETS"] = str(served)
        collector.start()
        conf = tmp_path / "probe.yaml"
        conf.write_text("id: probe-r\nbatch_s: 0.3\nheartbeat_s: 1\nconfig_s: 1\n")
        env = probe_env(collector, token, tmp_path / "probe")
        probe = subprocess.Popen(
            [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            until(lambda: {r["target"] for r in stored(influx, db)} == {"served0"}, 60)
            served.write_text(targets_yaml(2))  # a second target appears
            until(
                lambda: (
                    "served1" in {r["target"] for r in stored(influx, db)}
                    and len(influx.query("SELECT * FROM probe", db=db)) >= 3
                ),
                60,
            )
        finally:
            probe.send_signal(signal.SIGTERM)
            _, err = probe.communicate(timeout=30)
            time.sleep(0.5)
            collector.stop()
    assert probe.returncode == 0, err
    assert "targets replaced: 2 targets, 2 series" in err
    dns_rows = stored(influx, db)
    assert {r["target"] for r in dns_rows} == {"served0", "served1"}
    beats = influx.query("SELECT * FROM probe", db=db)
    assert len(beats) >= 3
    assert {(b["probe"], b["region"], b["lat"], b["lon"]) for b in beats} == {
        ("probe-r", "sa-east", -23.5, -46.6)
    }
    assert all(b["uptime_s"] >= 0 and b["dropped"] == 0 for b in beats)


def spooled(directory: Path, pattern: str = "*.json.gz") -> int:
    return len(list(directory.glob(pattern)))


def collector_metric(collector: Collector, name: str) -> float:
    with urllib.request.urlopen(f"{collector.admin_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def until(cond: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("outage", "spool_max"),
    [(30, None), (25, 8_000)],
    ids=["influxdb-down-30s", "collector-spool-full"],
)
def test_influxdb_outage_loses_nothing(tmp_path: Path, outage: int, spool_max: int | None) -> None:
    """InfluxDB stopped under two probes. With room in the collector's spool, the
    collector accepts into it; once the spool is full it answers 503 and the probes keep
    their batches. When InfluxDB is back every measurement arrives once."""
    db = "outage"
    data = tmp_path / "collector"
    tokens = register(data, {"probe-a": "eu", "probe-b": "us"})
    with InfluxDB() as influx, servers.Knot("knot-out", "id-out") as knot:
        influx.start()
        knot.start()
        targets = targets_file(tmp_path / "targets.yaml", knot.port, 3)
        collector = Collector(influx, data, db)
        if spool_max:
            collector.env["POPWATCH_SPOOL_MAX_BYTES"] = str(spool_max)
        collector.start()
        before = knot.queries()
        probes: list[subprocess.Popen[bytes]] = []
        try:
            probes = start_probes(tmp_path, collector, tokens, targets)
            time.sleep(3)
            influx.pause()
            paused_at, at_pause = time.monotonic(), knot.queries()
            time.sleep(outage - 5)
            held = [spooled(tmp_path / p / "spool") for p in tokens]
            in_collector = spooled(data / "spool", "*.lp")
            full = collector_metric(collector, "popwatch_collector_spool_full_total")
            if spool_max:  # the collector's spool is full: the probes hold their batches
                assert full > 0 and all(n > 3 for n in held), (full, held)
                spool_bytes = collector_metric(collector, "popwatch_collector_spool_bytes")
                assert spool_max / 2 < spool_bytes <= spool_max
            else:  # the collector took everything into its own spool
                assert full == 0 and in_collector > 10 and all(n <= 2 for n in held), (
                    in_collector,
                    held,
                )
            time.sleep(5)
            window, during = time.monotonic() - paused_at, knot.queries() - at_pause
            influx.start()
            caught_up = until(
                lambda: (
                    all(spooled(tmp_path / p / "spool") == 0 for p in tokens)
                    and spooled(data / "spool", "*.lp") == 0
                ),
                60,
            )
        finally:
            codes = stop_probes(probes, 60)
            sent = knot.queries() - before
        try:
            assert caught_up, "the spools did not drain"
            assert codes == [0, 0]
            rows = wait_stored(influx, db, sent, 30)
            # the probes measured throughout: two probes, three 1-second series, over the
            # outage as it really lasted (one run each may fall outside either end)
            assert during >= 2 * 3 * (window - 2), (during, window)
            assert len(rows) == sent
            assert len({(r["probe"], r["target"], r["time"]) for r in rows}) == len(rows)
            for p in tokens:
                assert spooled(tmp_path / p / "spool") == 0
        finally:
            collector.stop()


def record(ts: int, target: str, rtt_ms: float) -> DnsRecord:
    """A UDP A answer from 192.0.2.1, for the tests that feed a shipper directly."""
    return DnsRecord(
        ts=ts,
        target=target,
        server="192.0.2.1",
        port=53,
        transport="udp",
        qname="a.",
        qtype="A",
        rcode="NOERROR",
        timestamping="kernel",
        rtt_ms=rtt_ms,
    )


def test_probe_honours_429_retry_after(influx: InfluxDB, tmp_path: Path) -> None:
    """A probe over its rate gets 429 with Retry-After and waits that long, rather than
    hammering the collector; every record still arrives."""
    from probe.shipper import Shipper

    data = tmp_path / "collector"
    (token,) = register(data, {"probe-fast": "eu"}).values()
    collector = Collector(influx, data, "ratelimit")
    collector.env["POPWATCH_RECORDS_PER_SECOND"] = "10"
    collector.env["POPWATCH_BURST_RECORDS"] = "20"
    collector.start()
    shipper = Shipper(collector.url, token, tmp_path / "spool", batch_records=20)
    try:
        now = time.time_ns()
        for i in range(60):  # three batches of 20: the burst takes one, then 2 s per batch
            shipper.write(record(ts=now - i * 1000, target="t", rtt_ms=float(i)))
        assert shipper.depth == 3

        async def ship() -> float:
            stop = asyncio.Event()
            t0 = time.monotonic()
            task = asyncio.create_task(shipper.run(stop))
            while shipper.depth:  # noqa: ASYNC110 (the spool is files on disk)
                await asyncio.sleep(0.05)
            stop.set()
            await task
            return time.monotonic() - t0

        elapsed = asyncio.run(ship())
        limited = collector_metric(collector, "popwatch_collector_rate_limited_total")
        assert limited == 2, limited  # one 429 per wait: it waited as told, no hammering
        assert 3.5 <= elapsed <= 10, elapsed  # two waits of ~2 s, as Retry-After said
        assert shipper.accepted == 60
        rows = influx.query("SELECT rtt_ms FROM dns", db="ratelimit")
        assert sorted(r["rtt_ms"] for r in rows) == [float(i) for i in range(60)]
    finally:
        shipper.close()
        collector.stop()


def test_spool_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    """Past its bound the spool drops the oldest batch and counts it; a batch dropped
    while the sender was about to read it is skipped, not a crash."""
    from probe.shipper import Shipper

    shipper = Shipper(
        "http://127.0.0.1:1", "token", tmp_path / "spool", batch_records=50, spool_max_bytes=3_000
    )
    try:
        for i in range(400):
            shipper.write(record(ts=10**18 + i, target=f"t{i}", rtt_ms=float(i)))
        files = sorted((tmp_path / "spool").glob("*.json.gz"))
        assert shipper.dropped > 0
        assert sum(f.stat().st_size for f in files) <= 3_000
        assert shipper.depth == len(files) == 8 - shipper.dropped
        gone = tmp_path / "spool" / "0-gone.json.gz"
        assert shipper._load(gone) is None
    finally:
        shipper.close()
    assert not (tmp_path / "spool" / "journal.jsonl").exists()


async def test_a_batch_that_keeps_failing_is_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collector that answers 500 to one batch every time: after MAX_ATTEMPTS such
    answers the batch moves to spool/refused/ with a log line, and the batch behind it is
    delivered (was: retried forever, with everything behind it piling up).

    The "collector" is a stand-in (a real one never answers 500 to one batch only), and
    the backoff is taken to zero so that ten attempts take no minutes."""
    from aiohttp import web

    from probe import shipper as shipper_mod

    monkeypatch.setattr(shipper_mod.random, "uniform", lambda a, b: 0.0)
    seen: list[str] = []

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        batch = msgspec.json.decode(body)  # aiohttp has inflated the gzip body
        seen.append(batch["batch"])
        if batch["measurements"][0]["target"] == "poison":
            return web.Response(status=500, text="internal error")
        n = len(batch["measurements"])
        return web.json_response({"accepted": n, "rejected": [], "duplicate": False})

    app = web.Application()
    app.router.add_post("/api/v1/measurements", ingest)
    runner = web.AppRunner(app)
    await runner.setup()
    port = servers.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    shipper = shipper_mod.Shipper(
        f"http://127.0.0.1:{port}", "token", tmp_path / "spool", batch_records=1
    )
    try:
        shipper.write(record(ts=10**18, target="poison", rtt_ms=1.0))
        shipper.write(record(ts=10**18 + 1, target="fine", rtt_ms=1.0))
        stop = asyncio.Event()
        sender = asyncio.create_task(shipper.run(stop))
        for _ in range(100):
            if shipper.depth == 0:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await sender
    finally:
        shipper.close()
        await runner.cleanup()
    assert shipper.depth == 0
    assert len(list((tmp_path / "spool" / "refused").glob("*.json.gz"))) == 1
    assert len(seen) == shipper_mod.MAX_ATTEMPTS + 1  # ten tries of one, one of the other
    assert shipper.accepted == 1

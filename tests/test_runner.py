"""The runner and scheduler together, in-process, against real sockets."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Iterator

import msgspec
import pytest
from support import servers

from probe import metrics
from probe.config import ProbeConfig, Target
from probe.output import MemorySink
from probe.runner import Prober, Unresolved
from probe.wire import DnsRecord


def target(name: str, port: int, **kw: object) -> Target:
    spec = {
        "name": name,
        "topology": "unicast",
        "server": "127.0.0.1",
        "port": port,
        "queries": [{"qname": "example.test", "qtype": "SOA"}],
        **kw,
    }
    return msgspec.convert(spec, Target)


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A UDP port that takes queries and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


async def test_overload_is_reported_not_hidden(
    black_hole: int, caplog: pytest.LogCaptureFixture
) -> None:
    """With too little concurrency the probe logs its lag and counts skipped runs.

    Three series each need a slot for 0.8 s every second, with one slot: the probe
    cannot keep up, and must say so rather than quietly run each series less often.
    """
    cfg = ProbeConfig(
        id="overload",
        concurrency=1,
        targets=[target(f"t{i}", black_hole, interval=1, timeout=0.8) for i in range(3)],
    )
    sink = MemorySink()
    prober = Prober(cfg, sink)
    prober.LOG_EVERY_S = 1.0
    skipped_before = metrics.SKIPPED._value.get()
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="popwatch.probe")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.create_task(prober.run(stop))
    await asyncio.sleep(5)
    stop.set()
    await task
    elapsed = loop.time() - t0  # 5 s, or more on a loaded machine
    assert all(r.rcode == "TIMEOUT" for r in sink.records)
    # one slot, 0.8 s each: about 6 in 5 s, never the 15 that three 1-second series
    # would take; at most one slot's worth of the time the run really had
    assert 3 <= len(sink.records) <= elapsed / 0.8 + 1, (len(sink.records), elapsed)
    assert metrics.SKIPPED._value.get() - skipped_before >= 3
    assert any(
        "behind schedule" in r.getMessage() and "runs were skipped" in r.getMessage()
        for r in caplog.records
    )


async def test_every_series_runs_on_time_when_not_overloaded(knot: servers.Knot) -> None:
    """Thirty 1-second series for 3.5 s: each runs 3 or 4 times, all answered (5 if a
    loaded machine woke the test late enough to give them 4 s or more)."""
    cfg = ProbeConfig(
        id="on-time",
        targets=[target(f"t{i}", knot.port, interval=1, timeout=0.5) for i in range(30)],
    )
    sink = MemorySink()
    before = knot.queries()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.create_task(Prober(cfg, sink).run(stop))
    await asyncio.sleep(3.5)
    window = loop.time() - t0  # 3.5 s, or more on a loaded machine
    stop.set()
    await task
    per = {}
    for r in sink.records:
        per[r.target] = per.get(r.target, 0) + 1
    assert len(per) == 30
    assert all(3 <= n <= math.ceil(window) for n in per.values()), (per, window)
    assert all(r.rcode == "NOERROR" and r.site == "knot-fra1" for r in sink.records)
    assert knot.queries() - before == len(sink.records)


async def test_re_resolution_follows_a_changed_address() -> None:
    """When a server's A record changes, the next resolution round moves the series.

    A Knot of its own (its zone is edited): ns1 moves from 127.0.0.1 to 127.0.0.2, the
    zone is reloaded, and after ``resolve_all`` the probe measures the new address only.
    """
    with servers.Knot("knot-moving", "id-moving") as k:
        k.start()
        cfg = ProbeConfig(
            id="moving",
            resolver=f"127.0.0.1:{k.port}",
            targets=[
                target(
                    "by-name",
                    k.port,
                    server="ns1.example.test",
                    families=[4],
                    interval=1,
                    timeout=0.5,
                )
            ],
        )
        sink = MemorySink()
        prober = Prober(cfg, sink)
        stop = asyncio.Event()
        task = asyncio.create_task(prober.run(stop))
        await asyncio.sleep(2.2)
        zone = k.dir / "example.test.zone"
        zone.write_text(
            zone.read_text()
            .replace("ns1     A     127.0.0.1", "ns1     A     127.0.0.2")
            .replace(str(servers.SERIAL), str(servers.SERIAL + 1))
        )
        reload = await asyncio.create_subprocess_exec(
            "knotc", "-s", str(k.dir / "knot.sock"), "zone-reload", "example.test"
        )
        assert await reload.wait() == 0
        await asyncio.sleep(0.3)
        moved_at = len(sink.records)
        await prober.resolve_all()
        await asyncio.sleep(2.2)
        stop.set()
        await task
    before, after = sink.records[:moved_at], sink.records[moved_at + 1 :]
    assert {r.server for r in before} == {"127.0.0.1"}
    assert {r.server for r in after} == {"127.0.0.2"}  # Knot does not listen there
    assert all(r.rcode == "NETERR" for r in after)


async def test_replaced_target_does_not_keep_the_old_servers_addresses(
    knot: servers.Knot,
) -> None:
    """A target whose server changes to a name that does not resolve drops its old series,
    rather than measuring the old host under the new definition: what is left is the one
    series that records the failure to resolve."""
    old = target(
        "by-name", knot.port, server="ns1.example.test", families=[4], interval=60, timeout=1
    )
    cfg = ProbeConfig(id="swap", resolver=f"127.0.0.1:{knot.port}", targets=[old])
    prober = Prober(cfg, MemorySink())
    await prober.resolve_all()
    assert len(prober.schedule) == 1
    same = target(
        "by-name", knot.port, server="ns1.example.test", families=[4], interval=60, timeout=1
    )
    await prober.replace_targets([same])
    assert len(prober.schedule) == 1  # unchanged target: still measured
    moved = target(
        "by-name", knot.port, server="nope.example.test", families=[4], interval=60, timeout=1
    )
    await prober.replace_targets([moved])
    jobs = prober.schedule.jobs()
    assert len(jobs) == 1
    assert isinstance(jobs[0], Unresolved)
    assert jobs[0].target == moved


async def test_an_unresolvable_server_name_gives_failure_records(knot: servers.Knot) -> None:
    """A server host name with no address (here: NXDOMAIN from a loopback Knot used as the
    probe's resolver) is measured as failures on schedule, one per transport and query,
    with ``rcode`` NETERR and a ``resolve:`` error, the way an unreachable server is: not
    silence (was: no records at all)."""
    cfg = ProbeConfig(
        id="unresolved",
        resolver=f"127.0.0.1:{knot.port}",
        targets=[
            msgspec.convert(
                {
                    "name": "ghost",
                    "topology": "unicast",
                    "server": "ghost.example.test",
                    "transports": ["udp", "tcp"],
                    "interval": 1,
                    "timeout": 0.5,
                    "queries": [{"qname": "example.test"}],
                },
                Target,
            )
        ],
    )
    sink = MemorySink()
    prober = Prober(cfg, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(prober.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # two runs of each series (~2 s), not a fixed sleep
    while len(sink.records) < 4 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    stop.set()
    await task
    records = [r for r in sink.records if isinstance(r, DnsRecord)]
    assert len(records) == len(sink.records) >= 4  # two series, two runs each or more
    assert {(r.transport, r.server) for r in records} == {
        ("udp", "ghost.example.test"),
        ("tcp", "ghost.example.test"),
    }
    for r in records:
        assert r.rcode == "NETERR"
        assert r.rtt_ms is None
        assert r.error is not None
        assert r.error.startswith("resolve: ghost.example.test: no address"), r.error

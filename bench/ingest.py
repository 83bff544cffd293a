"""Collector ingest: stored throughput against direct InfluxDB writes, latency under
many probes, and the collector's memory under sustained overload.

1. **Throughput, as stored.** Records/s through one `popwatch-collector run` process
   into the real InfluxDB 1.6.7, counted as points InfluxDB holds and answers for, not
   as acknowledged posts (a 200 may mean "in the collector's spool"): each run posts
   for ``--seconds``, then waits until InfluxDB holds every acknowledged record, and the
   rate is the records stored over the time from the first post to the last record
   readable. In the same run the same points are written directly as line protocol to
   the same InfluxDB (the peer, into a database of its own), counted the same way. Same
   batch size, same concurrency. Prints the ratio, and the collector's peak RSS after
   this sustained overload (it posts as fast as the collector answers).
2. **Latency.** 1,000 simulated probes (each with its own token, from its own loopback
   address) send 10 records each second, 10,000 records/s in all, spread evenly, each
   over its own keep-alive connection; p50/p99 of the POST round trip after a
   one-second warm-up that opens those connections, and the collector's peak RSS.
   Measured before the throughput runs, which leave InfluxDB compacting for a while.

    python bench/ingest.py [--seconds 10] [--runs 3] [--batch 5000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from _common import median, pct, servers
from support.influx import InfluxDB

from collector.ingest.points import Identity, to_line
from collector.ingest.registry import Registry
from probe.wire import NS, Batch, DnsRecord, encode

BATCH_ID = b"00000000-0000-0000-0000-000000000000"  # replaced per post
COLLECTOR = shutil.which("popwatch-collector", path=str(Path(sys.executable).parent))


def records(n: int, base_ts: int) -> list[DnsRecord]:
    return [
        DnsRecord(
            ts=base_ts + i,
            target=f"t{i % 50}",
            server="192.0.2.53",
            port=53,
            transport="udp",
            qname="example.com.",
            qtype="SOA",
            rcode="NOERROR",
            timestamping="kernel",
            rtt_ms=10.0 + (i % 1000) / 100,
            site=f"pop{i % 7}",
            topology="anycast",
            family=4,
            answers=1,
            size=100,
            ttl=300,
        )
        for i in range(n)
    ]


async def post_all(
    url: str, bodies: list[bytes], headers: list[dict[str, str]], seconds: float, per_body: int
) -> int:
    """Posts ``bodies`` with one connection per entry of ``headers`` (a probe's token
    each) for ``seconds``; the records acknowledged.

    ``bodies`` are templates, taken in turn: the k-th time round, each record's target
    is prefixed ``k-``, so every post holds points of its own (InfluxDB keeps one point
    per series and timestamp, and a repeat would hide in the count).
    """
    acked = 0
    sent = 0
    stop_at = time.monotonic() + seconds

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal acked, sent
        while time.monotonic() < stop_at:
            i, sent = sent, sent + 1
            rnd = b"%d-t" % (i // len(bodies))
            # a fresh batch id each time, or the collector (rightly) skips a repeat
            body = bodies[i % len(bodies)].replace(BATCH_ID, str(uuid.uuid4()).encode(), 1)
            body = body.replace(b'"target":"t', b'"target":"' + rnd)  # the collector's
            body = body.replace(b",target=t", b",target=" + rnd)  # line protocol's
            async with session.post(url, data=body, headers=headers[k]) as r:
                answer = await r.read()
                assert r.status in (200, 204), (r.status, answer[:300])
            if r.status == 200:  # the collector: every record must have been taken
                taken = json.loads(answer)
                assert taken["accepted"] == per_body, (taken["accepted"], taken["rejected"][:1])
            acked += per_body

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(k, session) for k in range(len(headers))))
    return acked


def stored_rate(
    influx: InfluxDB,
    db: str,
    span: tuple[int, int],
    post: Callable[[], Awaitable[int]],
) -> tuple[float, int]:
    """Records/s stored: ``post`` runs, then InfluxDB is asked until it holds every
    record acknowledged; the rate is what it holds over the time from the first post to
    then. Also the records acknowledged."""
    t0 = time.monotonic()
    acked = asyncio.run(post())
    deadline = time.monotonic() + 300
    while (have := count(influx, db, span)) < acked and time.monotonic() < deadline:
        time.sleep(0.1)
    took = time.monotonic() - t0
    assert have == acked, f"InfluxDB holds {have} of {acked} acknowledged records in {db}"
    return have / took, acked


def count(influx: InfluxDB, db: str, span: tuple[int, int]) -> int:
    """The dns points InfluxDB holds in ``db`` with timestamps in ``span`` (ns)."""
    q = f"SELECT count(rtt_ms) FROM dns WHERE time >= {span[0]} AND time < {span[1]}"  # noqa: S608
    rows = influx.query(q, db=db)
    return int(rows[0]["count"]) if rows else 0


class _Exchange(asyncio.Protocol):
    """One probe's keep-alive HTTP/1.1 connection: write a prebuilt request, time the
    answer. Raw bytes rather than an HTTP client, so that the load generator, on the
    same two cores as the collector and InfluxDB, costs little and adds no lag of its
    own to what it times."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.done: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) >= length and self.done is not None and not self.done.done():
            self.buf = rest[length:]
            self.done.set_result(int(head.split(b" ", 2)[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("collector closed the connection"))

    async def post(self, request: bytes) -> int:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


async def latency(host: str, port: int, tokens: list[str], seconds: float) -> list[float]:
    """Each token posts 10 records once a second (phases spread) over its own keep-alive
    connection; POST latencies in ms.

    Requests are built before the clock starts, so the client spends its time sending.
    The first second is a warm-up and is not timed: each probe opens its connection, as
    a running probe has.
    """
    lat: list[float] = []
    base = time.time_ns() - 60 * NS
    sends = int(seconds) + 1

    def request(k: int, n: int) -> bytes:
        body = encode(
            Batch(
                schema=1,
                batch=str(uuid.uuid4()),
                sent_at=base,
                measurements=records(10, base + (k * sends + n) * 10),
            )
        )
        head = (
            f"POST /api/v1/measurements HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {tokens[k]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    requests = [[request(k, n) for n in range(sends)] for k in range(len(tokens))]
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    statuses: dict[int, int] = {}

    async def probe(k: int) -> None:
        # each probe from an address of its own, as probes are (an address may hold
        # only so many connections: collector.ingest.gate)
        source = f"127.{1 + k // 62500}.{k // 250 % 250}.{k % 250 + 1}"
        _, conn = await loop.create_connection(_Exchange, host, port, local_addr=(source, 0))
        try:
            for n in range(sends):
                due = start + k / len(tokens) + n
                await asyncio.sleep(max(0.0, due - loop.time()))
                t0 = time.perf_counter()
                status = await conn.post(requests[k][n])
                if n:  # the warm-up round is not timed
                    lat.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            if conn.transport is not None:
                conn.transport.close()

    await asyncio.gather(*(probe(k) for k in range(len(tokens))))
    assert set(statuses) == {200}, statuses
    return lat


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--probes", type=int, default=1000)
    args = ap.parse_args()
    assert COLLECTOR, "popwatch-collector is not installed next to this Python"
    results = []
    with tempfile.TemporaryDirectory() as d, InfluxDB() as influx:
        influx.start()
        data = Path(d)
        reg = Registry(data / "registry.sqlite")
        # the throughput runs: one probe per connection, each within its own rates
        main_tokens = [reg.add(f"bench-main-{k}", region="eu") for k in range(args.concurrency)]
        tokens = [reg.add(f"bench-{i}", region=f"r{i % 20}") for i in range(args.probes)]
        reg.close()
        port = servers.free_port()
        env = {
            **os.environ,
            "POPWATCH_LISTEN": f"127.0.0.1:{port}",
            "POPWATCH_ADMIN_LISTEN": f"127.0.0.1:{servers.free_port()}",
            "POPWATCH_DATA_DIR": str(data),
            "POPWATCH_INFLUXDB_URL": influx.url,
            "POPWATCH_INFLUXDB_API": "v1",  # Debian's InfluxDB 1.6.7
            "POPWATCH_INFLUXDB_BUCKET": "bench",
            "POPWATCH_LOG_LEVEL": "warning",
            # one client stands for many probes here: lift the per-probe limit
            "POPWATCH_RECORDS_PER_SECOND": "1e9",
            "POPWATCH_BURST_RECORDS": "1e9",
        }
        proc = subprocess.Popen([COLLECTOR, "run"], env=env)
        try:
            servers.wait_http(f"http://127.0.0.1:{port}/healthz")
            who = Identity("bench-main", "eu")
            ingest_url = f"http://127.0.0.1:{port}/api/v1/measurements"
            direct_url = f"{influx.url}/write?db=direct&precision=ns"
            # latency first, on an InfluxDB not yet busy compacting the throughput runs
            for run in range(args.runs):
                lat = asyncio.run(latency("127.0.0.1", port, tokens, args.seconds))
                rss = vm_hwm_mb(proc.pid)
                results.append({"p50": pct(lat, 50), "p99": pct(lat, 99), "rss": rss})
                print(
                    f"latency run {run + 1}/{args.runs}: {args.probes} probes x 10 records/s: "
                    f"p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms ({len(lat)} posts); "
                    f"collector peak RSS {rss:.0f} MB",
                    flush=True,
                )
            influx.query('CREATE DATABASE "direct"')
            for run in range(args.runs):
                # an hour ago, apart per run: inside the collector's accepted window
                base = time.time_ns() - 3600 * NS + run * 100 * NS
                sets = [records(args.batch, base + j * args.batch) for j in range(20)]
                col_bodies = [
                    encode(Batch(schema=1, batch=BATCH_ID.decode(), sent_at=base, measurements=rs))
                    for rs in sets
                ]
                direct_bodies = [
                    ("\n".join(to_line(r, who) for r in rs) + "\n").encode() for rs in sets
                ]
                headers = [{"Authorization": f"Bearer {t}"} for t in main_tokens]
                span = (base, base + 20 * args.batch)  # the timestamps of this run's records
                via, acked = stored_rate(
                    influx,
                    "bench",
                    span,
                    functools.partial(
                        post_all, ingest_url, col_bodies, headers, args.seconds, args.batch
                    ),
                )
                direct, _ = stored_rate(
                    influx,
                    "direct",
                    span,
                    functools.partial(
                        post_all,
                        direct_url,
                        direct_bodies,
                        [{}] * args.concurrency,
                        args.seconds,
                        args.batch,
                    ),
                )
                results[run].update(via=via, direct=direct, peak=vm_hwm_mb(proc.pid))
                print(
                    f"throughput run {run + 1}/{args.runs}: collector {via:,.0f} records/s "
                    f"stored ({acked:,} acknowledged, all readable), direct {direct:,.0f} "
                    f"points/s stored (ratio {via / direct:.2f}); collector peak RSS "
                    f"{results[run]['peak']:.0f} MB",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    m = {k: median([r[k] for r in results]) for k in results[0]}
    print()
    print(f"ingest, median of {args.runs} runs:")
    print(
        f"  stored through the collector {m['via']:,.0f} records/s; stored by direct line "
        f"protocol {m['direct']:,.0f} points/s; ratio {m['via'] / m['direct']:.2f}   (goal ≥ 0.5)"
    )
    print(
        f"  {args.probes} probes, {args.probes * 10:,} records/s: p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms"
        "   (goal p99 ≤ 50 ms)"
    )
    print(f"  collector peak RSS {m['rss']:.0f} MB at that load")
    print(
        f"  collector peak RSS {m['peak']:.0f} MB under sustained overload ({args.concurrency} "
        f"connections posting {args.batch:,}-record batches as fast as it answers)"
        "   (goal ≤ 150 MB)"
    )


if __name__ == "__main__":
    main()

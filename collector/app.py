"""The collector's HTTP API: ``create_app(config) -> web.Application``.

``POST /api/v1/measurements`` takes a batch (JSON, optionally gzip) from an authenticated
probe. Records are validated one by one: each bad one is rejected with its index and
reason, and the good ones are written. The answer means durable: the points are in
InfluxDB or in the collector's fsync'd spool (``200``, see ``collector.spool``). When
neither can take them (the spool is full), the answer is ``503`` with ``Retry-After``,
and the probe keeps the batch. A repeated batch id is acknowledged as a
duplicate and written once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import metrics
from collector.lineproto import Unrepresentable
from collector.points import Identity, to_line
from collector.registry import Registry
from collector.sink import Sink, SinkUnavailable, encode
from collector.spool import Spool, SpoolFull
from probe.wire import Measurement, decode_record

log = logging.getLogger("popwatch.collector")

NS = 1_000_000_000


@dataclass
class Limits:
    max_body_bytes: int = 5_000_000  # as sent (compressed)
    max_decoded_bytes: int = 20_000_000  # after gzip: a bomb stops here
    max_records: int = 20_000
    max_age_s: float = 7 * 86400  # older records are rejected
    max_future_s: float = 300  # records further ahead of our clock are rejected
    # per probe: a token bucket of records. A probe at 1,000 targets every 10 s sends
    # 100 records/s; the default leaves ample room and stops a runaway or a replay storm.
    records_per_second: float = 2_000
    burst_records: float = 200_000  # a probe coming back with a full spool catches up


class _Buckets:
    """A token bucket of records per probe; ``take`` says how long to wait if it is empty."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, probe: str, n: int) -> float:
        n = min(n, int(self.burst))  # a batch larger than the burst must still get through
        now = self.clock()
        level, at = self._state.get(probe, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if level < n:
            self._state[probe] = (level, now)
            return (n - level) / self.rate
        self._state[probe] = (level - n, now)
        return 0.0


@dataclass
class CollectorState:
    registry: Registry
    sink: Sink
    limits: Limits = field(default_factory=Limits)
    targets_file: Path | None = None
    clock: Callable[[], float] = time.time
    spool: Spool | None = None  # the spool under ``sink``, for /readyz


STATE = web.AppKey("state", CollectorState)


class _RawBatch(msgspec.Struct):
    schema: int
    batch: str
    sent_at: int
    measurements: list[msgspec.Raw]


class _TypedBatch(msgspec.Struct):
    schema: int
    batch: str
    sent_at: int
    measurements: list[Measurement]


_batch_decoder = msgspec.json.Decoder(_RawBatch)
# the common case, a batch without a bad record, is decoded in one call
_typed_decoder = msgspec.json.Decoder(_TypedBatch)


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


class _Seen:
    """Batch ids already written, per probe (SQLite, next to the registry).

    New ids are kept in memory and committed together every ``flush_s`` (one
    transaction, not one per request: an autocommit costs ~45 µs here, a row in a
    transaction ~3 µs). WAL with ``synchronous=NORMAL``: a crash may forget the last
    ids, and then a retried batch is written again; InfluxDB stores identical points
    (same series and timestamp) once, so nothing is counted twice. Ids older than a week
    are pruned once a minute, not on every request.
    """

    def __init__(self, path: Path, flush_s: float = 0.2) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (probe TEXT, batch TEXT, at REAL, "
            "PRIMARY KEY (probe, batch))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS batches_at ON batches (at)")
        self._pruned = 0.0
        self._pending: dict[tuple[str, str], float] = {}
        self._flush_s = flush_s
        self._timer: asyncio.TimerHandle | None = None

    def seen(self, probe: str, batch: str) -> bool:
        if (probe, batch) in self._pending:
            return True
        q = "SELECT 1 FROM batches WHERE probe = ? AND batch = ?"
        return self._db.execute(q, (probe, batch)).fetchone() is not None

    def add(self, probe: str, batch: str, now: float) -> None:
        self._pending[(probe, batch)] = now
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        self._timer = None
        rows = [(p, b, at) for (p, b), at in self._pending.items()]
        self._pending.clear()
        if not rows:
            return
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO batches VALUES (?, ?, ?)", rows)
            now = rows[-1][2]
            if now - self._pruned > 60:
                self._db.execute("DELETE FROM batches WHERE at < ?", (now - 7 * 86400,))
                self._pruned = now
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            # only duplicate detection suffers: a repeat of these batches is written
            # again, and InfluxDB keeps one point per series and timestamp
            log.warning("could not record %d batch ids: %s", len(rows), exc)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._db.close()


SEEN = web.AppKey("seen", _Seen)
BUCKETS = web.AppKey("buckets", _Buckets)


def _identity(request: web.Request) -> Identity | web.Response:
    state = request.app[STATE]
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return _error(401, "missing 'Authorization: Bearer <probe token>'")
    who = state.registry.authenticate(auth.removeprefix("Bearer ").strip())
    if who is None:
        return _error(401, "unknown or revoked token")
    return who


def _decode(body: bytes) -> tuple[_RawBatch | _TypedBatch, list[str | Measurement]]:
    """The batch, and each record or the reason it does not decode.

    One typed decode for the whole batch first; only when that fails is each record
    decoded alone, so every bad one gets its own reason. Raises what ``_batch_decoder``
    raises for a body that is not a batch.
    """
    try:
        typed = _typed_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    else:
        return typed, list(typed.measurements)
    raw = _batch_decoder.decode(body)
    records: list[str | Measurement] = []
    for item in raw.measurements:
        try:
            records.append(decode_record(item))
        except msgspec.ValidationError as exc:
            records.append(str(exc))
        except msgspec.DecodeError as exc:
            records.append(f"not JSON: {exc}")
    return raw, records


async def ingest(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    response = await _ingest(request)
    metrics.INGEST_SECONDS.labels(str(response.status)).observe(time.perf_counter() - t0)
    return response


async def _ingest(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = _identity(request)
    if isinstance(who, web.Response):
        return who
    if (request.content_length or 0) > state.limits.max_body_bytes:
        return _error(413, f"body over {state.limits.max_body_bytes} bytes")
    try:
        body = await request.read()  # aiohttp inflates gzip, up to max_decoded_bytes
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body over {state.limits.max_decoded_bytes} bytes once decoded")
    try:
        raw, records = _decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(400, f"not a batch: {exc}")
    if raw.schema != 1:
        return _error(400, f"schema {raw.schema} is not supported (this collector knows 1)")
    if not 1 <= len(raw.batch) <= 64:
        return _error(400, "batch id must be 1-64 characters")
    if len(raw.measurements) > state.limits.max_records:
        return _error(413, f"more than {state.limits.max_records} records in one batch")
    wait = request.app[BUCKETS].take(who.probe, len(raw.measurements))
    if wait > 0:
        metrics.RATE_LIMITED.inc()
        return _error(
            429,
            f"probe {who.probe} is over {state.limits.records_per_second:g} records/s; slow down",
            **{"Retry-After": str(max(1, round(wait)))},
        )
    seen = request.app[SEEN]
    if seen.seen(who.probe, raw.batch):
        metrics.DUPLICATES.inc()
        return web.json_response({"accepted": 0, "rejected": [], "duplicate": True})
    lines: list[str] = []
    rejected: list[dict[str, Any]] = []
    now = state.clock()
    oldest = int((now - state.limits.max_age_s) * NS)
    newest = int((now + state.limits.max_future_s) * NS)
    for i, record in enumerate(records):
        if isinstance(record, str):
            rejected.append({"index": i, "error": record})
        elif record.ts < oldest:
            age = state.limits.max_age_s
            rejected.append(
                {"index": i, "error": f"ts {record.ts} is more than {age:g} s in the past"}
            )
        elif record.ts > newest:
            ahead = state.limits.max_future_s
            rejected.append(
                {"index": i, "error": f"ts {record.ts} is more than {ahead:g} s in the future"}
            )
        else:
            try:
                lines.append(to_line(record, who))
            except Unrepresentable as exc:
                rejected.append({"index": i, "error": str(exc)})
    try:
        await state.sink.write(encode(lines))
    except SinkUnavailable as exc:
        if isinstance(exc, SpoolFull):
            metrics.SPOOL_FULL.inc()
        log.warning("batch %s from %s not accepted: %s", raw.batch, who.probe, exc)
        return _error(503, f"cannot store now: {exc}", **{"Retry-After": "5"})
    seen.add(who.probe, raw.batch, state.clock())
    metrics.ACCEPTED.inc(len(lines))
    metrics.REJECTED.inc(len(rejected))
    metrics.LAST_SEEN.labels(who.probe, who.region).set(state.clock())
    return web.json_response({"accepted": len(lines), "rejected": rejected, "duplicate": False})


async def config(request: web.Request) -> web.StreamResponse:
    """The targets this collector serves to probes, with an ETag."""
    state = request.app[STATE]
    who = _identity(request)
    if isinstance(who, web.Response):
        return who
    if state.targets_file is None:
        return _error(404, "this collector serves no targets (POPWATCH_TARGETS is unset)")
    from probe.config import ConfigError, load_targets

    try:
        targets = load_targets(state.targets_file)
    except ConfigError as exc:
        return _error(500, str(exc))
    body = msgspec.json.encode({"targets": targets})
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to accept batches: InfluxDB answers, or the spool has room for them."""
    state = request.app[STATE]
    influx_ok = await state.sink.ready()
    body: dict[str, Any] = {"influxdb": "ok" if influx_ok else "unreachable"}
    ok = influx_ok
    if state.spool is not None:
        body["spool_bytes"] = state.spool.bytes
        body["spool_max_bytes"] = state.spool.max_bytes
        ok = ok or state.spool.bytes < state.spool.max_bytes
    return web.json_response(body, status=200 if ok else 503)


async def prom(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(state: CollectorState, data_dir: Path) -> web.Application:
    app = web.Application(client_max_size=state.limits.max_decoded_bytes)
    app[STATE] = state
    app[BUCKETS] = _Buckets(
        state.limits.records_per_second, state.limits.burst_records, state.clock
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[SEEN] = _Seen(data_dir / "batches.sqlite")
        await state.sink.start()
        yield
        await state.sink.close()
        app[SEEN].close()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/api/v1/measurements", ingest)
    app.router.add_get("/api/v1/config", config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prom)
    return app


__all__ = ["STATE", "CollectorState", "Limits", "create_app"]

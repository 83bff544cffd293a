"""The collector's HTTP API: ``create_app(state, data_dir) -> web.Application``.

``POST /api/v1/measurements`` takes a batch (JSON, optionally gzip) from an authenticated
probe. Records are validated one by one: each bad one is rejected with its index and
reason, and the good ones are written. The answer means durable: the points are in
InfluxDB or in the collector's fsync'd spool (``200``, see ``collector.spool``). When
neither can take them (the spool or its disk is full), the answer is ``503`` with
``Retry-After``, and the probe keeps the batch. A repeated batch id is acknowledged as a
duplicate and written once (``collector.batches``); a probe over its rate gets ``429``
(``collector.ratelimit``). Bodies are ``probe.wire.Batch``es.

Nothing a client sends makes a ``5xx``: a body that is not valid gzip, not UTF-8, or
nested past what the decoder can follow is a ``400`` with the reason. What one client
may hold is bounded: headers (aiohttp's limits and ``collector.gate``), the body as sent
and once inflated, and the time to send it (``collector.body``); and a probe's requests
are limited as well as its records, so a storm of empty batches gets ``429`` too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import metrics
from collector.batches import SeenBatches
from collector.body import BodyError, ClientGone, Inflater, read_raw
from collector.gate import GATE, Gate
from collector.gate import middleware as gate_middleware
from collector.lineproto import Unrepresentable
from collector.points import Identity, to_line
from collector.ratelimit import TokenBuckets
from collector.registry import Registry
from collector.served import ServedTargets
from collector.sink import Sink, SinkUnavailable, encode
from collector.spool import Spool, SpoolFull
from probe.targets import ConfigError
from probe.wire import SCHEMA_VERSION, Batch, BatchEnvelope, Measurement, decode_record

log = logging.getLogger("popwatch.collector")

NS = 1_000_000_000


@dataclass
class Limits:
    """What one request may carry, and how fast one probe may send."""

    max_body_bytes: int = 5_000_000  # as sent (compressed)
    max_decoded_bytes: int = 20_000_000  # after gzip: a bomb stops here
    max_records: int = 20_000
    max_age_s: float = 7 * 86400  # older records are rejected
    max_future_s: float = 300  # records further ahead of our clock are rejected
    # per probe: a token bucket of records. A probe at 1,000 targets every 10 s sends
    # 100 records/s; the default leaves ample room and stops a runaway or a replay storm.
    records_per_second: float = 2_000
    burst_records: float = 200_000  # a probe coming back with a full spool catches up
    # and a bucket of requests: a probe sends a batch every few seconds, and catches up
    # on a backlog one batch after the other; empty batches cost a request each
    requests_per_second: float = 20
    burst_requests: float = 2_000
    body_timeout_s: float = 60  # the whole body must have come by then (408)
    max_inflating: int = 2  # gzip bodies inflated at once, each in a thread
    # the public listener (collector.gate, and aiohttp's own per-request bounds)
    max_connections: int = 4096
    max_connections_per_address: int = 512  # an IPv6 /64 counts as one address
    max_head_bytes: int = 32_768  # request line and headers of one request (nginx's too)
    max_waiting_bytes: int = 16_000_000  # heads not yet handled, over all connections
    max_line_size: int = 4096  # the request line
    max_field_size: int = 4096  # one header
    max_headers: int = 32


@dataclass
class CollectorState:
    """What the handlers share: the registry, the sink, the limits, the served targets."""

    registry: Registry
    sink: Sink
    limits: Limits = field(default_factory=Limits)
    targets_file: Path | None = None
    clock: Callable[[], float] = time.time
    spool: Spool | None = None  # the spool under ``sink``, for /readyz


STATE = web.AppKey("state", CollectorState)
SEEN = web.AppKey("seen", SeenBatches)
BUCKETS = web.AppKey("buckets", TokenBuckets)  # records
REQUESTS = web.AppKey("requests", TokenBuckets)
INFLATER = web.AppKey("inflater", Inflater)
SERVED = web.AppKey("served", ServedTargets)  # when state.targets_file is set


_typed_decoder = msgspec.json.Decoder(Batch)  # the common case: one call for a batch
_envelope_decoder = msgspec.json.Decoder(BatchEnvelope)  # the rest: each record alone


class _SchemaOf(msgspec.Struct):
    """Only to name an unsupported schema in the 400's reason."""

    schema: Any = None


class NotABatch(ValueError):
    """The body is not a batch this collector takes (400, with this reason)."""


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


def _identity(request: web.Request) -> Identity | web.Response:
    state = request.app[STATE]
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return _error(401, "missing 'Authorization: Bearer <probe token>'")
    who = state.registry.authenticate(auth.removeprefix("Bearer ").strip())
    if who is None:
        return _error(401, "unknown or revoked token")
    return who


def _decode(body: bytes) -> tuple[Batch | BatchEnvelope, list[str | Measurement]]:
    """The batch, and each record or the reason it does not decode.

    One typed decode of the whole ``wire.Batch`` first; only when that fails is the
    envelope decoded and each record alone, so every bad record gets its own reason.
    Raises ``NotABatch`` when the envelope itself is wrong.
    """
    try:
        typed = _typed_decoder.decode(body)
    except (ValueError, RecursionError):  # msgspec's errors, and bad UTF-8 or nesting
        pass
    else:
        return typed, list(typed.measurements)
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise NotABatch(_why_not(body, exc)) from None
    except (ValueError, RecursionError) as exc:
        raise NotABatch(_undecodable(exc)) from None
    records: list[str | Measurement] = []
    for item in envelope.measurements:
        try:
            records.append(decode_record(item))
        except msgspec.ValidationError as exc:
            records.append(str(exc))
        except (ValueError, RecursionError) as exc:
            records.append(_undecodable(exc, "record"))
    return envelope, records


def _undecodable(exc: ValueError | RecursionError, what: str = "batch") -> str:
    """The reason for JSON that does not even decode (a batch's, or a record's)."""
    if isinstance(exc, RecursionError):
        why = "JSON nested too deeply"
    elif isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 ({exc.reason} at byte {exc.start})"
    else:
        why = str(exc)
    return f"not a {what}: {why}"


def _why_not(body: bytes, exc: msgspec.ValidationError) -> str:
    """The 400's reason for an envelope that does not validate, from msgspec's error."""
    where = str(exc).rpartition(" - at ")[2]
    if where == "`$.schema`":
        try:  # the rest of the body may not even be JSON: the envelope stopped here
            schema = msgspec.json.encode(msgspec.json.decode(body, type=_SchemaOf).schema)
        except (ValueError, RecursionError) as dexc:
            return _undecodable(dexc)
        return f"schema {schema.decode()} is not supported (this collector knows {SCHEMA_VERSION})"
    if where == "`$.batch`":
        return "batch id must be a string of 1-64 characters"
    return f"not a batch: {exc}"


async def ingest(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    response = await _ingest(request)
    metrics.INGEST_SECONDS.labels(str(response.status)).observe(time.perf_counter() - t0)
    return response


def _slow_down(
    request: web.Request, probe: str, n: int, records: bool = True
) -> web.Response | None:
    """A 429 when ``probe``'s bucket of records (or of requests) lacks ``n``, else None
    (and they are taken)."""
    limits = request.app[STATE].limits
    if records:
        wait = request.app[BUCKETS].take(probe, n)
        what = f"{limits.records_per_second:g} records/s"
    else:
        wait = request.app[REQUESTS].take(probe, n)
        what = f"{limits.requests_per_second:g} requests/s"
    if wait <= 0:
        return None
    metrics.RATE_LIMITED.inc()
    return _error(
        429,
        f"probe {probe} is over {what}; slow down",
        **{"Retry-After": str(max(1, round(wait)))},
    )


async def _body(request: web.Request, limits: Limits) -> bytes | web.Response:
    """The decoded body, or the response saying why not."""
    if (request.content_length or 0) > limits.max_body_bytes:
        return _error(413, f"body over {limits.max_body_bytes} bytes")
    try:
        raw = await read_raw(request, limits.max_body_bytes, limits.body_timeout_s)
        encoding = request.headers.get("Content-Encoding", "")
        return await request.app[INFLATER].inflate(raw, encoding)
    except BodyError as exc:
        return _error(exc.status, exc.reason)


async def _ingest(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = _identity(request)
    if isinstance(who, web.Response):
        return who
    if (busy := _slow_down(request, who.probe, 1, records=False)) is not None:
        return busy
    try:
        body = await _body(request, state.limits)
    except ClientGone as exc:
        log.info("probe %s went away before its body was in (%s)", who.probe, exc)
        return _error(400, "the body did not arrive")
    if isinstance(body, web.Response):
        return body
    try:
        envelope, records = _decode(body)
    except NotABatch as exc:
        return _error(400, str(exc))
    del body
    if len(envelope.measurements) > state.limits.max_records:
        return _error(413, f"more than {state.limits.max_records} records in one batch")
    if (busy := _slow_down(request, who.probe, len(envelope.measurements))) is not None:
        return busy
    seen = request.app[SEEN]
    if seen.seen(who.probe, envelope.batch):
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
        log.warning("batch %s from %s not accepted: %s", envelope.batch, who.probe, exc)
        return _error(503, f"cannot store now: {exc}", **{"Retry-After": "5"})
    if lines:  # a repeat of a batch that wrote nothing writes nothing either
        seen.add(who.probe, envelope.batch, state.clock())
    metrics.ACCEPTED.inc(len(lines))
    metrics.REJECTED.inc(len(rejected))
    metrics.LAST_SEEN.labels(who.probe, who.region).set(state.clock())
    return web.json_response({"accepted": len(lines), "rejected": rejected, "duplicate": False})


async def config(request: web.Request) -> web.StreamResponse:
    """The targets this collector serves to probes, with an ETag."""
    who = _identity(request)
    if isinstance(who, web.Response):
        return who
    served = request.app.get(SERVED)
    if served is None:
        return _error(404, "this collector serves no targets (POPWATCH_TARGETS is unset)")
    try:  # the last list that loaded: a bad edit is logged, and not served
        body, etag = served.current()
    except ConfigError as exc:  # it never loaded (`run` checks it at start)
        return _error(500, str(exc))
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when batches go through as they should: InfluxDB answers ``/ping`` and takes
    writes, and the spool can store, has room, and is not growing. Otherwise ``503``, and
    ``problems`` says what stands in the way."""
    state = request.app[STATE]
    influx_ok = await state.sink.ready()
    problems = [] if influx_ok else ["InfluxDB does not answer /ping"]
    problems += state.sink.problems()
    body: dict[str, Any] = {
        "ready": not problems,
        "problems": problems,
        "influxdb": "ok" if influx_ok else "unreachable",
    }
    if state.spool is not None:
        body["spool_bytes"] = state.spool.bytes
        body["spool_max_bytes"] = state.spool.max_bytes
    return web.json_response(body, status=503 if problems else 200)


async def prom(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _QuietOnBadRequests(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, where a request it cannot parse (a header too long, bytes
    that are not HTTP) is one DEBUG line and a count on /metrics, not an ERROR with a
    traceback: on the internet those come by the thousand."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            metrics.BAD_REQUESTS.inc()
            level, kwargs["exc_info"] = logging.DEBUG, None
            msg, args = f"{msg}: %s", (*args, exc.message)
        super().log(level, msg, *args, **kwargs)


def create_app(state: CollectorState, data_dir: Path) -> web.Application:
    limits = state.limits
    app = web.Application(
        client_max_size=limits.max_decoded_bytes,
        middlewares=[gate_middleware],
        handler_args={
            "max_line_size": limits.max_line_size,
            "max_field_size": limits.max_field_size,
            "max_headers": limits.max_headers,
            "auto_decompress": False,  # collector.body inflates, within bounds
            "logger": _QuietOnBadRequests(logging.getLogger("aiohttp.server"), {}),
        },
    )
    app[STATE] = state
    # the listener (collector.gate.GatedSite) puts the connections behind it
    app[GATE] = Gate(
        limits.max_connections,
        limits.max_connections_per_address,
        limits.max_head_bytes,
        limits.max_waiting_bytes,
    )
    app[INFLATER] = Inflater(limits.max_decoded_bytes, limits.max_inflating)
    app[BUCKETS] = TokenBuckets(limits.records_per_second, limits.burst_records, state.clock)
    app[REQUESTS] = TokenBuckets(limits.requests_per_second, limits.burst_requests, state.clock)
    if state.targets_file is not None:
        app[SERVED] = ServedTargets(state.targets_file)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[SEEN] = SeenBatches(data_dir / "batches.sqlite")
        await state.sink.start()
        yield
        await state.sink.close()
        app[SEEN].close()
        app[INFLATER].close()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/api/v1/measurements", ingest)
    app.router.add_get("/api/v1/config", config)
    app.router.add_get("/healthz", healthz)
    return app


def create_admin_app(state: CollectorState) -> web.Application:
    """The admin listener's app (``admin_listen``): ``/metrics`` and ``/readyz``, which
    say how the collector and InfluxDB are doing, kept off the public port. It shares
    ``state`` with the public app, which owns the resources."""
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prom)
    return app


__all__ = ["STATE", "CollectorState", "Limits", "create_admin_app", "create_app"]

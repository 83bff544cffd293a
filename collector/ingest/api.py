"""The public API's handlers: ``POST /api/v1/measurements``, ``GET /api/v1/config`` and
``GET /healthz``.

``POST /api/v1/measurements`` takes a batch (JSON, optionally gzip) from an authenticated
probe. Records are validated one by one: each bad one is rejected with its index and
reason, and the good ones are written. The answer means durable: the points are in
InfluxDB or in the collector's fsync'd spool (``200``, see ``collector.store.spool``).
When neither can take them (the spool or its disk is full), the answer is ``503`` with
``Retry-After``, and the probe keeps the batch. A repeated batch id is acknowledged as a
duplicate and written once (``collector.ingest.batches``); a probe over its rate gets
``429`` (``collector.ingest.ratelimit``). Bodies are ``probe.wire.Batch``es.

Nothing a client sends makes a ``5xx``: a body that is not valid gzip, not UTF-8, or
nested past what the decoder can follow is a ``400`` with the reason. What one client
may hold is bounded: headers (aiohttp's limits and ``collector.ingest.gate``), the body
as sent and once inflated, and the time to send it (``collector.ingest.body``); and a
probe's requests are limited as well as its records, so a storm of empty batches gets
``429`` too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from collector.ingest import metrics
from collector.ingest.batches import SeenBatches
from collector.ingest.body import BodyError, ClientGone, Inflater, read_raw
from collector.ingest.limits import Limits
from collector.ingest.points import Identity, to_line
from collector.ingest.ratelimit import TokenBuckets
from collector.ingest.registry import OPERATOR_PREFIX, Registry
from collector.ingest.series import SeriesBudget
from collector.ingest.served import ServedTargets
from collector.ingest.validate import NotABatch, decode
from collector.store.lineproto import Unrepresentable
from collector.store.sink import Sink, SinkUnavailable, encode
from collector.store.spool import Spool, SpoolFull
from probe.configfile import ConfigError
from probe.wire import NS, Measurement

log = logging.getLogger("popwatch.collector")


@dataclass
class CollectorState:
    """What the handlers share: the registry, the sink, the limits, the served targets."""

    registry: Registry
    sink: Sink
    limits: Limits = field(default_factory=Limits)
    targets_file: Path | None = None
    clock: Callable[[], float] = time.time
    spool: Spool | None = None  # the spool under ``sink``, for /readyz
    #: what /readyz lists as ``warnings``: things to know that do not stop batches
    warnings: list[Callable[[], list[str]]] = field(default_factory=list)


STATE = web.AppKey("state", CollectorState)
SEEN = web.AppKey("seen", SeenBatches)
BUCKETS = web.AppKey("buckets", TokenBuckets)  # records
REQUESTS = web.AppKey("requests", TokenBuckets)
INFLATER = web.AppKey("inflater", Inflater)
SERVED = web.AppKey("served", ServedTargets)  # when state.targets_file is set
SERIES = web.AppKey("series", SeriesBudget)  # each probe's budget of new tag values


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


def identity(request: web.Request) -> Identity | web.Response:
    """The probe a request's token names, or the 401/403 saying why not."""
    return _identity(request)


def _identity(request: web.Request) -> Identity | web.Response:
    state = request.app[STATE]
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return _error(401, "missing 'Authorization: Bearer <probe token>'")
    token = auth.removeprefix("Bearer ").strip()
    if token.startswith(OPERATOR_PREFIX):
        return _error(403, "an operator token: the probe API takes probe tokens only")
    who = state.registry.authenticate(token)
    if who is None:
        return _error(401, "unknown or revoked token")
    return who


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


def lines_of(
    request: web.Request,
    who: Identity,
    records: list[str | Measurement],
    accept: Callable[[Measurement], str | None] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The line of each record that may be stored, and the reasons of the others (their
    index and error): decoded, not too old nor ahead, representable, within the probe's
    series budget, and (``accept``) whatever the caller asks more (None: taken)."""
    state = request.app[STATE]
    lines: list[str] = []
    rejected: list[dict[str, Any]] = []
    admit = request.app[SERIES].for_batch(who.probe)
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
        elif accept is not None and (why := accept(record)) is not None:
            rejected.append({"index": i, "error": why})
        else:
            try:
                line = to_line(record, who)
            except Unrepresentable as exc:
                rejected.append({"index": i, "error": str(exc)})
                continue
            if (over := admit(record)) is not None:
                rejected.append({"index": i, "error": over})
                metrics.OVER_SERIES_BUDGET.inc()
                continue
            lines.append(line)
    return lines, rejected


async def read_body(request: web.Request) -> bytes | web.Response:
    """The decoded body within the ``limits``, or the response saying why not."""
    try:
        return await _body(request, request.app[STATE].limits)
    except ClientGone:
        return _error(400, "the body did not arrive")


def slow_down(request: web.Request, probe: str) -> web.Response | None:
    """A 429 when ``probe`` is over its requests/s, else None (and one is taken)."""
    return _slow_down(request, probe, 1, records=False)


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
        envelope, records = decode(body)
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
    lines, rejected = lines_of(request, who, records)
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
        body, etag = await served.current()
    except ConfigError as exc:  # it never loaded (`run` checks it at start)
        return _error(500, str(exc))
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


__all__ = [
    "BUCKETS",
    "INFLATER",
    "REQUESTS",
    "SEEN",
    "SERIES",
    "SERVED",
    "STATE",
    "CollectorState",
    "config",
    "healthz",
    "identity",
    "ingest",
    "lines_of",
    "read_body",
    "slow_down",
]

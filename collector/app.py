"""The collector's two web applications: the public API (``create_app``) and the admin
listener (``create_admin_app``: ``/readyz``, ``/metrics``, and the status page added by
``collector.web``). The handlers of the public API are ``collector.ingest.api``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.ingest import metrics
from collector.ingest.api import (
    BUCKETS,
    INFLATER,
    REQUESTS,
    SEEN,
    SERIES,
    SERVED,
    STATE,
    CollectorState,
    config,
    healthz,
    ingest,
)
from collector.ingest.batches import SeenBatches
from collector.ingest.body import Inflater
from collector.ingest.gate import GATE, Gate
from collector.ingest.gate import middleware as gate_middleware
from collector.ingest.limits import Limits
from collector.ingest.ratelimit import TokenBuckets
from collector.ingest.series import SeriesBudget
from collector.ingest.served import ServedTargets


async def readyz(request: web.Request) -> web.Response:
    """Ready when batches go through as they should: InfluxDB answers ``/ping`` and takes
    writes, and the spool can store, has room, and is not growing. Otherwise ``503``, and
    ``problems`` says what stands in the way. ``warnings`` are what an operator must know
    though batches go through (InfluxDB refusing lines, near its limits; a certificate
    about to expire): they do not make the collector unready."""
    state = request.app[STATE]
    influx_ok = await state.sink.ready()
    problems = [] if influx_ok else ["InfluxDB does not answer /ping"]
    problems += state.sink.problems()
    body: dict[str, Any] = {
        "ready": not problems,
        "problems": problems,
        "influxdb": "ok" if influx_ok else "unreachable",
        "warnings": [w for source in state.warnings for w in source()],
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
            "auto_decompress": False,  # collector.ingest.body inflates, within bounds
            "logger": _QuietOnBadRequests(logging.getLogger("aiohttp.server"), {}),
        },
    )
    app[STATE] = state
    # the listener (collector.ingest.gate.GatedSite) puts the connections behind it
    app[GATE] = Gate(
        limits.max_connections,
        limits.max_connections_per_address,
        limits.max_head_bytes,
        limits.max_waiting_bytes,
    )
    app[INFLATER] = Inflater(limits.max_decoded_bytes, limits.max_inflating)
    app[BUCKETS] = TokenBuckets(limits.records_per_second, limits.burst_records, state.clock)
    app[REQUESTS] = TokenBuckets(limits.requests_per_second, limits.burst_requests, state.clock)
    app[SERIES] = SeriesBudget(
        limits.new_series_per_hour, limits.new_series_burst, limits.max_series_per_probe
    )
    if state.targets_file is not None:
        app[SERVED] = ServedTargets(state.targets_file)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[SEEN] = SeenBatches(data_dir / "batches.sqlite", keep_s=limits.max_age_s)
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

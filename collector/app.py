"""The collector's two web applications: the public API (``create_app``) and the admin
listener (``create_admin_app``: ``/readyz``, ``/metrics``, and the status page added by
``collector.web``). The handlers of the public API are ``collector.ingest.api``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.asks.api import add_routes as add_ask_routes
from collector.asks.board import Board
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
from probe.configfile import is_ip


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


def create_app(
    state: CollectorState, data_dir: Path, board: Board | None = None
) -> web.Application:
    """The public API; with ``board``, the asks' routes too (collector.asks)."""
    limits = state.limits
    app = web.Application(
        client_max_size=limits.max_decoded_bytes,
        middlewares=[gate_middleware],
        handler_args={
            # the gate refuses past the limits with a 431 first; aiohttp's own bounds
            # (twice as far) are a second line that would answer 400
            "max_line_size": 2 * limits.max_line_size,
            "max_field_size": 2 * limits.max_field_size,
            "max_headers": 2 * limits.max_headers,
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
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
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
    if board is not None:
        add_ask_routes(app, board)
    return app


async def _not_here(request: web.Request) -> web.Response:
    """A probe pointed at the admin listener: say so, and where to go instead."""
    return web.json_response(
        {
            "error": "this is the collector's admin listener (admin_listen, port 8081 by "
            "default); probes send to and ask the public API (listen, port 8080 by "
            "default): set collector_url to it"
        },
        status=404,
    )


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` may reach the admin listener: an IP address, a name
    of one label (a container's or a host's), ``localhost`` and its subdomains, a
    Kubernetes service name (``*.svc``, ``*.svc.cluster.local``), or one of ``names``
    (``admin_hosts``). A page on another site cannot read the listener through a name of
    its own that resolves here (DNS rebinding): that name is none of these."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if not name:
        return False
    if is_ip(name) or name in names or "." not in name:
        return True
    return name == "localhost" or name.endswith((".localhost", ".svc", ".svc.cluster.local"))


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_check(names: frozenset[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: _Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not host_allowed(host, names):
            return web.json_response(
                {
                    "error": f"Host {host[:100]!r} is not a name of this admin listener; "
                    "add it to admin_hosts (POPWATCH_ADMIN_HOSTS) if it is"
                },
                status=421,
            )
        return await handler(request)

    return check


def create_admin_app(
    state: CollectorState, admin_hosts: frozenset[str] = frozenset()
) -> web.Application:
    """The admin listener's app (``admin_listen``): ``/metrics`` and ``/readyz``, which
    say how the collector and InfluxDB are doing, kept off the public port. It shares
    ``state`` with the public app, which owns the resources. Its connections are capped
    (``limits.max_admin_connections``) and its ``Host`` checked (``host_allowed``)."""
    limits = state.limits
    app = web.Application(middlewares=[gate_middleware, _host_check(admin_hosts)])
    app[GATE] = Gate(
        limits.max_admin_connections,
        limits.max_admin_connections_per_address,
        limits.max_head_bytes,
        limits.max_waiting_bytes // 4,
        gauge=metrics.ADMIN_CONNECTIONS,
        name="admin",
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    app[STATE] = state
    for path in ("/api/v1/measurements", "/api/v1/config"):
        app.router.add_route("*", path, _not_here)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prom)
    return app


__all__ = [
    "STATE",
    "CollectorState",
    "Limits",
    "create_admin_app",
    "create_app",
    "host_allowed",
]

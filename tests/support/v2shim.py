"""A test-only stand-in for InfluxDB 1.8's ``/api/v2/write`` in front of InfluxDB 1.6.7.

Why a stand-in: the only InfluxDB server installable here is Debian's 1.6.7, which has no
``/api/v2/write``; InfluxDB 1.8, 2.x and 3.x cannot be installed. The collector's ``v2``
sink (influxdb-client's async write API) is tested through this shim, which does what
InfluxDB 1.8's compatibility endpoint does and nothing more:

- ``bucket`` is ``database`` or ``database/retention-policy``;
- ``org`` is ignored;
- ``precision`` is ``ns``, ``us``, ``ms`` or ``s`` (1.x spells them ``n``, ``u``, ``ms``, ``s``);
- ``Authorization: Token user:password`` becomes 1.x's ``u``/``p``;
- the line-protocol body (gzip or not) goes to ``/write`` unchanged, and 1.x's answer
  comes back as is;
- ``/ping`` and ``/health`` are passed through, saying ``X-Influxdb-Version: 1.8.10``
  (``SHIM_VERSION``) as a 1.8 would, so the collector's ``auto`` API choice sees a 1.8.

One difference: when the InfluxDB behind it is down, the shim answers ``503``, where a
real 1.8 would refuse the connection. The collector takes both as "unavailable".

For the tests it can also hold each write a while (a slow InfluxDB), and it keeps
the body of every write InfluxDB stored, so a test can tell the v2 path was
taken, and in what order points arrived.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
BODIES = web.AppKey("bodies", list[bytes])  # what each stored write carried, in order
DELAY = web.AppKey("delay", list[float])  # [seconds]: hold each write this long first
SHIM_VERSION = "1.8.10"  # what /ping says, as the InfluxDB 1.8 this stands in for
VERSION_HEADERS = {"X-Influxdb-Version": SHIM_VERSION, "X-Influxdb-Build": "OSS"}


def make_app(influx_url: str) -> web.Application:
    """The shim, forwarding to the InfluxDB 1.x at ``influx_url``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[BODIES] = []
    app[DELAY] = [0.0]
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession()
        yield
        await app[session_key].close()

    app.cleanup_ctx.append(session_ctx)

    async def write(request: web.Request) -> web.Response:
        bucket = request.query.get("bucket", "")
        if not bucket:
            return web.json_response(
                {"code": "invalid", "message": "bucket is required"}, status=400
            )
        db, _, rp = bucket.partition("/")
        precision = request.query.get("precision", "ns")
        if precision not in PRECISION:
            return web.json_response(
                {"code": "invalid", "message": f"invalid precision {precision!r}"}, status=400
            )
        params = {"db": db, "precision": PRECISION[precision]}
        if rp:
            params["rp"] = rp
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Token ") and ":" in auth:
            params["u"], _, params["p"] = auth.removeprefix("Token ").partition(":")
        body = await request.read()  # aiohttp inflates a gzip body
        if app[DELAY][0]:  # a slow InfluxDB, for the tests
            await asyncio.sleep(app[DELAY][0])
        try:
            async with app[session_key].post(
                f"{influx_url}/write", params=params, data=body
            ) as resp:
                text = await resp.read()
                status, ctype = resp.status, resp.content_type
        except aiohttp.ClientError as exc:  # InfluxDB itself is down
            return web.json_response({"code": "unavailable", "message": str(exc)}, status=503)
        if status == 204:
            app[BODIES].append(body)
        return web.Response(status=status, body=text, content_type=ctype)

    async def passthrough(request: web.Request) -> web.Response:
        try:
            async with app[session_key].get(f"{influx_url}/ping") as resp:
                return web.Response(status=resp.status, headers=VERSION_HEADERS)
        except aiohttp.ClientError:
            return web.Response(status=503)

    app.router.add_post("/api/v2/write", write)
    app.router.add_get("/ping", passthrough)
    app.router.add_get("/health", passthrough)
    return app

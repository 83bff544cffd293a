"""The status page: ``GET /`` (one HTML page, no external assets) and the JSON it reads,
``GET /api/v1/status`` (fixed InfluxQL through the collector's InfluxDB settings).

``add_routes(app, influx)`` is all a web application needs to serve it; the handlers
keep their state in the application under :data:`INFLUX`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import re
import time
from importlib.resources import files
from typing import Any

from aiohttp import web

from collector.store.influxql import InfluxQL, QueryError
from collector.web.status import gather

INFLUX = web.AppKey("status_influx", InfluxQL)
#: how long one answer of /api/v1/status is served to everyone (the page refreshes every
#: 30 s): however many clients ask, InfluxDB is asked once per refresh
CACHE_S = 5.0


class StatusCache:
    """The page's data, gathered once per ``CACHE_S`` for every client (one gathering at
    a time: clients that ask meanwhile wait for it)."""

    def __init__(self, influx: InfluxQL) -> None:
        self.influx = influx
        self._at = -CACHE_S
        self._body: dict[str, Any] | None = None
        self._error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def get(self) -> dict[str, Any]:
        """The data, or ``QueryError`` (the last gathering's)."""
        if time.monotonic() - self._at >= CACHE_S:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._gather())
            await asyncio.shield(self._task)
        if self._body is None:
            raise QueryError(self._error or "InfluxDB has not answered yet")
        return self._body

    async def _gather(self) -> None:
        try:
            self._body, self._error = await gather(self.influx), None
        except QueryError as exc:
            self._body, self._error = None, str(exc) or type(exc).__name__
        self._at = time.monotonic()


CACHE = web.AppKey("status_cache", StatusCache)


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> tuple[str, str]:
    """The page with the world outline in place, and its Content-Security-Policy (only
    its own inline script and style run; it fetches only from this origin)."""
    here = files("collector.web")
    html = here.joinpath("index.html").read_text()
    world = "".join(
        line
        for line in here.joinpath("world.path").read_text().splitlines()
        if not line.startswith("#")
    )
    html = html.replace("{{WORLD}}", world)
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    if script is None or style is None:
        raise RuntimeError("index.html must have one <script> and one <style>")
    csp = (
        f"default-src 'none'; script-src {_hash(script.group(1))}; "
        f"style-src {_hash(style.group(1))}; connect-src 'self'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


async def index(request: web.Request) -> web.Response:
    html, csp = page()
    return web.Response(
        text=html,
        content_type="text/html",
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


async def status(request: web.Request) -> web.Response:
    """The page's data as JSON; 503 with the reason when InfluxDB does not answer."""
    try:
        body = await request.app[CACHE].get()
    except QueryError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application, influx: InfluxQL) -> None:
    """Serve the status page on ``app``, reading InfluxDB through ``influx``."""
    app[INFLUX] = influx
    app[CACHE] = StatusCache(influx)
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/status", status)

    async def close(app: web.Application) -> None:
        await app[INFLUX].close()

    app.on_cleanup.append(close)


__all__ = ["INFLUX", "add_routes", "index", "page", "status"]

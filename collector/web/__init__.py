"""The status page: ``GET /`` (one HTML page, no external assets) and the JSON it reads,
``GET /api/v1/status`` (fixed InfluxQL through the collector's InfluxDB settings).

``add_routes(app, influx)`` is all a web application needs to serve it; the handlers
keep their state in the application under :data:`INFLUX`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib.resources import files

from aiohttp import web

from collector.store.influxql import InfluxQL, QueryError
from collector.web.status import gather

INFLUX = web.AppKey("status_influx", InfluxQL)


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
        body = await gather(request.app[INFLUX])
    except QueryError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application, influx: InfluxQL) -> None:
    """Serve the status page on ``app``, reading InfluxDB through ``influx``."""
    app[INFLUX] = influx
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/status", status)

    async def close(app: web.Application) -> None:
        await app[INFLUX].close()

    app.on_cleanup.append(close)


__all__ = ["INFLUX", "add_routes", "index", "page", "status"]

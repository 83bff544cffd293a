"""The lab's web page: a small HTTPS origin whose name (www.lab.example) the lab's
nameservers serve, so a probe's HTTP check times DNS, connect, TLS and TTFB in the lab.

Run by the lab's daemon inside the unicast server's namespace:
``python -m popwatch_lab.page --cert C --key K --listen ADDRESS --listen ADDRESS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl

from aiohttp import web

PAGE = b"""<!doctype html>
<html><head><title>popwatch lab</title></head>
<body><h1>popwatch lab origin</h1><p>Served from the unicast server's namespace.</p></body>
</html>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html")


async def serve(listen: list[str], port: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for address in listen:
        await web.TCPSite(runner, address, port, ssl_context=ctx).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", action="append", required=True, help="an address (repeatable)")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.port, args.cert, args.key))


if __name__ == "__main__":
    main()

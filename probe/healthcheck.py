"""``popwatch-healthcheck``: the container health check of both parts (stdlib only).

Asks ``/healthz`` of the collector's public listener (``POPWATCH_LISTEN``) or of the
probe's metrics listener (``POPWATCH_METRICS_LISTEN``), on loopback; ``POPWATCH_HEALTH_URL``
names another URL. A collector serving TLS (``POPWATCH_TLS_CERT``) is asked over https,
without checking its certificate: this asks our own listener on loopback whether it
answers, and the certificate names the collector, not 127.0.0.1. Exit 0 when it answers
200 within 3 s, 1 otherwise (Docker's contract).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import textwrap
import urllib.request
from collections.abc import Sequence

EPILOG = """\
which URL, from the container's own variables:
  POPWATCH_HEALTH_URL      this URL, as it is
  POPWATCH_LISTEN          a collector: http(s)://127.0.0.1:PORT/healthz of its public
                           listener; https when POPWATCH_TLS_CERT is set (the
                           certificate is not checked: it names the collector, not
                           127.0.0.1)
  POPWATCH_METRICS_LISTEN  a probe: http://127.0.0.1:PORT/healthz of its metrics listener
  (none of them)           http://127.0.0.1:8080/healthz

exit status: 0 when it answers 200 within 3 s, 1 when it does not (the reason on
stderr), 2 for a bad option.

examples:
  popwatch-healthcheck                     # as the image's HEALTHCHECK runs it
  popwatch-healthcheck --url http://127.0.0.1:9553/healthz
"""


def health_url(env: dict[str, str]) -> str:
    """The URL to ask, from the container's own settings."""
    if url := env.get("POPWATCH_HEALTH_URL"):
        return url
    listen = env.get("POPWATCH_LISTEN") or env.get("POPWATCH_METRICS_LISTEN") or ":8080"
    port = listen.rpartition(":")[2] or "8080"
    scheme = "https" if env.get("POPWATCH_LISTEN") and env.get("POPWATCH_TLS_CERT") else "http"
    return f"{scheme}://127.0.0.1:{port}/healthz"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="popwatch-healthcheck",
        description=textwrap.fill(
            "The container health check of the probe and the collector: ask /healthz of "
            "this container's own listener on loopback, and exit 0 if it answers 200 "
            "within 3 s.",
            88,
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url", metavar="URL", help="ask this URL instead (as POPWATCH_HEALTH_URL does)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # --help, and exit 2 for a bad option
    url = args.url or health_url(dict(os.environ))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False  # our own listener on loopback: is it up, not who is it
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:  # noqa: S310
            ok = resp.status == 200
    except OSError as exc:
        print(f"popwatch-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

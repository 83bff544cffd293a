"""``popwatch-healthcheck``: the container health check of both parts (stdlib only).

Asks ``/healthz`` of the collector's public listener (``POPWATCH_LISTEN``) or of the
probe's metrics listener (``POPWATCH_METRICS_LISTEN``), on loopback; ``POPWATCH_HEALTH_URL``
names another URL. A collector serving TLS (``POPWATCH_TLS_CERT``) is asked over https,
without checking its certificate: this asks our own listener on loopback whether it
answers, and the certificate names the collector, not 127.0.0.1. Exit 0 when it answers
200 within 3 s, 1 otherwise (Docker's contract).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def health_url(env: dict[str, str]) -> str:
    """The URL to ask, from the container's own settings."""
    if url := env.get("POPWATCH_HEALTH_URL"):
        return url
    listen = env.get("POPWATCH_LISTEN") or env.get("POPWATCH_METRICS_LISTEN") or ":8080"
    port = listen.rpartition(":")[2] or "8080"
    scheme = "https" if env.get("POPWATCH_LISTEN") and env.get("POPWATCH_TLS_CERT") else "http"
    return f"{scheme}://127.0.0.1:{port}/healthz"


def main() -> int:
    url = health_url(dict(os.environ))
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

"""``popwatch-healthcheck``: the container health check of both parts (stdlib only).

Asks ``/healthz`` of the collector's public listener (``POPWATCH_LISTEN``) or of the
probe's metrics listener (``POPWATCH_METRICS_LISTEN``), on loopback; ``POPWATCH_HEALTH_URL``
names another URL. Exit 0 when it answers 200 within 3 s, 1 otherwise (Docker's contract).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def health_url(env: dict[str, str]) -> str:
    """The URL to ask, from the container's own settings."""
    if url := env.get("POPWATCH_HEALTH_URL"):
        return url
    listen = env.get("POPWATCH_LISTEN") or env.get("POPWATCH_METRICS_LISTEN") or ":8080"
    port = listen.rpartition(":")[2] or "8080"
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    url = health_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - our own listener
            ok = resp.status == 200
    except OSError as exc:
        print(f"popwatch-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

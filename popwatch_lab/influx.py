"""InfluxDB (Debian's ``influxdb`` 1.6.7): its configuration, its readiness, InfluxQL.

Shared by the lab's core and by the tests' loopback InfluxDB (``tests/support/influx.py``).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def config(directory: Path, http_bind: str, rpc_bind: str, data: str = "") -> str:
    """influxdb.conf: data under ``directory``, HTTP on ``http_bind`` (``host:port``);
    ``data``: more lines of its ``[data]`` section (``max-values-per-tag = 50``)."""
    d = directory
    return f"""reporting-disabled = true
bind-address = "{rpc_bind}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
{data}
[monitor]
  store-enabled = false
[http]
  bind-address = "{http_bind}"
  log-enabled = false
[logging]
  level = "warn"
[ifql]
  enabled = false
[continuous_queries]
  enabled = false
"""


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until ``/ping`` answers 204; RuntimeError with the log's tail if influxd died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1) as r:
                if r.status == 204:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"influxd did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def query(url: str, q: str, db: str | None = None) -> list[dict[str, Any]]:
    """Run InfluxQL; the rows of every series, each a dict with ``name`` and its tags."""
    params = {"q": q, "epoch": "ns"}
    if db:
        params["db"] = db
    req = urllib.request.Request(f"{url}/query", data=urllib.parse.urlencode(params).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.load(r)
    rows = []
    for result in body.get("results", []):
        if "error" in result:
            raise RuntimeError(result["error"])
        for series in result.get("series", []):
            for values in series.get("values", []):
                row = dict(zip(series["columns"], values, strict=True))
                row["name"] = series.get("name")
                row.update(series.get("tags") or {})
                rows.append(row)
    return rows


def write(url: str, db: str, lines: list[str]) -> None:
    """Write line protocol (nanosecond times) with the v1 ``/write``."""
    params = urllib.parse.urlencode({"db": db, "precision": "ns"})
    req = urllib.request.Request(f"{url}/write?{params}", data="\n".join(lines).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status != 204:
            raise RuntimeError(f"InfluxDB /write answered {r.status}")

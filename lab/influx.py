"""A real InfluxDB (Debian's ``influxdb`` 1.6.7) on loopback, in a temporary directory.

It speaks the v1 API (``/write``, ``/query``). Tests and benchmarks start one per session
on free ports; ``query`` runs InfluxQL and returns the rows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any

from servers import Server, free_port


class InfluxDB(Server):
    """influxd; ``pause`` stops it keeping its data, ``start`` brings it back."""

    name = "influx"

    def __init__(self) -> None:
        super().__init__(nsid="", identity="")
        self.rpc_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxDB:
        d = self.dir
        (d / "influxdb.conf").write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[logging]
  level = "warn"
[ifql]
  enabled = false
[continuous_queries]
  enabled = false
"""
        )
        self.log = open(d / "log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["influxd", "-config", str(d / "influxdb.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"influxd did not start: {(d / 'log').read_text()[-2000:]}")
            time.sleep(0.1)

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; the rows of every series, each a dict with ``name`` and ``tags``."""
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        req = urllib.request.Request(
            f"{self.url}/query", data=urllib.parse.urlencode(params).encode()
        )
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

    def pause(self) -> None:
        """Stop the server but keep its data (``start`` brings it back on the same port)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.log.close()

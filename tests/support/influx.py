"""A real InfluxDB (Debian's ``influxdb`` 1.6.7) on loopback, in a temporary directory.

It speaks the v1 API (``/write``, ``/query``). Tests and benchmarks start one per session
on free ports; ``query`` runs InfluxQL and returns the rows.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from popwatch_lab import influx as influxconf
from support.need import need
from support.servers import Server, free_port


class InfluxDB(Server):
    """influxd; ``pause`` stops it keeping its data, ``start`` brings it back."""

    name = "influx"

    def __init__(self, data: str = "") -> None:
        """``data``: more lines of influxdb.conf's ``[data]`` section, to lower its limits
        (``max-values-per-tag = 50``)."""
        super().__init__(nsid="", identity="")
        self.rpc_port = free_port()
        self.data = data

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxDB:
        need("influxd")
        d = self.dir
        (d / "influxdb.conf").write_text(
            influxconf.config(d, f"127.0.0.1:{self.port}", f"127.0.0.1:{self.rpc_port}", self.data)
        )
        self.log = open(d / "log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["influxd", "-config", str(d / "influxdb.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        influxconf.wait_ready(self.url, self.proc, d / "log")
        return self

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; the rows of every series, each a dict with ``name`` and ``tags``."""
        return influxconf.query(self.url, q, db)

    def pause(self) -> None:
        """Stop the server but keep its data (``start`` brings it back on the same port)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.log.close()

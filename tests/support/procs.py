"""Real popwatch processes for tests: a collector, probes, and what InfluxDB stored.

Shared by the suites that run ``popwatch-collector run`` and ``popwatch-probe run`` as
separate processes against Debian's InfluxDB and Knot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import servers
from support.influx import InfluxDB

COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")
PROBE = str(Path(sys.executable).parent / "popwatch-probe")
#: run a command as nobody, able to read (not write) what root's Python needs under /root:
#: a plain user, for the cases about non-root users
AS_NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]

#: every collector started and not yet stopped; a test module's autouse fixture stops them
STARTED: list[Collector] = []


class Collector:
    """``popwatch-collector run`` on loopback: the public API on ``port`` (https with
    ``tls``, a (certificate, key) pair), /metrics and /readyz on ``admin_port``."""

    def __init__(
        self,
        influx: InfluxDB,
        data: Path,
        db: str,
        tls: tuple[Path, Path] | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = servers.free_port()
        self.admin_port = servers.free_port()
        self.scheme = "https" if tls else "http"
        self.env = {
            **os.environ,
            "POPWATCH_LISTEN": f"127.0.0.1:{self.port}",
            "POPWATCH_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "POPWATCH_DATA_DIR": str(data),
            "POPWATCH_INFLUXDB_URL": influx.url,
            "POPWATCH_INFLUXDB_API": "v1",
            "POPWATCH_INFLUXDB_BUCKET": db,
        }
        if tls:
            self.env["POPWATCH_TLS_CERT"], self.env["POPWATCH_TLS_KEY"] = map(str, tls)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log  # its standard error goes there (appended), else nowhere
        self.args: list[str] = []  # after ``run``: ``--config FILE``, say

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen([COLLECTOR, "run", *self.args], env=self.env, stderr=err)
        finally:
            if self.log:
                err.close()  # type: ignore[union-attr]
        STARTED.append(self)
        servers.wait_http(f"{self.admin_url}/metrics")  # it starts after the public API

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def stored(influx: InfluxDB, db: str) -> list[dict[str, object]]:
    try:
        return influx.query("SELECT rtt_ms, probe, region, target FROM dns", db=db)
    except RuntimeError:
        return []


def targets_file(path: Path, port: int, n: int) -> Path:
    """``n`` one-second dns targets on the Knot at ``port``."""
    path.write_text(
        "targets:\n"
        + "".join(
            f"  - {{name: t{i}, topology: anycast, server: 127.0.0.1, port: {port}, "
            f"interval: 1, timeout: 0.5, queries: [{{qname: example.test}}]}}\n"
            for i in range(n)
        )
    )
    return path


def wait_stored(
    influx: InfluxDB, db: str, sent: int, timeout: float = 30
) -> list[dict[str, object]]:
    """What InfluxDB holds once it holds ``sent`` rows (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    rows = stored(influx, db)
    while len(rows) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = stored(influx, db)
    return rows


def register(data: Path, regions: dict[str, str], *more: str) -> dict[str, str]:
    """Each probe's token, from ``popwatch-collector probes add`` (``more``: its flags)."""
    return {
        p: subprocess.run(
            [COLLECTOR, "probes", "add", p, "--region", r, *more, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for p, r in regions.items()
    }


def probe_env(
    collector: Collector, token: str, data_dir: Path, targets: Path | None = None
) -> dict[str, str]:
    """The environment of a probe shipping to ``collector``."""
    env = {
        **os.environ,
        "POPWATCH_COLLECTOR_URL": collector.url,
        "POPWATCH_TOKEN": token,
        "POPWATCH_DATA_DIR": str(data_dir),
    }
    if targets is not None:
        env["POPWATCH_TARGETS"] = str(targets)
    return env


def start_probes(
    tmp_path: Path, collector: Collector, tokens: dict[str, str], targets: Path
) -> list[subprocess.Popen[bytes]]:
    """One ``popwatch-probe run`` per token, batching every 0.5 s, data in tmp_path/ID."""
    probes = []
    for probe, token in tokens.items():
        conf = tmp_path / f"{probe}.yaml"
        conf.write_text(f"id: {probe}\nbatch_s: 0.5\n")
        env = probe_env(collector, token, tmp_path / probe, targets)
        probes.append(
            subprocess.Popen(
                [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.DEVNULL
            )
        )
    return probes


def stop_probes(probes: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """SIGTERM to every probe at once, then their exit codes."""
    for proc in probes:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout) for proc in probes]

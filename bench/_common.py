"""Shared helpers for benchmarks: percentiles, the real servers, the peers; captures are
``support.pcap`` (the tests' own helper), re-exported here as ``pcap``."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test support package (real servers, pcap)

from support import pcap, servers  # noqa: E402

__all__ = ["ROOT", "pcap", "servers"]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class BlackboxExporter:
    """Debian's prometheus-blackbox-exporter on loopback, with the modules given (YAML)."""

    def __init__(self, workdir: Path, modules_yaml: str) -> None:
        import urllib.request

        self.port = servers.free_port()
        cfg = workdir / "blackbox.yml"
        cfg.write_text("modules:\n" + modules_yaml)
        self.proc = subprocess.Popen(
            [
                "prometheus-blackbox-exporter",
                f"--config.file={cfg}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def probe(self, module: str, target: str) -> str:
        """One probe: the metrics text blackbox returns."""
        import urllib.parse
        import urllib.request

        q = urllib.parse.urlencode({"module": module, "target": target})
        url = f"http://127.0.0.1:{self.port}/probe?{q}"
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

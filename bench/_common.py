"""Shared helpers for benchmarks: pcap reading, percentiles, servers, peers."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test support package (real servers, pcap)

from support import servers  # noqa: E402

__all__ = ["ROOT", "servers"]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(slots=True)
class DnsPacket:
    ts_ns: int  # capture timestamp (epoch ns)
    src: tuple[str, int]
    dst: tuple[str, int]
    qid: int
    qr: bool
    qname: str


def _qname(payload: bytes) -> str:
    labels, i = [], 12
    while i < len(payload) and payload[i]:
        n = payload[i]
        labels.append(payload[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    return ".".join(labels) + "."


def read_pcap(path: Path) -> list[DnsPacket]:
    """UDP DNS packets of a nanosecond pcap from ``tcpdump -i lo`` (Ethernet or cooked)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    nano = magic == 0xA1B23C4D
    if magic not in (0xA1B23C4D, 0xA1B2C3D4):
        raise ValueError(f"{path}: not a little-endian pcap")
    linktype = struct.unpack_from("<I", data, 20)[0]
    off = 24
    out: list[DnsPacket] = []
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from("<IIII", data, off)
        off += 16
        pkt = data[off : off + incl]
        off += incl
        ts = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        if linktype == 1:  # Ethernet
            etype = struct.unpack_from("!H", pkt, 12)[0]
            ip = pkt[14:]
        elif linktype == 113:  # Linux cooked
            etype = struct.unpack_from("!H", pkt, 14)[0]
            ip = pkt[16:]
        else:
            raise ValueError(f"linktype {linktype} not handled")
        if etype == 0x0800 and ip[9] == 17:
            ihl = (ip[0] & 0x0F) * 4
            src = ".".join(map(str, ip[12:16]))
            dst = ".".join(map(str, ip[16:20]))
            udp = ip[ihl:]
        elif etype == 0x86DD and ip[6] == 17:
            import ipaddress

            src = str(ipaddress.IPv6Address(ip[8:24]))
            dst = str(ipaddress.IPv6Address(ip[24:40]))
            udp = ip[40:]
        else:
            continue
        sport, dport = struct.unpack_from("!HH", udp)
        dnsp = udp[8:]
        if len(dnsp) < 12:
            continue
        qid = struct.unpack_from("!H", dnsp)[0]
        out.append(
            DnsPacket(ts, (src, sport), (dst, dport), qid, bool(dnsp[2] & 0x80), _qname(dnsp))
        )
    return out


def wire_rtts(packets: list[DnsPacket], qname: str) -> list[tuple[int, int]]:
    """``[(query capture ns, wire rtt ns)]`` for each query of ``qname`` that got an answer."""
    pending: dict[tuple[tuple[str, int], int], int] = {}
    out = []
    for p in packets:
        if p.qname != qname:
            continue
        if not p.qr:
            pending[(p.src, p.qid)] = p.ts_ns
        else:
            t0 = pending.pop((p.dst, p.qid), None)
            if t0 is not None:
                out.append((t0, p.ts_ns - t0))
    return out


@contextlib.contextmanager
def tcpdump(
    port: int, path: Path, cpu: int | None = None, bpf: str | None = None, dev: str = "lo"
) -> Iterator[None]:
    """Capture UDP on ``port`` (or what ``bpf`` selects) on loopback (or ``dev``) with
    nanosecond timestamps (on core ``cpu``)."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = subprocess.Popen(
        [
            *pin,
            "tcpdump",
            "-i",
            dev,
            "-nn",
            "-U",
            "--immediate-mode",
            "-B",
            "65536",
            "--time-stamp-precision=nano",
            "-w",
            str(path),
            bpf or f"udp port {port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    if "listening" not in line:
        proc.kill()
        raise RuntimeError(f"tcpdump did not start: {line}")
    try:
        yield
    finally:
        # under load tcpdump lags behind the kernel's buffer, and SIGTERM drops what it
        # has not read yet: wait until the file stops growing
        size, still = -1, 0
        while still < 5:
            time.sleep(0.1)
            now = path.stat().st_size if path.exists() else 0
            still = still + 1 if now == size else 0
            size = now
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        dropped = re.search(rb"(\d+) packets dropped by kernel", err)
        if dropped is None or dropped.group(1) != b"0":
            print(f"  tcpdump: {err.decode().strip()}", file=sys.stderr)


def cpu_pin(core: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {core})


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

"""Real DNS servers on loopback for tests, benchmarks and trying the probe by hand.

Each server runs from Debian's package (knot, nsd, dnsdist) in a temporary directory on
free ports, with its own NSID and CHAOS identity, and can say how many queries it has
answered (counted on the server side, so tests can hold the probe to "one measurement,
one query").

By hand: ``python tests/support/servers.py knot --port 5300`` serves example.test on 127.0.0.1 and
[::1] until Ctrl-C (also ``nsd``, and ``dnsdist`` for DoT/DoH in front of a Knot).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run by hand: python tests/support/servers.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from popwatch_lab import knot as knotconf
from popwatch_lab.certs import make_cert
from probe.wire import NS
from support.need import need

# The daemons (knotd, nsd, influxd...) live in sbin, which a plain user's PATH lacks:
# the README's quick start runs this as one.
for _sbin in ("/usr/sbin", "/sbin"):
    if _sbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + _sbin

SERIAL = 2026112501
ZONE = "example.test."
# a long TXT record: more than 512 bytes of answer, so it truncates without EDNS
BIG_TXT = " ".join(f'"{"x" * 200}-{i}"' for i in range(4))
DNSKEY = base64.b64encode(bytes(range(64))).decode()

ZONE_TEXT = f"""$ORIGIN {ZONE}
$TTL 300
@       3600 SOA ns1 hostmaster {SERIAL} 3600 900 1209600 300
@       NS    ns1
@       MX    10 mail
@       TXT   "v=spf1 -all"
@       CAA   0 issue "ca.example.net"
@       DNSKEY 257 3 13 {DNSKEY}
ns1     A     127.0.0.1
ns1     AAAA  ::1
www     120 A 192.0.2.80
www     120 AAAA 2001:db8::80
www     HTTPS 1 . alpn="h2,http/1.1"
alias   CNAME www
mail    A     192.0.2.25
big     TXT   {BIG_TXT}
"""


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 and ::1 (best effort)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for typ in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(fam, typ) as t:
                        t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def _wait_udp(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until a DNS server answers on ``port`` (a query for the zone's SOA)."""
    import dns.message
    import dns.query

    q = dns.message.make_query(ZONE, "SOA")
    deadline = time.monotonic() + timeout
    while True:
        try:
            dns.query.udp(q, host, port=port, timeout=0.2)
            return
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no DNS answer on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def wait_http(url: str, timeout: float = 10.0) -> None:
    """Wait until ``url`` answers with a success (a collector just started, say). A
    garbled answer is "not yet": before the server listens, a connection to a port of
    the ephemeral range can land on its own source port (TCP's simultaneous open) and
    read its own request back."""
    import http.client
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer after {timeout}s") from None
            time.sleep(0.1)


class Server:
    """A server process in its own temporary directory."""

    name = "server"

    def __init__(self, nsid: str, identity: str, port: int | None = None) -> None:
        self.nsid = nsid
        self.identity = identity
        self.dir = Path(tempfile.mkdtemp(prefix=f"popwatch-{self.name}-"))
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self, argv: list[str]) -> None:
        self.log = open(self.dir / "log", "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queries(self) -> int:
        raise NotImplementedError


class Knot(Server):
    """Knot DNS (knotd) serving example.test on 127.0.0.1 and ::1, with mod-stats on."""

    name = "knot"

    def start(self, extra_records: str = "") -> Knot:
        need("knotd", "knotc")
        (self.dir / "example.test.zone").write_text(ZONE_TEXT + extra_records)
        (self.dir / "knot.conf").write_text(
            knotconf.config(
                self.dir,
                [f"127.0.0.1@{self.port}", f"::1@{self.port}"],
                self.identity,
                self.nsid,
                ZONE,
                "example.test.zone",
            )
        )
        self._start(["knotd", "-c", str(self.dir / "knot.conf")])
        _wait_udp(self.port)
        return self

    def queries(self) -> int:
        """Requests Knot has received, over every protocol (mod-stats request-protocol)."""
        return knotconf.queries(self.dir)


class Nsd(Server):
    """NSD serving example.test on 127.0.0.1 and ::1."""

    name = "nsd"

    def start(self) -> Nsd:
        need("nsd", "nsd-control", "nsd-control-setup", "openssl")
        (self.dir / "example.test.zone").write_text(ZONE_TEXT)
        subprocess.run(["nsd-control-setup", "-d", str(self.dir)], check=True, capture_output=True)
        self.control_port = free_port(socket.SOCK_STREAM)
        (self.dir / "nsd.conf").write_text(
            f"""
server:
    ip-address: 127.0.0.1@{self.port}
    ip-address: ::1@{self.port}
    port: {self.port}
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{self.dir}"
    database: ""
    zonelistfile: "{self.dir}/zone.list"
    xfrdfile: "{self.dir}/xfrd.state"
    xfrdir: "{self.dir}"
    pidfile: "{self.dir}/nsd.pid"
    logfile: "{self.dir}/nsd.log"
    identity: "{self.identity}"
    hide-identity: no
    nsid: "ascii_{self.nsid}"
    verbosity: 0
    statistics: 0
    tcp-count: 100
    reuseport: no
remote-control:
    control-enable: yes
    control-interface: 127.0.0.1
    control-port: {self.control_port}
    server-key-file: "{self.dir}/nsd_server.key"
    server-cert-file: "{self.dir}/nsd_server.pem"
    control-key-file: "{self.dir}/nsd_control.key"
    control-cert-file: "{self.dir}/nsd_control.pem"
zone:
    name: {ZONE}
    zonefile: example.test.zone
"""
        )
        self._start(["nsd", "-d", "-c", str(self.dir / "nsd.conf")])
        _wait_udp(self.port)
        return self

    def queries(self) -> int:
        """Queries NSD has received (``nsd-control stats_noreset``: ``num.queries``)."""
        out = subprocess.run(
            ["nsd-control", "-c", str(self.dir / "nsd.conf"), "stats_noreset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        m = re.search(r"^num\.queries=(\d+)$", out, re.M)
        assert m, out
        return int(m.group(1))


class Dnsdist(Server):
    """dnsdist terminating DoT and DoH (self-signed) in front of a backend server."""

    name = "dnsdist"

    def start(self, backend_port: int, query_log: Path | None = None) -> Dnsdist:
        """Start in front of ``backend_port``; with ``query_log``, dnsdist writes a line per
        query it receives there: ``[epoch.ns] Packet from ADDR:PORT for QNAME QTYPE with
        id ID`` (its LogAction, unbuffered, with timestamps)."""
        need("dnsdist", "openssl")
        self.cert, self.key = make_cert(self.dir)
        self.dot_port = free_port(socket.SOCK_STREAM)
        self.doh_port = free_port(socket.SOCK_STREAM)
        self.console_port = free_port(socket.SOCK_STREAM)
        lines = [
            f"setLocal('127.0.0.1:{self.port}')",
            f"addLocal('[::1]:{self.port}')",
            # health checks would add queries the probe never sent, and one that times out
            # on a busy machine marks the backend down for the hour (dnsdist then drops
            # every query): the backend is set up, with no health checks at all
            f"newServer({{address='127.0.0.1:{backend_port}', checkInterval=3600}})",
            "getServer(0):setUp()",
            f"controlSocket('127.0.0.1:{self.console_port}')",
            "setKey('" + base64.b64encode(os.urandom(32)).decode() + "')",
            "setSecurityPollSuffix('')",  # no security-status query to the outside world
        ]
        if query_log is not None:
            lines.append(
                f"addAction(AllRule(), LogAction('{query_log}', false, false, false, false, true))"
            )
        for host in ("127.0.0.1", "[::1]"):
            lines.append(f"addTLSLocal('{host}:{self.dot_port}', '{self.cert}', '{self.key}')")
            lines.append(
                f"addDOHLocal('{host}:{self.doh_port}', '{self.cert}', '{self.key}', '/dns-query')"
            )
        (self.dir / "dnsdist.conf").write_text("\n".join(lines) + "\n")
        self._start(
            ["dnsdist", "--supervised", "--disable-syslog", "-C", str(self.dir / "dnsdist.conf")]
        )
        _wait_udp(self.port)
        for port in (self.dot_port, self.doh_port):
            deadline = time.monotonic() + 10
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dnsdist did not listen on {port}")
                time.sleep(0.05)
        return self


@contextlib.contextmanager
def knot(nsid: str = "knot-fra1", identity: str = "knot-id-fra1") -> Iterator[Knot]:
    with Knot(nsid, identity) as k:
        yield k.start()


def wait_for_records(
    path: Path, done: Callable[[list[dict[str, object]]], bool], timeout: float = 20.0
) -> list[dict[str, object]]:
    """Poll a JSON-lines output file until ``done(records)``; raise on timeout."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        records = []
        if path.exists():
            lines = path.read_text().splitlines()
            records = [json.loads(x) for x in lines if x.endswith("}")]
        if done(records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: only {len(records)} records after {timeout}s")
        time.sleep(0.1)


def series_spacing(
    records: list[dict[str, object]], key: Callable[[dict[str, object]], object]
) -> list[float]:
    """Seconds between consecutive runs (by ``ts``) of each series."""
    by: dict[object, list[int]] = {}
    for r in records:
        ts = r["ts"]
        assert isinstance(ts, int)
        by.setdefault(key(r), []).append(ts)
    gaps = []
    for stamps in by.values():
        stamps.sort()
        gaps += [(b - a) / NS for a, b in itertools.pairwise(stamps)]
    return gaps


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (the context managers then clean up)."""
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(
        description="Serve example.test on loopback with a real Knot, NSD or dnsdist+Knot "
        "until Ctrl-C, for trying popwatch-probe by hand."
    )
    ap.add_argument("server", choices=["knot", "nsd", "dnsdist"])
    ap.add_argument("--port", type=int, help="UDP/TCP port (default: a free one)")
    ap.add_argument("--nsid", default="lab-fra1", help="NSID the server reports")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        if args.server == "dnsdist":
            backend = stack.enter_context(Knot(args.nsid, f"id-{args.nsid}")).start()
            d = stack.enter_context(Dnsdist(args.nsid, args.nsid, args.port)).start(backend.port)
            print(
                f"dnsdist in front of Knot (NSID {args.nsid}): udp/tcp 127.0.0.1:{d.port}, "
                f"DoT 127.0.0.1:{d.dot_port}, DoH https://127.0.0.1:{d.doh_port}/dns-query, "
                f"CA {d.cert}",
                flush=True,
            )
        else:
            cls = Knot if args.server == "knot" else Nsd
            srv = stack.enter_context(cls(args.nsid, f"id-{args.nsid}", args.port)).start()
            print(
                f"{args.server} serving {ZONE} on 127.0.0.1:{srv.port} and [::1]:{srv.port} "
                f"(NSID {args.nsid}, id.server id-{args.nsid}); Ctrl-C to stop",
                flush=True,
            )
        wait_for_stop()


if __name__ == "__main__":
    main()

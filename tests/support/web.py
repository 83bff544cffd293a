"""A web server in a test host of its own, whose every phase can be slowed on purpose.

``WebLab`` makes a network namespace (the test host), joins it to this one through two
TUN devices and the lab's wire (:mod:`popwatch_lab.wire`, a user-space forwarder), and
runs this module's HTTPS server inside it (aiohttp, a throwaway self-signed
certificate). Each phase can be delayed:

* **connect**: port ``CONNECT_PORT``, where the wire holds the SYN-ACK;
* **TLS**: port ``TLS_PORT``, where the server waits before it reads the ClientHello;
* **TTFB**: ``?ttfb=SECONDS``, the handler waits before sending the headers;
* **body**: ``?body=SECONDS``, the handler waits between the headers and the body.

Port ``PLAIN_PORT`` delays nothing; ``HTTP_PORT`` is plain HTTP. Other query parameters:
``status=N``, ``size=BYTES``, ``redirect=N`` (a chain of N 302s, each to a new
connection), ``text=STRING`` (the body), ``endless`` (a chunked body that never ends). The
addresses live only inside the namespace.

Needs root (netns, TUN). By hand: ``python tests/support/web.py --connect 0.05 --tls 0.05``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

if __package__ in (None, ""):  # run by hand: python tests/support/web.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent
PLAIN_PORT = 443
CONNECT_PORT = 9443
TLS_PORT = 8443
HTTP_PORT = 80
#: held while a WebLab chooses its link's addresses (WebLab._claim_link)
_LINK_LOCK = Path(tempfile.gettempdir()) / "popwatch-weblab.lock"


async def precise_sleep(seconds: float) -> None:
    """asyncio.sleep wakes up to a millisecond late; sleep short, then spin."""
    if seconds <= 0:
        return
    deadline = time.perf_counter() + seconds
    if seconds > 0.003:
        await asyncio.sleep(seconds - 0.003)
    while time.perf_counter() < deadline:
        pass


# --------------------------------------------------------------------------- server


async def handle(request: object) -> object:
    from aiohttp import web

    assert isinstance(request, web.BaseRequest)
    q = request.query
    redirect = int(q.get("redirect", "0"))
    if redirect > 0:
        rest = {**q, "redirect": str(redirect - 1)}
        return web.Response(
            status=302,
            headers={"Location": "/?" + urllib.parse.urlencode(rest), "Connection": "close"},
        )
    await precise_sleep(float(q.get("ttfb", "0")))
    if "endless" in q:  # a body that never ends (chunked), until the client goes away
        resp = web.StreamResponse(headers={"Connection": "close"})
        await resp.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while True:
                await resp.write(chunk)
        return resp
    body = q.get("text", "").encode() or b"x" * int(q.get("size", "1000"))
    resp = web.StreamResponse(status=int(q.get("status", "200")), headers={"Connection": "close"})
    resp.content_length = len(body)
    await resp.prepare(request)  # a StreamResponse sends its headers here
    await precise_sleep(float(q.get("body", "0")))
    if request.method != "HEAD":
        await resp.write(body)
    await resp.write_eof()
    return resp


async def serve(address: str, cert: str, key: str, tls_delay: float) -> None:
    """Accept on every port; TLS_PORT waits ``tls_delay`` before the TLS handshake."""
    import socket

    from aiohttp import web

    loop = asyncio.get_running_loop()
    server = web.Server(handle)  # a protocol factory: one RequestHandler per connection
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def listen(port: int) -> socket.socket:
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((address, port))
        lsock.listen(128)
        lsock.setblocking(False)
        return lsock

    async def accept_loop(lsock: socket.socket, tls: bool, delay: float) -> None:
        tasks: set[asyncio.Task[None]] = set()

        async def one(conn: socket.socket) -> None:
            try:
                if delay:
                    await precise_sleep(delay)  # the ClientHello waits in the kernel
                await loop.connect_accepted_socket(server, conn, ssl=ctx if tls else None)
            except (OSError, ssl.SSLError):
                conn.close()

        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setblocking(False)
            task = asyncio.create_task(one(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    ports = [
        (PLAIN_PORT, True, 0.0),
        (CONNECT_PORT, True, 0.0),
        (TLS_PORT, True, tls_delay),
        (HTTP_PORT, False, 0.0),
    ]
    listening = [(listen(port), tls, delay) for port, tls, delay in ports]
    print("ready", flush=True)  # every port is bound and listening
    async with asyncio.TaskGroup() as tg:
        for lsock, tls, delay in listening:
            tg.create_task(accept_loop(lsock, tls, delay))


# --------------------------------------------------------------------------- lab


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class WebLab:
    """A test host in its own netns, reached through the lab's wire. Needs root."""

    def __init__(self, connect_delay: float = 0.0, tls_delay: float = 0.0) -> None:
        self.connect_delay = connect_delay
        self.tls_delay = tls_delay
        tag = secrets.token_hex(3)
        self.netns = f"pwlab-{tag}"
        self.client_dev = f"pwc-{tag}"
        self.server_dev = f"pws-{tag}"
        self._link(secrets.randbelow(250) + 1)  # start() takes one no other WebLab holds
        self.dir = Path(tempfile.mkdtemp(prefix="popwatch-web-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def make_cert(self) -> None:
        """The page's throwaway certificate and key in the lab's directory. The
        certificate is the CA file the printed command pins, which a plain user runs:
        the directory is searchable by all (0755) and the certificate readable by all
        (0644); the key is the owner's alone (0600)."""
        from support.servers import make_cert

        self.dir.chmod(0o755)
        self.cert, self.key = make_cert(self.dir, names=["web.example.test"], ips=[self.address])
        self.key.chmod(0o600)
        self.cert.chmod(0o644)

    def _link(self, n: int) -> None:
        # RFC 2544 benchmarking space, only inside the namespace this lab creates
        self.client_ip, self.address = f"198.18.{n}.1", f"198.18.{n}.2"

    def _claim_link(self) -> None:
        """The host's TUN device and its /24 of RFC 2544 benchmarking space (the
        page's address lives only inside the namespace this lab creates): one no other
        WebLab on this machine holds, since another test process (a second pytest-xdist
        worker) may be starting one at the same moment. The choice and the address go
        on under one lock, so two never take the same."""
        with open(_LINK_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = subprocess.run(
                ["ip", "-o", "-4", "addr", "show"], check=True, capture_output=True, text=True
            ).stdout
            taken = {w.split("/")[0] for w in held.split()}  # "inet 198.18.7.1 peer ..."
            if self.client_ip in taken:
                free = [n for n in range(1, 251) if f"198.18.{n}.1" not in taken]
                self._link(free[secrets.randbelow(len(free))])
            _ip("tuntap", "add", "dev", self.client_dev, "mode", "tun")
            _ip("addr", "add", self.client_ip, "peer", self.address, "dev", self.client_dev)

    def start(self) -> WebLab:
        self._claim_link()
        self.make_cert()
        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("link", "set", self.client_dev, "up")
        _ip("-n", self.netns, "tuntap", "add", "dev", self.server_dev, "mode", "tun")
        _ip(
            "-n",
            self.netns,
            "addr",
            "add",
            self.address,
            "peer",
            self.client_ip,
            "dev",
            self.server_dev,
        )
        _ip("-n", self.netns, "link", "set", self.server_dev, "up")
        # one link, no regions: no delay but the SYN-ACKs held on CONNECT_PORT
        spec = self.dir / "wire.json"
        synack_ms = {str(CONNECT_PORT): self.connect_delay * 1000} if self.connect_delay else {}
        spec.write_text(
            json.dumps(
                {
                    "links": {
                        "web": {
                            "outer": [None, self.client_dev],
                            "inner": [self.netns, self.server_dev],
                        }
                    },
                    "peers": {},
                    "params": {"web": {"paths": {}, "synack_ms": synack_ms}},
                }
            )
        )
        self._spawn([sys.executable, "-m", "popwatch_lab.wire", str(spec)])
        self._spawn(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                sys.executable,
                str(HERE / "web.py"),
                "serve",
                "--address",
                self.address,
                "--cert",
                str(self.cert),
                "--key",
                str(self.key),
                "--tls-delay",
                str(self.tls_delay),
            ]
        )
        return self

    def _spawn(self, argv: list[str]) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            err = proc.stderr.read().decode() if proc.stderr else ""
            self.stop()
            raise RuntimeError(f"{' '.join(argv)}: did not start: {line!r} {err}")

    def url(self, port: int = PLAIN_PORT, host: str | None = None, **query: object) -> str:
        scheme = "http" if port == HTTP_PORT else "https"
        q = ("?" + urllib.parse.urlencode(query)) if query else "/"
        return f"{scheme}://{host or self.address}:{port}/{q.lstrip('/')}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self.procs.clear()
        for args in (["link", "del", self.client_dev], ["netns", "del", self.netns]):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip(*args)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> WebLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="(inside the namespace) run the server")
    s.add_argument("--address", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--tls-delay", type=float, default=0.0)
    ap.add_argument("--connect", type=float, default=0.0, help="SYN-ACK delay on CONNECT_PORT")
    ap.add_argument("--tls", type=float, default=0.0, help="TLS delay on TLS_PORT")
    args = ap.parse_args()
    if args.cmd == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.address, args.cert, args.key, args.tls_delay))
        return
    if os.geteuid() != 0:
        sys.exit("tests/support/web.py needs root (network namespaces and TUN devices)")
    from support.servers import Knot, wait_for_stop

    with WebLab(args.connect, args.tls) as lab, Knot("lab-web", "id-lab-web") as knot:
        lab.start()
        # the page's host name, served by a real Knot: the fetch's DNS phase is timed too
        knot.start(extra_records=f"web 60 IN A {lab.address}\n")
        url = lab.url(host="web.example.test")
        print(
            f"web lab: {url} (CA {lab.cert}), its name served by Knot on "
            f"127.0.0.1:{knot.port}; connect delay on port {CONNECT_PORT}, TLS delay on port "
            f"{TLS_PORT}; Ctrl-C to stop. Try:\n"
            f"  popwatch-probe once --https {url} --resolver 127.0.0.1:{knot.port} "
            f"--tls-ca {lab.cert} -4 --count 5 --interval 0.2",
            flush=True,
        )
        wait_for_stop()


if __name__ == "__main__":
    main()

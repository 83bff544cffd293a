"""Admission for the public listener: how many connections, and how many header bytes.

aiohttp bounds each header line (``max_line_size``, ``max_field_size``, ``max_headers``:
see ``collector.app``), but not how many connections send headers at once: a thousand
connections that each send headers and never the blank line that ends them hold all of
it in memory (and each malformed request keeps the chunk it came in until the garbage
collector runs). :class:`Gate` wraps the server's protocol factory and, per connection,
before aiohttp sees a byte:

- refuses a connection past ``max_connections`` in all, or past ``max_per_address``
  from one address (an IPv6 address counts by its /64), with a ``503`` and
  ``Retry-After``;
- counts the bytes of each request's head (request line and headers, up to the blank
  line that ends them), and answers ``431`` and closes a connection whose head passes
  ``max_head_bytes``, whose request line passes ``max_line_size``, one of whose headers
  passes ``max_field_size``, or which has more than ``max_headers`` headers, forwarding
  to aiohttp no more than that (aiohttp's own bounds, set higher, would answer 400);
- when the heads waiting over all connections pass ``max_waiting_bytes``, closes the
  connections holding the most until it is back under: an honest head is a few hundred
  bytes and is handled at once, so the connections holding kilobytes of unfinished
  headers are the ones closed.

The head ends at the first CRLF CRLF; the bytes after it (a body, a pipelined request)
are not counted until the request handler says the request is answered
(:func:`middleware`), and the next head starts. Directly on the internet, put a reverse
proxy with its own limits in front as well (README, Security).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from collector.ingest import metrics

log = logging.getLogger("popwatch.collector.ingest.gate")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 42\r\n\r\n"
    b"too many connections; retry in 5 seconds\r\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 27\r\n\r\n"
    b"request headers too large\r\n"
)
_END = b"\r\n\r\n"


def _source(transport: asyncio.BaseTransport) -> str:
    """The address a connection counts against: the peer's, or its /64 for IPv6."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return ""
    try:
        addr = ipaddress.ip_address(peer[0])
    except ValueError:
        return str(peer[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class _Connection(asyncio.Protocol):
    """One admitted connection: aiohttp's protocol inside, its request heads counted."""

    __slots__ = (
        "_carry",
        "_make",
        "busy",
        "closed",
        "gate",
        "head",
        "in_head",
        "inner",
        "line",
        "lines",
        "source",
        "transport",
    )

    def __init__(self, gate: Gate, make: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.inner: asyncio.Protocol | None = None
        self._make = make
        self.head = 0  # bytes of the current request's head received so far
        self.in_head = True  # the bytes coming in are a head (not yet its blank line)
        self._carry = b""  # the last 3 bytes of a head: its blank line may straddle reads
        self.line = 0  # bytes of the head's current line so far
        self.lines = 0  # lines of the head ended so far (the request line first)
        self.source = ""
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests of this connection being handled
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.source = _source(transport)
        why = self.gate.admit(self)
        if why is not None:
            self.closed = True
            self.gate.note(why, f"connection from {self.source} refused: {why}")
            transport.write(_BUSY)
            transport.close()
            return
        self.inner = self._make()
        self.inner.connection_made(transport)

    def _head_end(self, data: bytes) -> int:
        """Where in ``data`` the head ends (just past its blank line), or -1."""
        if self._carry:
            joint = self._carry + data[:3]
            i = joint.find(_END)
            if i >= 0:
                return i + 4 - len(self._carry)
        i = data.find(_END)
        return -1 if i < 0 else i + 4

    def data_received(self, data: bytes) -> None:
        if self.inner is None or self.closed:
            return
        if self.in_head:
            end = self._head_end(data)
            n = len(data) if end < 0 else end
            if (why := self._lines(data, n)) is not None:
                self.gate.note(
                    "head line too large", f"connection from {self.source} closed: {why}"
                )
                self.gate.refuse(self, _TOO_LARGE)
                return
            room = self.gate.max_head_bytes - self.head
            if n > room:  # not handed to aiohttp, which would hold it until closed
                self.gate.note(
                    "head too large",
                    f"connection from {self.source} closed: request headers over "
                    f"{self.gate.max_head_bytes} bytes",
                )
                self.gate.refuse(self, _TOO_LARGE)
                return
            if end < 0:
                self._carry = (self._carry + data)[-3:]
            else:
                self.in_head, self._carry = False, b""
            self.head += n
            self.gate.received(self, n)
            if self.closed:  # evicted: this one held the most
                return
        self.inner.data_received(data)

    def _lines(self, data: bytes, n: int) -> str | None:
        """Count the head's lines in ``data[:n]``; why the head is refused, or None."""
        gate = self.gate
        start = 0
        while True:
            j = data.find(b"\n", start, n)
            stop = n if j < 0 else j
            self.line += stop - start
            limit = gate.max_line_size if self.lines == 0 else gate.max_field_size
            if self.line > limit + 1:  # + the CR before the LF
                what = "request line" if self.lines == 0 else "header"
                return f"a {what} over {limit} bytes"
            if j < 0:
                return None
            self.lines += 1
            self.line = 0
            start = j + 1
            if self.lines > gate.max_headers + 2:  # the request line, the blank line
                return f"more than {gate.max_headers} headers"

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        self.gate.release(self)
        self.inner.connection_lost(exc)


class Gate:
    """Connection caps and bounds on request heads (see the module)."""

    def __init__(
        self,
        max_connections: int,
        max_per_address: int,
        max_head_bytes: int,
        max_waiting_bytes: int,
        gauge: Gauge = metrics.CONNECTIONS,
        name: str = "public",
        max_line_size: int = 4096,
        max_field_size: int = 4096,
        max_headers: int = 32,
    ) -> None:
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        self.max_headers = max_headers
        self.name = name  # which listener: "public" or "admin"
        self._gauge = gauge
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.max_head_bytes = max_head_bytes
        self.max_waiting_bytes = max_waiting_bytes
        self.open = 0
        self.waiting = 0  # head bytes of requests not yet handled, over all connections
        self._by_source: dict[str, int] = {}
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._noted: dict[str, tuple[float, int]] = {}  # why -> (logged at, since)

    def protocol_factory(
        self, make: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``make``'s, behind the gate."""
        return lambda: _Connection(self, make)

    def admit(self, conn: _Connection) -> str | None:
        """Count ``conn`` in, or say why not."""
        if self.open >= self.max_connections:
            return "too many connections"
        if self._by_source.get(conn.source, 0) >= self.max_per_address:
            return "too many connections from one address"
        self.open += 1
        self._by_source[conn.source] = self._by_source.get(conn.source, 0) + 1
        assert conn.transport is not None
        self._by_transport[conn.transport] = conn
        self._gauge.set(self.open)
        return None

    def release(self, conn: _Connection) -> None:
        """Count ``conn`` out (once; it is closed or closing)."""
        conn.closed = True
        assert conn.transport is not None
        if self._by_transport.pop(conn.transport, None) is None:
            return
        self.open -= 1
        left = self._by_source.pop(conn.source, 1) - 1
        if left:
            self._by_source[conn.source] = left
        self.waiting -= conn.head
        conn.head = 0
        self._gauge.set(self.open)

    def refuse(self, conn: _Connection, answer: bytes | None) -> None:
        """Close ``conn`` now: with ``answer`` written first, or at once (reset)."""
        transport = conn.transport
        assert transport is not None
        self.release(conn)
        if answer is None:
            transport.abort()
        else:
            transport.write(answer)
            transport.close()

    def received(self, conn: _Connection, n: int) -> None:
        """``conn`` sent ``n`` more head bytes; close the fattest while the heads waiting
        over all connections are over the bound."""
        self.waiting += n
        while self.waiting > self.max_waiting_bytes:
            fattest = max(self._by_transport.values(), key=lambda c: c.head)
            self.note(
                "heads over the shared bound",
                f"connection from {fattest.source} closed: {fattest.head} bytes of "
                f"unfinished headers while all connections held over {self.max_waiting_bytes}",
            )
            self.refuse(fattest, None)

    def started(self, transport: asyncio.BaseTransport | None) -> _Connection | None:
        """A request of the connection on ``transport`` is being handled: its head is
        no longer waiting."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None:
            conn.busy += 1
            self.waiting -= conn.head
            conn.head, conn.in_head, conn._carry = 0, False, b""
            conn.line, conn.lines = 0, 0
        return conn

    def finished(self, conn: _Connection) -> None:
        """The request ``started`` returned ``conn`` for is answered: the bytes that come
        next are the next request's head."""
        conn.busy -= 1
        if not conn.busy and not conn.closed:
            conn.in_head = True

    def note(self, why: str, what: str) -> None:
        """Count ``why`` on /metrics and log ``what``, at most once a minute for each
        ``why`` (the line says how many more there were since)."""
        metrics.CONNECTIONS_REFUSED.labels(
            why if self.name == "public" else f"{self.name}: {why}"
        ).inc()
        now = time.monotonic()
        at, since = self._noted.get(why, (-60.0, 0))
        if now - at < 60:
            self._noted[why] = (at, since + 1)
            return
        more = f" ({since} more such since the last note)" if since else ""
        log.warning("%s%s", what, more)
        self._noted[why] = (now, 0)


GATE = web.AppKey("gate", Gate)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Tells the app's gate when a request is being handled and when it is answered."""
    conn = request.app[GATE].started(request.transport)
    try:
        return await handler(request)
    finally:
        if conn is not None:
            conn.gate.finished(conn)


class GatedSite(web.BaseSite):
    """``web.TCPSite``, with the connections behind the app's :class:`Gate`."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        ssl_context: Any = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port = host, port
        self._gate = runner.app[GATE]

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._gate.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )


__all__ = ["GATE", "Gate", "GatedSite", "middleware"]

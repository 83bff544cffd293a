"""DNS over HTTPS (RFC 8484, POST) on an open TLS connection, framed by h11 or h2.

The HTTP version is the one the server chose by ALPN: ``h2`` is HTTP/2, framed by
:mod:`h2`; anything else (``http/1.1``, or no ALPN at all) is HTTP/1.1, framed by
:mod:`h11`. Both libraries are sans-IO: they turn bytes into events and events into bytes,
and every byte goes through :class:`probe.net.StreamConn`, whose reads carry kernel RX
stamps. So ``rtt_ns`` keeps its meaning from :mod:`probe.net`: it lies between the kernel
TX stamp of the write that carried the whole request and the kernel RX stamp of the read
that delivered the first bytes of the response to it.

A connection keeps its session here for as long as it lives, so a second query (the
CHAOS identity after the timed query) goes on the same connection: as the next
request/response cycle in HTTP/1.1, as the next stream in HTTP/2.

Framing the libraries refuse raises their ``ProtocolError``, which :mod:`probe.errors`
maps to ``http: ...``; a status other than 200 or a body that cannot be a DNS message is
an ``http`` error too.
"""

from __future__ import annotations

import weakref
from typing import Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11

from probe import USER_AGENT, errors, net

#: what a probe offers by ALPN for DoH, in order of preference
ALPN: Final = ("h2", "http/1.1")
_MEDIA_TYPE: Final = b"application/dns-message"
_USER_AGENT: Final = USER_AGENT.encode()
_MAX_BODY: Final = 65535  # the largest DNS message
_H2_PREFACE_HEAD: Final = 9  # an HTTP/2 frame header: length (3), type, flags, stream (4)
_H2_SETTINGS: Final = 0x4


def http_version(conn: net.StreamConn) -> str:
    """``"2"`` or ``"1.1"``: the HTTP version DoH speaks on ``conn`` (by its ALPN)."""
    return "2" if conn.alpn == "h2" else "1.1"


async def exchange(conn: net.StreamConn, query: bytes, authority: str, path: str) -> net.Exchange:
    """POST ``query`` to ``path`` on ``conn`` and return the answer (the body), timed.

    ``authority`` is the Host header (``:authority`` in HTTP/2). Raises
    :class:`errors.CheckError` (``http``) for a status other than 200, a content type
    other than ``application/dns-message``, an oversized body or framing that h11 or h2
    refuses; ``EOFError`` and ``OSError`` from the connection.
    """
    session = _sessions.get(conn)
    if session is None:
        session = _Http2(conn) if conn.alpn == "h2" else _Http11(conn)
        _sessions[conn] = session
    try:
        return await session.exchange(query, authority.encode(), path.encode())
    except (h11.ProtocolError, h2.exceptions.ProtocolError) as exc:
        # as a CheckError now, so that a caller who tolerates failed queries (the CHAOS
        # identity) need not know the libraries
        raise errors.classify(exc) from exc


class _Http11:
    """HTTP/1.1 with h11: one request/response cycle per query, kept alive in between."""

    def __init__(self, conn: net.StreamConn) -> None:
        self._conn = conn
        self._h11 = h11.Connection(h11.CLIENT)

    async def exchange(self, query: bytes, authority: bytes, path: bytes) -> net.Exchange:
        h = self._h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()  # LocalProtocolError if the server said it would close
        request = b"".join(
            h.send(event) or b""
            for event in (
                h11.Request(method=b"POST", target=path, headers=_headers(authority, query)),
                h11.Data(data=query),
                h11.EndOfMessage(),
            )
        )
        sent = await self._conn.send(request)
        # an HTTP/1.1 server sends nothing unasked, so the first read after the request
        # carries the first bytes of its response: that read's RX stamp ends rtt_ns
        data, rx, t_recv = await self._conn.read_some()
        h.receive_data(data)
        body = bytearray()
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                try:
                    data, _, _ = await self._conn.read_some()
                except EOFError:
                    # h11 decides: the end of a body delimited by the close, or one cut short
                    # (RemoteProtocolError, naming the bytes missing)
                    data = b""
                h.receive_data(data)
            elif isinstance(event, h11.Response):
                _check_head(event.status_code, dict(event.headers).get(b"content-type"))
            elif isinstance(event, h11.Data):
                body += event.data
                _check_size(body)
            elif isinstance(event, h11.EndOfMessage):
                return self._conn.timed(bytes(body), sent, rx, t_recv)
            elif not isinstance(event, h11.InformationalResponse):  # 1xx: the real one follows
                raise errors.CheckError(errors.NETERR, "http", f"unexpected {event!r}")


class _Http2:
    """HTTP/2 with h2: one stream per query on one connection.

    The connection preface (ours, and the server's SETTINGS) is exchanged before the first
    request is sent, outside the timed interval, so that the server's SETTINGS cannot be
    the first thing read after the request. Whatever else is read then that is not for
    our stream (the ACK of our SETTINGS, WINDOW_UPDATE, PING) is skipped too:
    ``rtt_ns`` ends at the RX stamp of the read that delivered the first frame of our
    stream, the response HEADERS (a header block split over CONTINUATION frames counts
    from the read that completed it, when h2 reports it). Nothing is written during the
    timed interval: the frames h2 owes the server (SETTINGS ACK, WINDOW_UPDATE, PING ACK)
    go out with the next request, so the latest TX stamp stays the request's.
    """

    def __init__(self, conn: net.StreamConn) -> None:
        self._conn = conn
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._started = False

    async def _start(self) -> None:
        """Send our preface and SETTINGS; read until the server's SETTINGS are in (untimed)."""
        h = self._h2
        h.initiate_connection()
        await self._conn.send(h.data_to_send(), timed=False)
        head = b""
        while len(head) < _H2_PREFACE_HEAD:
            data, _, _ = await self._conn.read_some()
            head += data
        # the server's preface is a SETTINGS frame (RFC 9113 3.4). h2 checks a frame's
        # length only once the whole frame is in, so an HTTP/1.1 answer ("HTT" is a length
        # of 4.7 MB) would wait for the timeout rather than fail: check the first one here
        if head[3] != _H2_SETTINGS or head[4] & 0x1 or any(head[5:9]):
            detail = f"server preface is not a SETTINGS frame: {head[:24]!r}"
            raise errors.CheckError(errors.NETERR, "http", detail)
        events = h.receive_data(head)
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
            _check_connection(events, 1)
            data, _, _ = await self._conn.read_some()
            events = h.receive_data(data)
        _check_connection(events, 1)
        self._started = True

    async def exchange(self, query: bytes, authority: bytes, path: bytes) -> net.Exchange:
        if not self._started:
            await self._start()
        h = self._h2
        sid = h.get_next_available_stream_id()
        head = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", authority),
            (b":path", path),
            *((k, v) for k, v in _headers(authority, query) if k != b"host"),
        ]
        h.send_headers(sid, head)
        h.send_data(sid, query, end_stream=True)
        sent = await self._conn.send(h.data_to_send())
        first: tuple[int | None, int] | None = None  # (RX stamp, perf ns) of our first frame
        body = bytearray()
        while True:
            data, rx, t_recv = await self._conn.read_some()
            events = h.receive_data(data)
            _check_connection(events, sid)
            for event in events:
                if not isinstance(event, _StreamEvent) or event.stream_id != sid:
                    continue
                if first is None:
                    first = (rx, t_recv)
                if isinstance(event, h2.events.ResponseReceived):
                    fields = dict(event.headers or [])
                    status = fields.get(b":status", b"")
                    _check_head(int(status) if status.isdigit() else 0, fields.get(b"content-type"))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data or b""
                    _check_size(body)
                    h.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                elif isinstance(event, h2.events.StreamReset):
                    code = _code_name(event.error_code)
                    raise errors.CheckError(
                        errors.NETERR, "http", f"stream reset by server: {code}"
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    assert first is not None  # set by this very event at the latest
                    return self._conn.timed(bytes(body), sent, *first)


_StreamEvent: Final = (
    h2.events.InformationalResponseReceived,
    h2.events.ResponseReceived,
    h2.events.TrailersReceived,
    h2.events.DataReceived,
    h2.events.StreamEnded,
    h2.events.StreamReset,
)


def _check_connection(events: list[h2.events.Event], sid: int) -> None:
    """Raise a GOAWAY as ``http``, unless it is graceful and stream ``sid`` is still served."""
    for event in events:
        if isinstance(event, h2.events.ConnectionTerminated):
            code = _code_name(event.error_code)
            last = event.last_stream_id
            if code != "NO_ERROR" or last is None or last < sid:
                raise errors.CheckError(errors.NETERR, "http", f"GOAWAY from server: {code}")


def _code_name(code: object) -> str:
    return getattr(code, "name", None) or str(code)


def _headers(authority: bytes, query: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", authority),
        (b"user-agent", _USER_AGENT),
        (b"content-type", _MEDIA_TYPE),
        (b"accept", _MEDIA_TYPE),
        (b"content-length", str(len(query)).encode()),
    ]


def _check_head(status: int, content_type: bytes | None) -> None:
    """A DoH answer is status 200 with ``application/dns-message`` (when a type is given)."""
    if status != 200:
        raise errors.CheckError(errors.NETERR, "http", f"status {status}")
    if content_type is not None:
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != _MEDIA_TYPE:
            shown = media.decode("ascii", "replace")
            raise errors.CheckError(errors.NETERR, "http", f"content-type {shown}")


def _check_size(body: bytearray) -> None:
    if len(body) > _MAX_BODY:
        raise errors.CheckError(errors.NETERR, "http", f"body over {_MAX_BODY} bytes")


_sessions: weakref.WeakKeyDictionary[net.StreamConn, _Http11 | _Http2] = weakref.WeakKeyDictionary()

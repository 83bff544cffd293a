"""DoH framed by h11 (HTTP/1.1) and h2 (HTTP/2): real dnsdist, and a stand-in for bad framing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest
from support import servers

from probe import doh, net
from probe.checks.dns import DnsJob, measure
from probe.net import tls_context
from probe.wire import DnsRecord

JobFor = Callable[..., DnsJob]
Cert = tuple[Path, Path]
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ADDRS = ["127.0.0.1", "::1"]
# the bytes that end a chunked body, inside an answer: hand framing cut the body there
CHUNK_END = b"\r\n0\r\n\r\n"


# ---------------------------------------------------------------- real dnsdist, real Knot


def _dnsdist_job(job_for: JobFor, dnsdist: servers.Dnsdist, address: str, **kw: object) -> DnsJob:
    return job_for(address, "https", doh_port=dnsdist.doh_port, tls_ca=str(dnsdist.cert), **kw)


@pytest.mark.parametrize("address", ADDRS)
async def test_http2_through_dnsdist(
    dnsdist: servers.Dnsdist, job_for: JobFor, address: str
) -> None:
    """Offered h2 and http/1.1, dnsdist chooses HTTP/2: NOERROR, NSID site, kernel-timed."""
    r = await measure(_dnsdist_job(job_for, dnsdist, address))
    assert r.rcode == "NOERROR", r
    assert r.http_version == "2"
    assert r.serial == servers.SERIAL
    assert r.site == "knot-behind-dnsdist"  # NSID rides through dnsdist to Knot and back
    assert r.timestamping == "kernel"
    assert r.rtt_ms is not None and r.rtt_ms > 0
    assert r.connect_ms is not None and r.tls_ms is not None and r.error is None


@pytest.mark.parametrize("address", ADDRS)
async def test_http11_through_dnsdist(
    dnsdist: servers.Dnsdist, job_for: JobFor, address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that does not choose h2 is asked in HTTP/1.1, timed and identified alike.

    The probe offers only http/1.1 here; dnsdist's h2o then selects no ALPN protocol at
    all and speaks HTTP/1.1, as any server without HTTP/2 would.
    """
    monkeypatch.setattr(doh, "ALPN", ("http/1.1",))
    r = await measure(_dnsdist_job(job_for, dnsdist, address))
    assert r.rcode == "NOERROR", r
    assert r.http_version == "1.1"
    assert r.serial == servers.SERIAL
    assert r.site == "knot-behind-dnsdist"
    assert r.timestamping == "kernel"
    assert r.rtt_ms is not None and r.rtt_ms > 0
    assert r.connect_ms is not None and r.tls_ms is not None and r.error is None


@pytest.mark.parametrize("alpn", [doh.ALPN, ("http/1.1",)])
async def test_chaos_identity_is_a_second_request_on_the_connection(
    dnsdist: servers.Dnsdist,
    job_for: JobFor,
    alpn: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With identify: chaos, the CHAOS query is the next stream (HTTP/2) or the next
    request/response cycle (HTTP/1.1) on the connection of the timed query."""
    monkeypatch.setattr(doh, "ALPN", alpn)
    r = await measure(_dnsdist_job(job_for, dnsdist, "127.0.0.1", identify="chaos"))
    assert r.rcode == "NOERROR", r
    assert r.site == "knot-id-behind"
    assert r.http_version == ("2" if "h2" in alpn else "1.1")


# ---------------------------------------------------------------- a stand-in DoH server


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return servers.make_cert(tmp_path_factory.mktemp("doh-stand-in"))


@contextlib.asynccontextmanager
async def stand_in(cert: Cert, alpn: str, serve: Serve) -> AsyncIterator[int]:
    """A TLS server on loopback that chooses ``alpn`` and lets ``serve`` answer each
    connection byte for byte; yields its port.

    A stand-in, because no real DoH server sends bad framing on demand (nor a chunked
    body whose data holds the chunked terminator, nor frames in the order a test needs):
    dnsdist, the real server here, frames every answer correctly.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    ctx.set_alpn_protocols([alpn])
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                await serve(reader, writer)
                await writer.drain()
                await asyncio.wait_for(reader.read(), 5)  # until the probe hangs up
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    async with server:
        yield server.sockets[0].getsockname()[1]
        if handlers:
            await asyncio.wait(handlers, timeout=5)


def txt_answer(query: bytes, text: bytes) -> bytes:
    """The answer to ``query``: one TXT record holding ``text``."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [text])
    r.answer.append(dns.rrset.from_rdata(q.question[0].name, 60, rdata))
    return r.to_wire()


async def read_h11_query(reader: asyncio.StreamReader) -> bytes:
    """The body of one HTTP/1.1 POST (the probe's own, so Content-Length is there)."""
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert found, head
    return await reader.readexactly(int(found.group(1)))


def standin_job(job_for: JobFor, cert: Cert, port: int, **kw: object) -> DnsJob:
    kw.setdefault("qname", "example.test.")
    kw.setdefault("qtype", "TXT")
    return job_for("127.0.0.1", "https", doh_port=port, tls_ca=str(cert[0]), **kw)


async def doh_query(cert: Cert, port: int, alpn: tuple[str, ...], query: bytes) -> net.Exchange:
    """One DoH exchange on a connection of its own, through :func:`doh.exchange` alone."""
    conn = net.StreamConn(socket.AF_INET)
    try:
        await conn.connect(("127.0.0.1", port))
        await conn.start_tls(tls_context(str(cert[0]), True, alpn), "127.0.0.1")
        async with asyncio.timeout(2):
            return await doh.exchange(conn, query, "127.0.0.1", "/dns-query")
    finally:
        conn.close()


def assert_http_error(r: DnsRecord, detail: str) -> None:
    assert r.rcode == "NETERR", r
    assert r.error is not None and r.error.startswith("http: "), r.error
    assert "oserror" not in r.error
    assert detail in r.error, r.error
    assert r.rtt_ms is None


def _query(qname: str = "example.test.") -> bytes:
    return dns.message.make_query(qname, "TXT", id=0).to_wire()


# ---------------------------------------------------------------- HTTP/1.1 framing


def chunked(body: bytes, *cuts: int) -> bytes:
    """``body`` in chunked transfer coding, cut into chunks at the offsets ``cuts``."""
    chunks = [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"


async def test_chunked_body_holding_the_chunk_terminator_is_read_whole(
    cert: Cert, job_for: JobFor
) -> None:
    """A chunked answer whose data contains CRLF 0 CRLF CRLF is one whole DNS answer.

    Hand framing took those bytes inside the data for the end of the body and cut the
    answer short; h11 follows the chunk sizes.
    """
    answers: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = txt_answer(await read_h11_query(reader), b"v=1" + CHUNK_END + b"tail")
        assert CHUNK_END in answer
        answers.append(answer)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked(answer, 7, len(answer) - 9)
        )

    async with stand_in(cert, "http/1.1", serve) as port:
        ex = await doh_query(cert, port, doh.ALPN, _query())
        r = await measure(standin_job(job_for, cert, port))
    assert ex.data == answers[0]  # byte for byte
    assert r.rcode == "NOERROR", r
    assert r.answers == 1 and r.size == len(answers[1])
    assert r.http_version == "1.1" and r.rtt_ms is not None and r.error is None


async def test_body_delimited_by_close_is_read_whole(cert: Cert, job_for: JobFor) -> None:
    """An answer with neither Content-Length nor chunking ends where the server closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = txt_answer(await read_h11_query(reader), b"no length")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n\r\n" + answer)
        writer.close()

    async with stand_in(cert, "http/1.1", serve) as port:
        r = await measure(standin_job(job_for, cert, port))
    assert r.rcode == "NOERROR", r
    assert r.answers == 1 and r.rtt_ms is not None


H11_BAD = {
    "content-length not a number": (b"Content-Length: 7x\r\n", "bad Content-Length"),
    "content-length negative": (b"Content-Length: -1\r\n", "bad Content-Length"),
    "content-length twice": (
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        "conflicting Content-Length",
    ),
    "content-length beyond the body": (b"Content-Length: 600\r\n", "expected 600"),
    "chunk size not hex": (b"Transfer-Encoding: chunked\r\n", "chunk"),
}


@pytest.mark.parametrize("case", H11_BAD)
async def test_bad_http11_framing_is_http_error(cert: Cert, job_for: JobFor, case: str) -> None:
    """A bad Content-Length or chunk header is NETERR 'http: ...', never 'oserror'."""
    header, detail = H11_BAD[case]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = txt_answer(await read_h11_query(reader), b"x")
        body = b"zz\r\n" + answer if b"chunked" in header else answer
        writer.write(b"HTTP/1.1 200 OK\r\n" + header + b"\r\n" + body)
        writer.close()  # the body promised beyond the answer never comes

    async with stand_in(cert, "http/1.1", serve) as port:
        r = await measure(standin_job(job_for, cert, port))
    assert_http_error(r, detail)


H11_REFUSED = {
    "garbage": (b"\x00\x01garbage\xff\r\n\r\n", "illegal status line"),
    "status 404": (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        "http: status 404",
    ),
    "html": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n",
        "http: content-type text/html",
    ),
}


@pytest.mark.parametrize("case", H11_REFUSED)
async def test_not_a_doh_answer_is_http_error(cert: Cert, job_for: JobFor, case: str) -> None:
    """Garbage for a status line, a status other than 200 and a content type other than
    application/dns-message are NETERR 'http: ...'."""
    response, detail = H11_REFUSED[case]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_h11_query(reader)
        writer.write(response)

    async with stand_in(cert, "http/1.1", serve) as port:
        r = await measure(standin_job(job_for, cert, port))
    assert_http_error(r, detail)


# ---------------------------------------------------------------- HTTP/2 framing

Respond = Callable[[h2.connection.H2Connection, int, bytes], Awaitable[bytes]]


def raw_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame as given, for framing h2 itself would never write."""
    head = struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream)
    return head + payload


def h2_serve(respond: Respond, settings_delay: float = 0.0, pause: float = 0.0) -> Serve:
    """An HTTP/2 server (h2, server side) that answers each request with ``respond``'s
    bytes as they are. It sends its SETTINGS ``settings_delay`` s after the handshake; with
    ``pause`` it sends a PING and a WINDOW_UPDATE as soon as a request is in, and answers
    ``pause`` s later."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(settings_delay)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    sid = event.stream_id
                    bodies[sid] = bodies.get(sid, b"") + (event.data or b"")
                elif isinstance(event, h2.events.StreamEnded):
                    if pause:
                        conn.ping(b"popwatch")
                        conn.increment_flow_control_window(4096)
                        writer.write(conn.data_to_send())
                        await writer.drain()
                        await asyncio.sleep(pause)
                    writer.write(conn.data_to_send())
                    writer.write(await respond(conn, event.stream_id, bodies.pop(event.stream_id)))
            writer.write(conn.data_to_send())
            await writer.drain()

    return serve


def h2_answer(conn: h2.connection.H2Connection, sid: int, query: bytes, status: bytes) -> bytes:
    conn.send_headers(sid, [(b":status", status), (b"content-type", b"application/dns-message")])
    conn.send_data(sid, txt_answer(query, b"over h2"), end_stream=True)
    return conn.data_to_send()


async def _bad_hpack(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    return raw_frame(0x1, 0x4, sid, b"\xff\xff\xff\xff\xff")  # HEADERS, END_HEADERS


async def _no_status(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    block = hpack.Encoder().encode([(b"content-type", b"application/dns-message")])
    return raw_frame(0x1, 0x4, sid, block)


async def _data_first(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    return raw_frame(0x0, 0x1, sid, txt_answer(query, b"x"))  # DATA, END_STREAM


async def _data_on_stream_0(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    return raw_frame(0x0, 0x1, 0, b"abc")


async def _reset(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    return conn.data_to_send()


async def _goaway(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    conn.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR, last_stream_id=0)
    return conn.data_to_send()


async def _status_503(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    return h2_answer(conn, sid, query, b"503")


H2_BAD: dict[str, tuple[Respond, str]] = {
    "garbage header block": (_bad_hpack, "Error decoding header block"),
    "no :status": (_no_status, "missing mandatory b':status'"),
    "data before headers": (_data_first, "cannot receive data before headers"),
    "data on stream 0": (_data_on_stream_0, "Stream ID must be non-zero"),
    "stream reset": (_reset, "http: stream reset by server: REFUSED_STREAM"),
    "goaway": (_goaway, "http: GOAWAY from server: PROTOCOL_ERROR"),
    "status 503": (_status_503, "http: status 503"),
}


@pytest.mark.parametrize("case", H2_BAD)
async def test_bad_http2_framing_is_http_error(cert: Cert, job_for: JobFor, case: str) -> None:
    """Invalid frames or header blocks, a reset stream, a GOAWAY and a status other than
    200 are NETERR 'http: ...', never 'oserror'."""
    respond, detail = H2_BAD[case]
    async with stand_in(cert, "h2", h2_serve(respond)) as port:
        r = await measure(standin_job(job_for, cert, port))
    assert_http_error(r, detail)


async def test_http11_answer_on_h2_is_http_error(cert: Cert, job_for: JobFor) -> None:
    """A server that chose h2 but answers in HTTP/1.1 fails at once as 'http: ...', not
    after the timeout (its first bytes read as a frame of 4.7 MB)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    async with stand_in(cert, "h2", serve) as port:
        r = await measure(standin_job(job_for, cert, port, timeout=5.0))
    assert_http_error(r, "server preface is not a SETTINGS frame")


async def _ok(conn: h2.connection.H2Connection, sid: int, query: bytes) -> bytes:
    return h2_answer(conn, sid, query, b"200")


async def test_http2_setup_is_outside_rtt(cert: Cert, job_for: JobFor) -> None:
    """The HTTP/2 preface and SETTINGS exchange precede the timed request: a server slow
    to send its SETTINGS does not lengthen rtt_ms. The delay (1 s) is large against the
    request's own few milliseconds, so a loaded machine does not reach it either."""
    async with stand_in(cert, "h2", h2_serve(_ok, settings_delay=1.0)) as port:
        r = await measure(standin_job(job_for, cert, port, timeout=5.0))
    assert r.rcode == "NOERROR", r
    assert r.http_version == "2" and r.timestamping == "kernel"
    assert r.rtt_ms is not None and r.rtt_ms < 1000


async def test_http2_rtt_ends_at_our_stream_not_at_connection_frames(
    cert: Cert, job_for: JobFor
) -> None:
    """Frames that are not for the query's stream (PING, WINDOW_UPDATE) arriving first do
    not end rtt_ms: it ends at the read that delivered the response HEADERS."""
    async with stand_in(cert, "h2", h2_serve(_ok, pause=0.3)) as port:
        r = await measure(standin_job(job_for, cert, port))
    assert r.rcode == "NOERROR", r
    assert r.timestamping == "kernel"
    assert r.rtt_ms is not None and r.rtt_ms >= 300

"""The HTTP check: a site's time to first byte, phase by phase, with DNS's share of it.

Built on aiohttp, with two hooks where its tracing is too coarse:

* a connector that opens the TCP connection itself (``aiohappyeyeballs``) and only then
  lets asyncio run the TLS handshake on it, so TCP connect and TLS are timed apart
  (aiohttp's ``on_connection_create_*`` trace covers both as one);
* a response protocol that notes when the first response byte arrives, and a transport
  hook that notes when the last request byte was written (aiohttp buffers request
  headers, so ``on_request_headers_sent`` fires before anything is on the wire).

Each measurement uses a new session, connector and aiodns resolver: no keep-alive, no
DNS cache. The phases, and the two instants each lies between:

* ``dns_ms``: resolver call -> addresses returned (absent for an IP-literal URL);
* ``connect_ms``: SYN sent -> SYN-ACK received, as the kernel measured it (``TCP_INFO``
  ``tcpi_rtt``, in µs, free of event-loop delays); where the kernel has no sample (a
  retransmitted SYN, another OS) ``connect()`` -> established, timed in user space;
* ``tls_ms``: TCP established -> TLS handshake complete (https only);
* ``ttfb_ms``: last request byte written -> first response byte read;
* ``total_ms``: fetch start -> last body byte read.

Across redirects each phase is summed over the hops, as blackbox_exporter does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import socket
import ssl
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohappyeyeballs
import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.client_proto import ResponseHandler
from aiohttp.resolver import AsyncResolver

from probe import USER_AGENT, net
from probe.checks import Addresses, Check, Once, fmt_ms, ms, target_from_flags
from probe.configfile import parse_hostport
from probe.errors import HttpCheckError, classify_http
from probe.targets import HttpTarget
from probe.wire import HttpRecord

_FAMILY: Final = {4: socket.AF_INET, 6: socket.AF_INET6, None: socket.AF_UNSPEC}


@dataclass(frozen=True, slots=True, eq=False)
class HttpJob:
    """One series: one URL of one target."""

    target: HttpTarget
    kind: str = field(default="http", init=False)
    key: str = field(init=False)
    transport: str = field(init=False)  # the URL scheme
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        t = self.target
        object.__setattr__(self, "key", f"http|{t.name}|{t.url}")
        object.__setattr__(self, "transport", t.url.split(":", 1)[0].lower())
        hops = 1 + (t.max_redirects if t.follow_redirects else 0)
        # five phases per hop, each with its own timeout, but never past the next run
        object.__setattr__(self, "deadline", min(t.timeout * 5 * hops, t.interval) + 1.0)

    @property
    def interval(self) -> float:
        return self.target.interval


@dataclass(slots=True)
class _Phases:
    """What the hooks saw, summed over redirect hops."""

    phase: str = "dns"
    dns_ns: int | None = None
    connect_ns: int | None = None
    tls_ns: int | None = None
    ttfb_ns: int | None = None
    ip: str | None = None
    cert_days: float | None = None
    last_write: int | None = None  # of the current hop, while no answer byte came
    first_byte: int | None = None  # of the current hop
    transports: list[asyncio.Transport] = field(default_factory=list)

    def add(self, name: str, ns: int) -> None:
        current = getattr(self, name)
        setattr(self, name, ns if current is None else current + ns)

    def new_hop(self) -> None:
        self.last_write = self.first_byte = None


class _TimedResolver(AsyncResolver):
    """aiohttp's aiodns resolver, timed, with the phase's own timeout."""

    def __init__(self, phases: _Phases, timeout: float, nameserver: str | None) -> None:
        kwargs: dict[str, Any] = {"timeout": timeout, "tries": 1}
        if nameserver:
            host, port = parse_hostport(nameserver, 53)
            kwargs["nameservers"] = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        # keyword arguments make aiohttp create a resolver of its own rather than share
        # one (and its cache) between sessions
        super().__init__(**kwargs)
        self._phases = phases
        self._timeout = timeout

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ph = self._phases
        ph.phase = "dns"
        t0 = time.perf_counter_ns()
        try:
            async with asyncio.timeout(self._timeout + 0.5):
                result = await super().resolve(host, port, family)
        except OSError as exc:
            raise HttpCheckError("dns", f"{host}: {exc.strerror or exc}") from None
        except TimeoutError:
            raise HttpCheckError("dns", f"{host}: timed out") from None
        ph.add("dns_ns", time.perf_counter_ns() - t0)
        return result


class _TimedHandler(ResponseHandler):
    """aiohttp's response protocol, noting when the first byte of the answer arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, phases: _Phases) -> None:
        super().__init__(loop)
        self._phases = phases

    def data_received(self, data: bytes) -> None:
        ph = self._phases
        if ph.first_byte is None and ph.last_write is not None:
            ph.first_byte = time.perf_counter_ns()
            ph.add("ttfb_ns", ph.first_byte - ph.last_write)
            ph.phase = "body"
        super().data_received(data)


def _cert_days(transport: asyncio.BaseTransport) -> float | None:
    sslobj = transport.get_extra_info("ssl_object")
    cert = sslobj.getpeercert() if sslobj is not None else None
    if not cert or "notAfter" not in cert:
        return None  # not verified: the certificate was not decoded
    return round((ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400, 3)


def _hook_writes(transport: asyncio.Transport, phases: _Phases) -> None:
    """Note the instant of each write until the first answer byte (TTFB's start)."""
    write, writelines = transport.write, transport.writelines

    def timed_write(data: Any) -> None:
        write(data)
        if phases.first_byte is None:
            phases.last_write = time.perf_counter_ns()

    def timed_writelines(data: Any) -> None:
        writelines(data)
        if phases.first_byte is None:
            phases.last_write = time.perf_counter_ns()

    transport.write = timed_write  # type: ignore[method-assign]
    transport.writelines = timed_writelines  # type: ignore[method-assign,assignment]


class _PhaseConnector(aiohttp.TCPConnector):
    """TCP connect and TLS handshake as two timed steps, each with its own timeout."""

    def __init__(self, phases: _Phases, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._phases = phases
        self._phase_timeout = timeout

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: Any,
        timeout: Any,  # noqa: ASYNC109 - aiohttp's signature; the phases have their own
        client_error: Any = None,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        ph = self._phases
        ph.new_hop()
        ph.phase = "connect"
        loop = self._loop
        t0 = time.perf_counter_ns()
        try:
            async with asyncio.timeout(self._phase_timeout):
                sock = await aiohappyeyeballs.start_connection(
                    addr_infos=addr_infos,
                    local_addr_infos=self._local_addr_infos,
                    happy_eyeballs_delay=self._happy_eyeballs_delay,
                    interleave=self._interleave,
                    loop=loop,
                )
        except OSError as exc:
            raise classify_http(exc, "connect") from None
        t1 = time.perf_counter_ns()
        ph.add("connect_ns", net.kernel_connect_ns(sock) or t1 - t0)
        ph.ip = sock.getpeername()[0]
        sslctx = kwargs.get("ssl")
        ph.phase = "tls" if sslctx else "ttfb"
        try:
            async with asyncio.timeout(self._phase_timeout):
                transport, proto = await loop.create_connection(
                    functools.partial(_TimedHandler, loop, ph),
                    sock=sock,
                    ssl=sslctx,
                    server_hostname=kwargs.get("server_hostname"),
                )
        except BaseException:
            sock.close()
            raise
        ph.transports.append(transport)
        if sslctx:
            ph.add("tls_ns", time.perf_counter_ns() - t1)
            ph.cert_days = _cert_days(transport)
        ph.phase = "ttfb"
        _hook_writes(transport, ph)
        return transport, proto


def _record(job: HttpJob, ts: int, ph: _Phases, **fields: Any) -> HttpRecord:
    t = job.target
    ip = ph.ip
    return HttpRecord(
        ts=ts,
        target=t.name,
        url=t.url,
        ip=ip,
        dns_ms=ms(ph.dns_ns),
        connect_ms=ms(ph.connect_ns),
        tls_ms=ms(ph.tls_ns),
        ttfb_ms=ms(ph.ttfb_ns),
        cert_days=ph.cert_days,
        topology=t.topology,
        provider=t.provider or None,
        family=(6 if ":" in ip else 4) if ip else None,
        **fields,
    )


def failure(job: HttpJob, exc: BaseException, ts: int) -> HttpRecord:
    """The record of a fetch that did not get as far as a response (no phases known)."""
    err = classify_http(exc, "timeout" if isinstance(exc, TimeoutError) else "http")
    return _record(job, ts, _Phases(), error=err.error)


async def _read_body(resp: aiohttp.ClientResponse, t: HttpTarget, got: list[int]) -> bytes:
    """The body as it arrives, its size counted in ``got[0]``; kept only when
    ``body_regex`` needs it. Past ``max_body_bytes`` it is an error, and nothing more is
    read: a page that never ends (or is larger than any page should be) costs the probe
    no more memory or time than that."""
    keep = t.body_regex is not None
    parts: list[bytes] = []
    async for chunk in resp.content.iter_any():
        got[0] += len(chunk)
        if got[0] > t.max_body_bytes:
            raise HttpCheckError(
                "body", f"more than {t.max_body_bytes} bytes (max_body_bytes); not read further"
            )
        if keep:
            parts.append(chunk)
    return b"".join(parts)


def _check(t: HttpTarget, status: int, body: bytes) -> None:
    if t.expect_status:
        if status not in t.expect_status:
            raise HttpCheckError("status", f"got {status}, expected one of {t.expect_status}")
    elif not 200 <= status <= 299:
        raise HttpCheckError("status", f"got {status}, expected 2xx")
    if t.body_regex is not None and not re.search(t.body_regex, body.decode("utf-8", "replace")):
        raise HttpCheckError("body", f"no match for {t.body_regex!r}")


async def measure(job: HttpJob) -> HttpRecord:
    """Fetch ``job``'s URL once on new connections and return the phases."""
    t = job.target
    ph = _Phases()
    ts = time.time_ns()
    t0 = time.perf_counter_ns()
    status: int | None = None
    total: int | None = None
    body = b""
    got = [0]  # body bytes read
    redirects: int | None = None
    version: str | None = None
    resolver = _TimedResolver(ph, t.timeout, t.resolver)
    connector = _PhaseConnector(
        ph,
        t.timeout,
        resolver=resolver,
        use_dns_cache=False,
        force_close=True,  # a new connection for every request, redirects included
        family=_FAMILY[t.family],
        ssl=net.tls_context(t.tls_ca, t.tls_verify, ("http/1.1",)),
    )
    try:
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=t.timeout),
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
        ) as session:
            try:
                async with session.request(
                    t.method,
                    t.url,
                    allow_redirects=t.follow_redirects,
                    max_redirects=t.max_redirects,
                ) as resp:
                    status = resp.status
                    redirects = len(resp.history)
                    version = f"{resp.version.major}.{resp.version.minor}" if resp.version else None
                    body = await _read_body(resp, t, got)
                total = time.perf_counter_ns() - t0
                _check(t, status, body)
            finally:
                await resolver.close()
                # the fetch is timed; a graceful TLS close could outlive the session (and
                # the event loop), so every connection this fetch opened ends here
                for transport in ph.transports:
                    transport.abort()
    except aiohttp.TooManyRedirects as exc:
        err = HttpCheckError("http", f"more than {t.max_redirects} redirects")
        redirects = len(exc.history)
        return _record(job, ts, ph, status=status, redirects=redirects, error=err.error)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        err = HttpCheckError(
            "body" if ph.phase == "body" else "http", str(exc) or type(exc).__name__
        )
        return _record(job, ts, ph, status=status, redirects=redirects, error=err.error)
    except aiohttp.ClientError as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        err = classify_http(cause if isinstance(cause, OSError | ssl.SSLError) else exc, ph.phase)
        return _record(job, ts, ph, status=status, redirects=redirects, error=err.error)
    except (HttpCheckError, OSError, TimeoutError) as exc:
        err = classify_http(exc, ph.phase)
        kwargs: dict[str, Any] = {}
        if err.kind in ("status", "body"):  # the fetch completed, or its body was cut
            kwargs = {"total_ms": ms(total), "bytes": got[0], "http_version": version}
        return _record(job, ts, ph, status=status, redirects=redirects, error=err.error, **kwargs)
    return _record(
        job,
        ts,
        ph,
        status=status,
        total_ms=ms(total),
        bytes=got[0],
        redirects=redirects,
        http_version=version,
    )


# --------------------------------------------------------------------------- the seam


def _row(r: HttpRecord) -> list[str]:
    return [
        r.ip or "-",
        "-" if r.status is None else str(r.status),
        fmt_ms(r.dns_ms),
        fmt_ms(r.connect_ms),
        fmt_ms(r.tls_ms),
        fmt_ms(r.ttfb_ms),
        fmt_ms(r.total_ms),
        "-" if r.bytes is None else str(r.bytes),
        "-" if r.redirects is None else str(r.redirects),
        r.error or "",
    ]


def _summary(records: Sequence[HttpRecord]) -> str:
    ok = [r for r in records if r.error is None]
    line = f"{len(records)} fetches, {len(ok)} ok, {len(records) - len(ok)} failed"
    done = [r for r in ok if r.ttfb_ms is not None]
    if not done:
        return line

    def med(name: str) -> float:
        return statistics.median(getattr(r, name) or 0.0 for r in done)

    line += (
        f"; median ms: dns {med('dns_ms'):.3f} connect {med('connect_ms'):.3f} "
        f"tls {med('tls_ms'):.3f} ttfb {med('ttfb_ms'):.3f} total {med('total_ms'):.3f}"
    )
    if all(r.dns_ms is None for r in done):
        return line + "; no DNS phase (the URL's host is an IP address)"
    to_first_byte = med("dns_ms") + med("connect_ms") + med("tls_ms") + med("ttfb_ms")
    if to_first_byte > 0:
        line += f"; DNS is {100 * med('dns_ms') / to_first_byte:.1f}% of time to first byte"
    return line


def _add_arguments(once: argparse.ArgumentParser) -> None:
    web = once.add_argument_group("page fetches (--https URL without --qname)")
    web.add_argument(
        "--resolver",
        metavar="IP[:PORT]",
        help="resolver or nameserver for the DNS phase (default: the system's)",
    )
    web.add_argument(
        "--method",
        default="GET",
        type=str.upper,
        choices=["GET", "HEAD"],
        help="request method (default GET)",
    )
    web.add_argument(
        "--expect",
        type=int,
        action="append",
        metavar="STATUS",
        help="a status that counts as success (repeat it; default any 2xx)",
    )
    web.add_argument("--body-regex", metavar="RE", help="the body must match this")
    web.add_argument("--no-redirects", action="store_true", help="do not follow redirects")
    web.add_argument(
        "--max-redirects", type=int, default=10, help="redirects to follow at most (default 10)"
    )


def _once_target(args: argparse.Namespace) -> HttpTarget:
    spec: dict[str, Any] = {
        "kind": "http",
        "name": "once",
        "topology": "unicast",
        "url": args.https,
        "method": args.method,
        "expect_status": args.expect or [],
        "body_regex": args.body_regex,
        "follow_redirects": not args.no_redirects,
        "max_redirects": args.max_redirects,
        "interval": args.run_interval,
        "timeout": args.timeout,
        "family": args.families[0] if len(args.families) == 1 else None,
        "resolver": args.resolver,
        "tls_ca": args.tls_ca,
        "tls_verify": not args.insecure,
    }
    return target_from_flags(spec, HttpTarget)


def _jobs(target: HttpTarget, addresses: Addresses) -> list[HttpJob]:
    return [HttpJob(target)]  # the fetch resolves the URL's host itself (the dns phase)


CHECK: Final = Check[HttpTarget, HttpJob, HttpRecord](
    kind="http",
    target_type=HttpTarget,
    record_type=HttpRecord,
    host=lambda t: None,
    jobs=_jobs,
    measure=measure,
    failure=failure,
    outcome=lambda r: r.error.split(":", 1)[0] if r.error else str(r.status),
    answered=lambda r: r.error is None,
    columns=(
        ("ip", 16),
        ("status", 6),
        ("dns_ms", 9),
        ("conn_ms", 9),
        ("tls_ms", 9),
        ("ttfb_ms", 9),
        ("total_ms", 9),
        ("bytes", 8),
        ("redir", 5),
        ("error", 0),
    ),
    row=_row,
    summary=_summary,
    once=Once(
        add_arguments=_add_arguments,
        wanted=lambda args: bool(args.https) and args.qname is None,
        target=_once_target,
        hint="--https URL (without --qname)",
    ),
)

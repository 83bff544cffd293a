"""Socket I/O with kernel timestamps: the part of the probe that decides what ``rtt_ms`` is.

On Linux every socket asks for ``SO_TIMESTAMPING`` software stamps:

* the TX stamp is taken by the kernel when the query is handed to the network device and is
  read back from the socket's error queue (``MSG_ERRQUEUE``);
* the RX stamp is taken when the answer enters the network stack and arrives as
  ``recvmsg`` ancillary data.

So ``rtt_ns = rx_stamp - tx_stamp`` does not include event-loop latency on either side.
Where either stamp is missing (another OS, a kernel that refuses the option, or the first
packet before the kernel turned stamping on) the exchange falls back to
``time.perf_counter_ns()`` taken around ``send`` and ``recvmsg``, and says so in
:attr:`Exchange.kernel`.

One :class:`UdpFlow` is one connected UDP socket: the kernel drops datagrams from other
addresses, and an ICMP port unreachable surfaces as ``ECONNREFUSED``. DNS measurements
take flows from a :class:`UdpPool`, which reuses a flow for up to ``UDP_REUSE``
measurements, one at a time, and then replaces it, so source ports still rotate; each TX
stamp is keyed to its send (``SOF_TIMESTAMPING_OPT_ID``). With ``proto`` a flow is an
ICMP echo ("ping") socket instead, one per measurement, stamped the same way. Nothing
here retries.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import select
import socket
import ssl
import struct
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from probe.resources import AsyncClosing

# <linux/net_tstamp.h>; SO_TIMESTAMPING(_OLD) is 37 on every Linux architecture Python runs
# on except a few old ones (parisc, sparc, alpha) that we do not support for kernel stamps.
SO_TIMESTAMPING: Final = 37
SOF_TIMESTAMPING_TX_SOFTWARE: Final = 1 << 1
SOF_TIMESTAMPING_RX_SOFTWARE: Final = 1 << 3
SOF_TIMESTAMPING_SOFTWARE: Final = 1 << 4
SOF_TIMESTAMPING_OPT_ID: Final = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY: Final = 1 << 11
_FLAGS: Final = (
    SOF_TIMESTAMPING_TX_SOFTWARE
    | SOF_TIMESTAMPING_RX_SOFTWARE
    | SOF_TIMESTAMPING_SOFTWARE
    | SOF_TIMESTAMPING_OPT_ID
    | SOF_TIMESTAMPING_OPT_TSONLY
)
_ANCBUF: Final = 256
_MAX_DATAGRAM: Final = 65535
_SUPPORTED: Final = sys.platform == "linux"
_NONBLOCK: Final = getattr(socket, "SOCK_NONBLOCK", 0)  # saves a syscall per socket

_keeper: socket.socket | None = None


def kernel_timestamping_available() -> bool:
    """True when this process can get kernel TX and RX software timestamps."""
    return _keeper is not None or warm_up()


def warm_up(wait: float = 0.5) -> bool:
    """Turn kernel RX stamping on for the life of the process, and wait until it is on.

    Linux switches RX stamping on lazily (a deferred static key) when the first socket
    asks for it, so datagrams that arrive just after that carry no stamp. A socket that
    keeps the option set for as long as the process lives keeps stamping on; this sends
    datagrams to itself until one comes back stamped, or ``wait`` seconds pass.
    """
    global _keeper
    if _keeper is not None:
        return True
    if not _SUPPORTED:
        return False
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _FLAGS)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
    except OSError:
        sock.close()
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            sock.sendto(b"warm-up", sock.getsockname())
            _, anc, _, _ = sock.recvmsg(16, _ANCBUF)
        except OSError:
            continue
        if _stamp(anc) is not None:
            break
        time.sleep(0.002)
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # stamps of the warm-up sends
        while True:
            sock.recvmsg(0, _ANCBUF, socket.MSG_ERRQUEUE)
    _keeper = sock
    atexit.register(sock.close)
    return True


def _enable(sock: socket.socket) -> bool:
    if not warm_up():
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _FLAGS)
    except OSError:
        return False
    return True


def _stamp(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The software timestamp (epoch ns) in ``struct scm_timestamping``, if any."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
            sec, nsec = struct.unpack_from("@qq", data)
            if sec or nsec:
                return int(sec * 1_000_000_000 + nsec)
    return None


_TCP_INFO_RTT: Final = 68  # offsetof(struct tcp_info, tcpi_rtt), µs
_TCP_INFO_TOTAL_RETRANS: Final = 100  # offsetof(struct tcp_info, tcpi_total_retrans)


def kernel_connect_ns(sock: socket.socket) -> int | None:
    """The kernel's RTT sample of the handshake (SYN -> SYN-ACK), if it took one.

    Right after connect the smoothed RTT is the first and only sample, the handshake's.
    Karn's rule leaves no sample when the SYN was retransmitted: then None.
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
    except OSError:
        return None
    if len(info) < 104:
        return None
    rtt_us, retrans = (
        int.from_bytes(info[o : o + 4], sys.byteorder)
        for o in (_TCP_INFO_RTT, _TCP_INFO_TOTAL_RETRANS)
    )
    return rtt_us * 1000 if rtt_us and not retrans else None


@functools.lru_cache(maxsize=256)
def tls_context(ca: str | None, verify: bool, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """The client TLS context of every check: the CA bundle ``ca`` (the system store if
    None), verification on or off, offering the ALPN protocols ``alpn`` in order."""
    ctx = ssl.create_default_context(cafile=ca)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


class _Reactor:
    """One epoll set for the probe's short-lived UDP sockets, watched by the event loop.

    asyncio's ``add_reader`` plus ``remove_reader`` cost about 8.5 µs per socket (it raises
    and catches a KeyError for every new descriptor), against about 1 µs for a register and
    unregister on an epoll set of our own (measured here, 2026-11, CPython 3.11); a socket
    per measurement pays that every time. Here each socket is one ``epoll_ctl`` on a
    private epoll set whose own descriptor the event loop watches once. Elsewhere than
    Linux the loop's own methods are used.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: the loop holds this reactor (through its reader callback), not the
        # other way round, so a finished loop can be collected and takes this with it
        self._loop = weakref.ref(loop)
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._epoll: select.epoll | None = None
        if hasattr(select, "epoll"):
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._ready)
            weakref.finalize(loop, self._epoll.close)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None
        return loop

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        if self._epoll is None:
            self._get_loop().add_reader(fd, callback)
            return
        self._callbacks[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self._epoll is None:
            self._get_loop().remove_reader(fd)
            return
        if self._callbacks.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):  # ValueError: the epoll is closed
                self._epoll.unregister(fd)

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _events in self._epoll.poll(0, 1024):
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback()


_reactors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reactor] = (
    weakref.WeakKeyDictionary()
)


def _reactor(loop: asyncio.AbstractEventLoop) -> _Reactor:
    r = _reactors.get(loop)
    if r is None:
        r = _reactors[loop] = _Reactor(loop)
    return r


@dataclass(slots=True, frozen=True)
class Exchange:
    """One timed query/answer exchange."""

    data: bytes
    #: epoch ns of the send: the kernel TX stamp, or ``time.time_ns()`` just before send
    sent_ns: int
    #: query leaving -> answer arriving, in ns (kernel stamps, or perf_counter around I/O)
    rtt_ns: int
    #: True when both ends of ``rtt_ns`` are kernel timestamps
    kernel: bool
    #: datagrams that arrived on the flow and were not the answer (wrong ID or question)
    ignored: int = 0


class _Stamped(AsyncClosing):
    """Shared parts of a timestamped socket: error-queue draining and readiness waits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.kernel = _enable(sock)
        self._tx: int | None = None

    def _drain_errqueue(self) -> None:
        """Read TX stamps from the error queue until it is empty; keep the latest.

        A stream write split over several sends leaves one stamp per send, and the last
        byte's is the one that counts; an unread stamp would also keep the socket
        signalling readiness.
        """
        if not self.kernel:
            return
        while True:
            try:
                _, anc, _, _ = self.sock.recvmsg(0, _ANCBUF, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # an asynchronous socket error is reported by the next normal recv
                return
            stamp = _stamp(anc)
            if stamp is not None:
                self._tx = stamp

    def close(self) -> None:
        self.sock.close()


def _expire(fut: asyncio.Future[tuple[bytes, int | None, int]]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _tx_key(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The ``SOF_TIMESTAMPING_OPT_ID`` key of a TX stamp read from the error queue: the
    number of datagrams the socket had sent before the one stamped (``ee_data`` of the
    ``sock_extended_err`` that comes with it). None if the message carries no extended
    error at all, -1 if it is not a timestamp's."""
    for level, kind, data in ancdata:
        if kind == _RECVERR.get(level) and len(data) >= 16:
            origin, key = data[4], int.from_bytes(data[12:16], sys.byteorder)
            return key if origin == _SO_EE_ORIGIN_TIMESTAMPING else -1
    return None


# <linux/in.h> IP_RECVERR, <linux/in6.h> IPV6_RECVERR, <linux/errqueue.h>
_RECVERR: Final = {socket.IPPROTO_IP: 11, socket.IPPROTO_IPV6: 25}
_SO_EE_ORIGIN_TIMESTAMPING: Final = 4


class UdpFlow(_Stamped):
    """A connected UDP socket to one server: the kernel drops datagrams from any other
    address and an ICMP port unreachable surfaces as ``ECONNREFUSED``.

    A second exchange on the same flow (a CHAOS identity query after the timed query)
    keeps the 5-tuple, so ECMP and anycast routing send it to the same site. A flow from
    :class:`UdpPool` carries several measurements in turn, never two at once; each TX
    stamp is keyed to its send (``SOF_TIMESTAMPING_OPT_ID``), so a stamp left from an
    earlier exchange is never taken for this one's.
    """

    def __init__(self, family: socket.AddressFamily, addr: tuple[str, int], proto: int = 0) -> None:
        # proto IPPROTO_ICMP / IPPROTO_ICMPV6: an unprivileged ping socket (the kernel picks
        # the echo ID; the peer is (address, 0), as recvmsg reports a reply's source)
        sock = socket.socket(family, socket.SOCK_DGRAM | _NONBLOCK, proto)
        try:
            if not _NONBLOCK:
                sock.setblocking(False)
            super().__init__(sock)
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        self.peer = addr  # callers give the address in the kernel's (compressed) form
        #: datagrams sent: the OPT_ID key the kernel gives the next send's TX stamp
        self.sends = 0
        #: measurements this flow has carried (a pool's count, for its rotation)
        self.uses = 0
        #: query IDs this flow has carried; a caller keeps a new one out of them, so that
        #: a late answer to an earlier query can never match a later one
        self.ids: set[int] = set()
        #: the reactor this flow stays registered with between exchanges (pooled), if any
        self._reactor: _Reactor | None = None
        self._fut: asyncio.Future[tuple[bytes, int | None, int]] | None = None
        self._accept: Callable[[bytes], bool] = bool
        self._ignored = 0
        #: something arrived while no exchange was waiting: a late answer or a late error
        self.stale = False

    def _take_tx(self, key: int) -> None:
        """Read the error queue up to the TX stamp of send number ``key`` (older ones are
        dropped); on loopback it is there as soon as ``send`` returns."""
        if not self.kernel:
            return
        while True:
            try:
                _, anc, _, _ = self.sock.recvmsg(0, _ANCBUF, socket.MSG_ERRQUEUE)
            except OSError:  # empty (BlockingIOError), or an error the next recv reports
                return
            stamp = _stamp(anc)
            if stamp is not None:
                k = _tx_key(anc)
                if k is None or k == key:
                    self._tx = stamp
                    return

    def _on_readable(self) -> None:
        fut = self._fut
        if fut is None:  # between exchanges: whatever came is late, and spoils the flow
            self.stale = True
            self._discard_all()
            return
        if self._tx is None:
            self._take_tx(self.sends - 1)
        sock, accept = self.sock, self._accept
        while not fut.done():
            try:
                data, anc, _flags, src = sock.recvmsg(_MAX_DATAGRAM, _ANCBUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                fut.set_exception(exc)
                return
            t_user = time.perf_counter_ns()
            if src[:2] != self.peer or not accept(data):
                self._ignored += 1
                continue
            fut.set_result((data, _stamp(anc), t_user))

    def _discard_all(self) -> None:
        """Empty both queues of an idle flow (level-triggered epoll would call again)."""
        for flags in (socket.MSG_ERRQUEUE, 0):
            errors = 0
            while errors < 2:
                try:
                    self.sock.recvmsg(_MAX_DATAGRAM, _ANCBUF, flags)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # a pending socket error, cleared by reading it: read on
                    errors += 1

    async def exchange(
        self, wire: bytes, accept: Callable[[bytes], bool], deadline: float
    ) -> Exchange:
        """Send one datagram and wait for the first answer that ``accept`` takes.

        Datagrams that ``accept`` rejects (wrong ID, wrong question) are counted and
        ignored, as a stub resolver must; the wait goes on until ``deadline`` (event-loop
        time), then ``TimeoutError``. Raises ``OSError`` (e.g. ``ECONNREFUSED`` after an
        ICMP port unreachable). This is the hot path: one timer handle rather than an
        ``asyncio.timeout`` scope, and no exception on the way of a normal answer.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[bytes, int | None, int]] = loop.create_future()
        self._fut, self._accept, self._ignored, self._tx = fut, accept, 0, None
        reactor = self._reactor
        if reactor is None:  # a flow of its own: watched for this exchange only
            reactor = _reactor(loop)
            reactor.add(self.sock.fileno(), self._on_readable)
        timer = loop.call_at(deadline, _expire, fut)
        try:
            key = self.sends
            sent_wall = time.time_ns()
            t_send = time.perf_counter_ns()
            self.sock.send(wire)
            self.sends = key + 1
            self._take_tx(key)
            data, rx, t_recv = await fut
            if rx is not None and self._tx is None:
                self._take_tx(key)
        finally:
            timer.cancel()
            self._fut = None
            if self._reactor is None:
                reactor.remove(self.sock.fileno())
        tx = self._tx
        if self.kernel and rx is not None and tx is not None and rx >= tx:
            return Exchange(data, tx, rx - tx, True, self._ignored)
        return Exchange(data, sent_wall, t_recv - t_send, False, self._ignored)

    def close(self) -> None:
        if self._reactor is not None:
            self._reactor.remove(self.sock.fileno())
            self._reactor = None
        self.sock.close()


class UdpPool:
    """Connected UDP flows kept between measurements, per server address and port.

    A fresh socket per query costs about a quarter of a UDP measurement (socket, stamping
    option, connect, epoll registration, close). A pooled flow is taken by one
    measurement at a time and given back when it ends cleanly; it carries at most
    ``max_uses`` measurements, so source ports still rotate, and waits at most
    ``idle_s`` seconds for the next one. A flow that failed (timeout, ICMP error,
    malformed answer) is closed, not given back, and so is one on which anything arrived
    while it was idle (a late answer): the next measurement starts on a clean socket.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_uses: int, idle_s: float, max_idle: int
    ) -> None:
        self._loop = weakref.ref(loop)  # the loop holds the pool, not the other way round
        self.max_uses = max_uses
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[tuple[float, UdpFlow]]] = {}
        self._n_idle = 0
        self._next_sweep = 0.0
        #: flows retired because something arrived on them while idle
        self.stale = 0

    def acquire(self, family: socket.AddressFamily, addr: tuple[str, int]) -> UdpFlow:
        """An idle flow to ``addr``, the most recently used, or a new one."""
        idle = self._idle.get(addr)
        if idle:
            cutoff = time.monotonic() - self.idle_s
            while idle:
                released, flow = idle.pop()
                self._n_idle -= 1
                if flow.stale:
                    self.stale += 1
                elif released >= cutoff:
                    return flow
                flow.close()
        flow = UdpFlow(family, addr)
        loop = self._loop()
        if self.max_uses > 1 and loop is not None:
            try:
                reactor = _reactor(loop)
                reactor.add(flow.sock.fileno(), flow._on_readable)
            except BaseException:
                flow.close()
                raise
            flow._reactor = reactor
        return flow

    def release(self, flow: UdpFlow, clean: bool) -> None:
        """Give ``flow`` back after a measurement; ``clean`` when it ended in an answer."""
        now = time.monotonic()  # the event loop's clock
        if now >= self._next_sweep:
            self._sweep(now)
        flow.uses += 1
        if (
            not clean
            or flow.stale
            or flow.uses >= self.max_uses
            or self._n_idle >= self.max_idle
            or flow._reactor is None
        ):
            if flow.stale:
                self.stale += 1
            flow.close()
            return
        self._idle.setdefault(flow.peer, []).append((now, flow))
        self._n_idle += 1

    def _sweep(self, now: float) -> None:
        """Close flows idle longer than ``idle_s``; runs at most once per ``idle_s``."""
        self._next_sweep = now + self.idle_s
        cutoff = now - self.idle_s
        for addr in list(self._idle):
            idle = self._idle[addr]
            keep = [(t, f) for t, f in idle if t >= cutoff and not f.stale]
            for t, f in idle:
                if t < cutoff or f.stale:
                    self.stale += f.stale
                    f.close()
            self._n_idle -= len(idle) - len(keep)
            if keep:
                self._idle[addr] = keep
            else:
                del self._idle[addr]

    def close(self) -> None:
        for idle in self._idle.values():
            for _, flow in idle:
                flow.close()
        self._idle.clear()
        self._n_idle = 0


#: a pooled flow carries this many measurements before its socket (and source port) is
#: replaced; bench/throughput.py --reuse measures the choice
UDP_REUSE: Final = 16
#: and waits this long, idle, for the next one
UDP_IDLE_S: Final = 2.0
#: idle flows kept at most, over all servers (each is a file descriptor)
UDP_MAX_IDLE: Final = 256

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UdpPool] = weakref.WeakKeyDictionary()


def udp_pool(loop: asyncio.AbstractEventLoop | None = None) -> UdpPool:
    """The running loop's pool of UDP flows (made on first use, closed with the loop)."""
    loop = loop or asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = UdpPool(loop, UDP_REUSE, UDP_IDLE_S, UDP_MAX_IDLE)
        weakref.finalize(loop, pool.close)
    return pool


class StreamConn(_Stamped):
    """A TCP connection, optionally with TLS done through memory BIOs.

    TLS runs over :class:`ssl.MemoryBIO` rather than an ``SSLSocket`` so that every read
    is our own ``recvmsg`` and still carries the kernel RX stamp. ``connect_ns`` and
    ``tls_ns`` are user-space intervals (perf_counter around the non-blocking connect and
    the handshake); the query exchange itself is timed with kernel stamps.
    """

    def __init__(self, family: socket.AddressFamily) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.kernel = False
        self._tx = None
        self._tls: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._pending = bytearray()  # decrypted or raw bytes read but not yet consumed
        self._pending_stamp: int | None = None
        self._pending_user: int = 0
        self.connect_ns: int | None = None
        self.tls_ns: int | None = None

    async def connect(self, addr: tuple[str, int]) -> None:
        """TCP connect; ``connect_ns`` lies between ``connect()`` and the SYN-ACK's ACK."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter_ns()
        await loop.sock_connect(self.sock, addr)
        self.connect_ns = time.perf_counter_ns() - t0

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str | None) -> None:
        """TLS handshake; ``tls_ns`` lies between sending ClientHello and the last flight."""
        self._tls = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        t0 = time.perf_counter_ns()
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush_tls()
                data, _, _ = await self._recv_raw(65536)
                if not data:
                    raise EOFError("closed during TLS handshake") from None
                self._in.write(data)
        await self._flush_tls()
        self.tls_ns = time.perf_counter_ns() - t0

    async def _flush_tls(self) -> None:
        data = self._out.read()
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        fd = self.sock.fileno()
        loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            loop.remove_reader(fd)

    async def _recv_raw(self, size: int) -> tuple[bytes, int | None, int]:
        """One ``recvmsg``: data, its kernel RX stamp and the perf_counter instant."""
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(size, _ANCBUF)
            except (BlockingIOError, InterruptedError):
                self._drain_errqueue()
                await self._readable()
                continue
            return data, _stamp(anc), time.perf_counter_ns()

    async def _read_some(self, size: int = 65536) -> tuple[bytes, int | None, int]:
        """The next application bytes (decrypted under TLS) with the stamp that brought them.

        For plain TCP the first read after a send asks for one byte, so its stamp is the
        stamp of the first segment of the answer, not of a later one (Linux stamps a TCP
        read with the last segment it copied from).
        """
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            return data, self._pending_stamp, self._pending_user
        if self._tls is None:
            data, stamp, t_user = await self._recv_raw(size)
            if not data:
                raise EOFError("connection closed before the answer")
            return data, stamp, t_user
        while True:
            try:
                data = self._tls.read(65536)
            except ssl.SSLWantReadError:
                raw, stamp, t_user = await self._recv_raw(65536)
                if not raw:
                    raise EOFError("connection closed before the answer") from None
                self._in.write(raw)
                self._pending_stamp, self._pending_user = stamp, t_user
                continue
            except ssl.SSLZeroReturnError:
                raise EOFError("TLS close_notify before the answer") from None
            if not data:
                raise EOFError("connection closed before the answer")
            return data, self._pending_stamp, self._pending_user

    @property
    def alpn(self) -> str | None:
        """The application protocol the server chose by ALPN; None without TLS or ALPN."""
        return None if self._tls is None else self._tls.selected_alpn_protocol()

    async def send(self, payload: bytes, *, timed: bool = True) -> tuple[int, int]:
        """Write ``payload`` (encrypted under TLS) at once; return (wall ns, perf ns) before it.

        A ``timed`` write starts a timed exchange: kernel stamping is switched on if it is not
        yet, and earlier TX stamps are forgotten, so that :meth:`timed` gets this write's.
        An untimed write is setup (the HTTP/2 connection preface) that no interval starts at.
        """
        if timed:
            if _SUPPORTED and not self.kernel:
                # switched on only now, so the handshake's segments leave no TX stamps behind
                self.kernel = _enable(self.sock)
            self._tx = None
        if self._tls is not None:
            self._tls.write(payload)
            wire = self._out.read()
        else:
            wire = payload
        sent_wall = time.time_ns()
        t_send = time.perf_counter_ns()
        n = self.sock.send(wire)
        if n < len(wire):
            await asyncio.get_running_loop().sock_sendall(self.sock, wire[n:])
        if timed:
            self._drain_errqueue()
        return sent_wall, t_send

    async def read_some(self) -> tuple[bytes, int | None, int]:
        """The next application bytes, the kernel RX stamp of the read that brought them
        (None if it had none) and the perf_counter instant of that read.

        Under TLS the stamp is that of the ``recvmsg`` that completed the TLS record; raises
        ``EOFError`` when the peer closes.
        """
        return await self._read_some()

    def timed(self, data: bytes, sent: tuple[int, int], rx: int | None, t_recv: int) -> Exchange:
        """The :class:`Exchange` of an answer ``data`` to the last timed :meth:`send`.

        ``sent`` is what that send returned; ``rx`` and ``t_recv`` come from the read that
        delivered the answer's first bytes. ``rtt_ns`` lies between the kernel TX stamp of
        the write and that RX stamp, or else between the two perf_counter instants.
        Call it before writing anything else: the latest TX stamp is taken as the request's.
        """
        self._drain_errqueue()
        tx = self._tx
        if self.kernel and rx is not None and tx is not None and rx >= tx:
            return Exchange(data, tx, rx - tx, True)
        return Exchange(data, sent[0], t_recv - sent[1], False)

    async def exchange(self, payload: bytes, frame_len: Callable[[bytes], int | None]) -> Exchange:
        """Send ``payload`` in one write; read until ``frame_len(buffer)`` bytes are here.

        ``rtt_ns`` lies between the kernel TX stamp of the write and the RX stamp of the
        first segment that carried answer bytes.
        """
        sent = await self.send(payload)
        buf, rx, t_recv = await self._read_some(1)
        need = frame_len(buf)
        while need is None or len(buf) < need:
            more, _, _ = await self._read_some()
            buf += more
            need = frame_len(buf)
        if need < len(buf):
            self._pending[:0] = buf[need:]
            buf = buf[:need]
        return self.timed(buf, sent, rx, t_recv)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

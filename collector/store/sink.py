"""Where points go: a small ``Sink`` protocol, and the InfluxDB sinks (v1 and v2 APIs).

A write InfluxDB answers is stored, refused (``SinkRefused``: retrying the same lines
will not help) or not taken now (``SinkUnavailable``: retry later). Refused are a 4xx
that says something against the lines (400, 413, 422; not 401, 403, 404, 408, 429), a
partial write, and an answer aiohttp cannot even parse: InfluxDB echoes a refused line
in its ``X-Influxdb-Error`` header, and a control character there makes the header
invalid. What to do with a refusal (split the body, set bad lines aside) is
``collector.store.spool``'s business.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from typing import Any, Final, Protocol

import aiohttp

from collector.store import metrics

log = logging.getLogger("popwatch.collector.store.sink")

#: the most one write to InfluxDB carries; InfluxDB 1.x refuses bodies over its
#: ``max-body-size`` (25 MB by default) with a 413
MAX_WRITE_BYTES: Final = 8 * 1024 * 1024


class SinkUnavailable(Exception):
    """The store cannot take points now; the batch is not accepted (503)."""


class SinkRefused(SinkUnavailable):
    """The store refuses these points (not a pause): writing the same lines again will
    not help. ``partial``: InfluxDB stored the others (a partial write); ``dropped``: how
    many it refused, when it says so."""

    def __init__(self, reason: str, partial: bool = False, dropped: int | None = None) -> None:
        super().__init__(reason)
        self.partial = partial
        self.dropped = dropped


class Sink(Protocol):
    """A store of line protocol. ``write`` takes a body of whole lines, each ending in a
    newline (see ``encode``), so the bytes made once are what InfluxDB and the spool get.
    ``problems`` says why writes do not go through now (empty when they do)."""

    async def start(self) -> None: ...

    async def write(self, body: bytes) -> None: ...

    async def ready(self) -> bool: ...

    def problems(self) -> list[str]: ...

    async def close(self) -> None: ...


def redact(url: str) -> str:
    """``url`` without a password (``user:***@host``), for logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def encode(lines: list[str]) -> bytes:
    """A write body: the lines, each ending in a newline."""
    return ("\n".join(lines) + "\n").encode() if lines else b""


def points(body: bytes) -> int:
    """How many points a write body holds."""
    return body.count(b"\n")


_DROPPED = re.compile(r"dropped=(\d+)")
#: answers that say nothing against the lines: credentials, a database gone (created
#: again on the next write), a timeout, slow down. The points wait in the spool.
_NOT_THE_LINES: Final = frozenset({401, 403, 404, 408, 429})


def _printable(text: str, limit: int = 300) -> str:
    """``text`` on one line, control characters shown as ``\\xNN``, cut at ``limit``."""
    text = text.strip()[:limit]
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _verdict(status: int, text: str) -> None:
    """Returns when InfluxDB stored the points; raises what to do otherwise."""
    if status in (200, 204):
        return
    if status in (400, 422) and "partial write" in text:
        # InfluxDB kept the other points; these do not parse or conflict with the schema
        metrics.POINTS_REFUSED.inc()
        m = _DROPPED.search(text)
        raise SinkRefused(
            f"InfluxDB write: HTTP {status}: {_printable(text)}",
            partial=True,
            dropped=int(m.group(1)) if m and int(m.group(1)) > 0 else None,
        )
    what = f"InfluxDB write: HTTP {status}: {_printable(text, 200)}"
    if 400 <= status < 500 and status not in _NOT_THE_LINES:
        raise SinkRefused(what)  # 413 too: the writes are split until they fit
    raise SinkUnavailable(what)


def _unreadable(exc: aiohttp.ClientResponseError) -> SinkRefused | None:
    """A refusal, when aiohttp could not parse InfluxDB's answer because of a header:
    InfluxDB echoes a line it cannot parse in ``X-Influxdb-Error``, control characters
    included. Whether the other lines were stored is unknown."""
    message = str(exc.message)
    if "header" not in message.lower():
        return None
    return SinkRefused(f"InfluxDB's answer has a header aiohttp refuses: {_printable(message)}")


class _FailureTracking:
    """What both InfluxDB sinks share: ``write`` remembers why the last write failed,
    until one succeeds, and ``problems`` says so (for ``/readyz``)."""

    failing: str | None = None  # why the last write failed, until one succeeds

    async def _write_body(self, body: bytes) -> None:
        raise NotImplementedError

    async def write(self, body: bytes) -> None:
        try:
            await self._write_body(body)
        except SinkRefused:
            self.failing = None  # InfluxDB answers: it is these lines that are wrong
            raise
        except SinkUnavailable as exc:
            self.failing = str(exc)
            raise
        self.failing = None

    def problems(self) -> list[str]:
        return [f"InfluxDB writes failing: {self.failing}"] if self.failing else []


class InfluxV1Sink(_FailureTracking):
    """``POST /write?db=…&precision=ns`` (InfluxDB ≤ 1.7, Debian's 1.6.7 included).

    The database is created when missing, as Telegraf does (a user who may only write
    to it writes to it as it is). A token ``user:password`` (InfluxDB 1.x with
    ``auth-enabled``, which takes no other form) is sent as basic auth; any other token
    (2.x's v1 API) as ``Authorization: Token …``. It never leaves the collector
    otherwise.
    """

    def __init__(
        self, url: str, database: str, token: str | None = None, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        headers: dict[str, str] = {}
        if token and ":" in token:  # 1.x: it reads user:password only as basic auth
            user, _, password = token.partition(":")
            headers["Authorization"] = aiohttp.BasicAuth(user, password).encode()
        elif token:
            headers["Authorization"] = f"Token {token}"
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._created = False
        self.failing: str | None = None  # why the last write failed, until one succeeds

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            await self._create_database()
        except SinkUnavailable as exc:
            log.warning("InfluxDB at %s: %s; will retry on first write", redact(self.url), exc)

    async def _create_database(self) -> None:
        assert self._session is not None
        q = f'CREATE DATABASE "{self.database}"'
        try:
            async with self._session.post(f"{self.url}/query", data={"q": q}) as resp:
                if resp.status == 403:  # a user who may write, not create: write to it
                    log.info(
                        "InfluxDB at %s: this user may not create databases; writing to "
                        "%s as it is",
                        redact(self.url),
                        self.database,
                    )
                elif resp.status != 200:
                    raise SinkUnavailable(f"CREATE DATABASE: HTTP {resp.status}")
        except aiohttp.ClientError as exc:
            raise SinkUnavailable(f"CREATE DATABASE: {exc}") from None
        self._created = True

    async def _write_body(self, body: bytes) -> None:
        assert self._session is not None
        if not body:
            return
        if not self._created:
            await self._create_database()
        t0 = time.perf_counter()
        try:
            async with self._session.post(
                f"{self.url}/write",
                params={"db": self.database, "precision": "ns"},
                data=body,
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except aiohttp.ClientResponseError as exc:
            raise _unreadable(exc) or SinkUnavailable(f"InfluxDB write: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkUnavailable(f"InfluxDB write: {exc or type(exc).__name__}") from None
        metrics.WRITE_SECONDS.observe(time.perf_counter() - t0)
        if status == 404:  # the database was dropped under us: create it on the next write
            self._created = False
        _verdict(status, text)

    async def ready(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{self.url}/ping") as resp:
                return resp.status == 204
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class InfluxV2Sink(_FailureTracking):
    """influxdb-client's async API, ``POST /api/v2/write`` (InfluxDB 1.8+, 2.x, 3.x).

    ``bucket`` is ``database/retention`` on InfluxDB 1.8; ``token`` is ``user:password``
    there, an API token on 2.x and 3.x. The token is sent to InfluxDB only.
    """

    def __init__(
        self,
        url: str,
        bucket: str,
        token: str | None = None,
        org: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket = bucket
        self.token = token
        self.org = org or "-"  # 1.8 ignores org; the client wants one
        self.timeout = timeout
        self._client: Any = None
        self._write: Any = None
        self.failing: str | None = None  # why the last write failed, until one succeeds

    async def start(self) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        self._client = InfluxDBClientAsync(
            url=self.url, token=self.token or "", org=self.org, timeout=int(self.timeout * 1000)
        )
        self._write = self._client.write_api()

    async def _write_body(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException

        if not body:
            return
        t0 = time.perf_counter()
        try:
            await self._write.write(bucket=self.bucket, org=self.org, record=body)
        except ApiException as exc:
            text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            _verdict(int(exc.status or 0), str(text or exc.reason))
        except aiohttp.ClientResponseError as exc:
            raise _unreadable(exc) or SinkUnavailable(f"InfluxDB write: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkUnavailable(f"InfluxDB write: {exc or type(exc).__name__}") from None
        metrics.WRITE_SECONDS.observe(time.perf_counter() - t0)

    async def ready(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:  # ping raises what the transport raised
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


class GroupCommit:
    """Wraps a sink: the points of many requests go out in one write (group commit).

    Each ``write`` returns when its own points are stored, or raises what the store said,
    so "accepted means durable" still holds per request. A write goes out at once while
    fewer than ``max_inflight`` are under way; otherwise the bodies wait and go out
    together as soon as one finishes (or when ``max_lines`` points or ``max_bytes`` are
    pending). So a quiet collector adds no delay, and a busy one sends fewer, larger
    writes. A group never holds more than ``max_lines`` points or ``max_bytes`` (unless one
    body alone is larger): a few large requests are never joined into one write over
    InfluxDB's body limit.
    """

    def __init__(
        self,
        sink: Sink,
        max_lines: int = 20_000,
        max_inflight: int = 2,
        max_bytes: int = MAX_WRITE_BYTES,
    ) -> None:
        self.sink = sink
        self.max_lines = max_lines
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self._pending: list[tuple[bytes, int, asyncio.Future[None]]] = []  # body, points
        self._pending_lines = 0
        self._pending_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.sink.start()

    async def ready(self) -> bool:
        return await self.sink.ready()

    def problems(self) -> list[str]:
        return self.sink.problems()

    async def write(self, body: bytes) -> None:
        if not body:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        n = points(body)
        self._pending.append((body, n, fut))
        self._pending_lines += n
        self._pending_bytes += len(body)
        self._flush()
        await fut

    def _full(self) -> bool:
        return self._pending_lines >= self.max_lines or self._pending_bytes >= self.max_bytes

    def _flush(self) -> None:
        """Start writes of pending groups while a write may start (or too much waits)."""
        while self._pending and (len(self._tasks) < self.max_inflight or self._full()):
            group: list[bytes] = []
            waiters: list[asyncio.Future[None]] = []
            lines = size = 0
            for body, n, fut in self._pending:
                if group and (lines + n > self.max_lines or size + len(body) > self.max_bytes):
                    break
                group.append(body)
                waiters.append(fut)
                lines += n
                size += len(body)
            del self._pending[: len(group)]
            self._pending_lines -= lines
            self._pending_bytes -= size
            joined = group[0] if len(group) == 1 else b"".join(group)
            task = asyncio.get_running_loop().create_task(self._write(joined, waiters))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._flush()

    async def _write(self, body: bytes, waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self.sink.write(body)
        except Exception as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            return
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def close(self) -> None:
        while self._pending:
            self._flush()
            if self._tasks:
                await asyncio.wait(self._tasks)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sink.close()

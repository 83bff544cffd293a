"""Where points go: a small ``Sink`` protocol, and the InfluxDB sinks (v1 and v2 APIs)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import aiohttp

from collector import metrics

log = logging.getLogger("popwatch.collector.sink")


class SinkUnavailable(Exception):
    """The store cannot take points now; the batch is not accepted (503)."""


class SinkRefused(SinkUnavailable):
    """The store refuses these points outright (not a pause): retrying will not help."""


class Sink(Protocol):
    """A store of line protocol. ``write`` takes a body of whole lines, each ending in a
    newline (see ``encode``), so the bytes made once are what InfluxDB and the spool get."""

    async def start(self) -> None: ...

    async def write(self, body: bytes) -> None: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def encode(lines: list[str]) -> bytes:
    """A write body: the lines, each ending in a newline."""
    return ("\n".join(lines) + "\n").encode() if lines else b""


def points(body: bytes) -> int:
    """How many points a write body holds."""
    return body.count(b"\n")


def _verdict(status: int, text: str) -> None:
    """Returns when InfluxDB stored the points; raises what to do otherwise."""
    if status in (200, 204):
        return
    if status in (400, 422) and "partial write" in text:
        # InfluxDB kept the other points; these conflict with the stored schema
        metrics.POINTS_REFUSED.inc()
        log.warning("InfluxDB refused some points: %s", text.strip()[:300])
        return
    what = f"InfluxDB write: HTTP {status}: {text.strip()[:200]}"
    if status in (400, 413, 422):
        raise SinkRefused(what)
    raise SinkUnavailable(what)


class InfluxV1Sink:
    """``POST /write?db=…&precision=ns`` (InfluxDB ≤ 1.7, Debian's 1.6.7 included).

    The database is created when missing, as Telegraf does. The token, if any, is sent
    as ``Authorization: Token …`` and never leaves the collector otherwise.
    """

    def __init__(
        self, url: str, database: str, token: str | None = None, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._created = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            await self._create_database()
        except SinkUnavailable as exc:
            log.warning("InfluxDB at %s: %s; will retry on first write", self.url, exc)

    async def _create_database(self) -> None:
        assert self._session is not None
        q = f'CREATE DATABASE "{self.database}"'
        try:
            async with self._session.post(f"{self.url}/query", data={"q": q}) as resp:
                if resp.status != 200:
                    raise SinkUnavailable(f"CREATE DATABASE: HTTP {resp.status}")
        except aiohttp.ClientError as exc:
            raise SinkUnavailable(f"CREATE DATABASE: {exc}") from None
        self._created = True

    async def write(self, body: bytes) -> None:
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
                text = await resp.text()
                status = resp.status
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


class InfluxV2Sink:
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

    async def start(self) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        self._client = InfluxDBClientAsync(
            url=self.url, token=self.token or "", org=self.org, timeout=int(self.timeout * 1000)
        )
        self._write = self._client.write_api()

    async def write(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException

        if not body:
            return
        t0 = time.perf_counter()
        try:
            await self._write.write(bucket=self.bucket, org=self.org, record=body)
        except ApiException as exc:
            text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            _verdict(int(exc.status or 0), str(text or exc.reason))
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
    together as soon as one finishes (or when ``max_lines`` points are pending). So a
    quiet collector adds no delay, and a busy one sends fewer, larger writes.
    """

    def __init__(self, sink: Sink, max_lines: int = 20_000, max_inflight: int = 2) -> None:
        self.sink = sink
        self.max_lines = max_lines
        self.max_inflight = max_inflight
        self._pending: list[bytes] = []
        self._pending_lines = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.sink.start()

    async def ready(self) -> bool:
        return await self.sink.ready()

    async def write(self, body: bytes) -> None:
        if not body:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(body)
        self._pending_lines += points(body)
        self._waiters.append(fut)
        if len(self._tasks) < self.max_inflight or self._pending_lines >= self.max_lines:
            self._flush()
        await fut

    def _flush(self) -> None:
        bodies, waiters = self._pending, self._waiters
        self._pending, self._waiters, self._pending_lines = [], [], 0
        if not bodies:
            return
        task = asyncio.get_running_loop().create_task(self._write(b"".join(bodies), waiters))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and len(self._tasks) < self.max_inflight:
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
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sink.close()

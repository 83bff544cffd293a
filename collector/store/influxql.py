"""The one InfluxQL client: the v1 ``/query`` API of InfluxDB 1.x, and of 2.x and 3.x
through their v1 compatibility API (a DBRP mapping on 2.x).

The alert engine, the status page and ``alerts check`` all read InfluxDB through it.
Only plain ``SELECT`` statements are sent (no subqueries, no ``INTO``), so the same text
runs on all three. ``epoch=ns``: every time comes back as integer nanoseconds. A query
InfluxDB answers only in part (``partial``: its ``max-row-limit``) is an error, never a
silently short answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from collector.store import metrics
from collector.store.query import Statement, statements


class QueryError(Exception):
    """InfluxDB did not answer a query, or answered with an error."""


class _Series(msgspec.Struct):
    name: str = ""
    tags: dict[str, str] | None = None
    columns: list[str] = []
    values: list[list[Any]] = []


class _Result(msgspec.Struct):
    statement_id: int = 0
    series: list[_Series] = []
    error: str | None = None
    partial: bool = False


class _Response(msgspec.Struct):
    results: list[_Result] = []
    error: str | None = None


_decoder = msgspec.json.Decoder(_Response)


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a result: its measurement, its tags, and its rows."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]

    def rows(self) -> list[dict[str, Any]]:
        """Each row as column -> value, with the series' tags as columns too."""
        return [{**self.tags, **dict(zip(self.columns, v, strict=True))} for v in self.values]


class InfluxQL:
    """Queries one database (``bucket``: ``db`` or ``db/retention``).

    ``token`` is ``user:password`` (sent as basic auth: InfluxDB 1.x, 3.x) or an API
    token (sent as ``Authorization: Token``: 2.x, 3.x). ``client`` names the user in the
    ``popwatch_collector_query_seconds`` metric.
    """

    def __init__(
        self,
        url: str,
        bucket: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        client: str = "alerts",
    ) -> None:
        self.url = url.rstrip("/")
        self.db, _, self.rp = bucket.partition("/")
        self._headers: dict[str, str] = {}
        self._auth: aiohttp.BasicAuth | None = None
        if token and ":" in token:
            user, _, password = token.partition(":")
            self._auth = aiohttp.BasicAuth(user, password)
        elif token:
            self._headers["Authorization"] = f"Token {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._seconds = metrics.QUERY_SECONDS.labels(client)
        self._session: aiohttp.ClientSession | None = None
        #: seconds with at least one query waiting for InfluxDB, since ``take_seconds``
        self.seconds = 0.0
        self._inflight = 0
        self._busy_since = 0.0

    async def __aenter__(self) -> InfluxQL:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def take_seconds(self) -> float:
        """The wall time spent waiting for InfluxDB since the last call (concurrent
        queries counted once)."""
        s, self.seconds = self.seconds, 0.0
        return s

    async def query(self, selects: Statement | Sequence[Statement]) -> list[list[Series]]:
        """Run one statement or several in one request: each statement's series."""
        q = selects.render() if not isinstance(selects, Sequence) else statements(selects)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, auth=self._auth, timeout=self._timeout
            )
        form = {"q": q, "db": self.db, "epoch": "ns"}
        if self.rp:
            form["rp"] = self.rp
        t0 = time.perf_counter()
        if not self._inflight:
            self._busy_since = t0
        self._inflight += 1
        try:
            async with self._session.post(f"{self.url}/query", data=form) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise QueryError(
                f"InfluxDB at {self.url} does not answer: {exc or type(exc).__name__}"
            ) from None
        finally:
            t1 = time.perf_counter()
            self._seconds.observe(t1 - t0)
            self._inflight -= 1
            if not self._inflight:  # wall time with at least one query on its way
                self.seconds += t1 - self._busy_since
        try:
            answer = _decoder.decode(body)
        except msgspec.DecodeError:
            text = body[:200].decode(errors="replace").strip()
            raise QueryError(f"InfluxDB query: HTTP {status}: {text}") from None
        if answer.error:
            raise QueryError(f"InfluxDB query: HTTP {status}: {answer.error}")
        out: list[list[Series]] = []
        for r in answer.results:
            if r.error:
                raise QueryError(f"InfluxDB query: {r.error} (in: {q[:300]})")
            if r.partial:
                raise QueryError(
                    "InfluxDB query: the answer was cut short (raise max-row-limit): " + q[:300]
                )
            out.append([Series(s.name, s.tags or {}, s.columns, s.values) for s in r.series])
        if status != 200:
            raise QueryError(f"InfluxDB query: HTTP {status}")
        return out

    async def one(self, select: Statement) -> list[Series]:
        """The series of one statement."""
        results = await self.query(select)
        return results[0] if results else []


__all__ = ["InfluxQL", "QueryError", "Series"]
